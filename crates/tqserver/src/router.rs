//! Which app takes a URL: the longest route that is a prefix of the path on
//! a segment boundary (`/blog` takes `/blog` and `/blog/x`, never `/blogx`);
//! an app at `/` takes the rest. PHP apps and `type: http` apps share one
//! space of routes.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::app::App;
use crate::httpapp::HttpApp;
use crate::metrics::PoolSource;
use crate::status::AppStatus;

#[derive(Default)]
pub struct Router {
    /// Longest route first.
    apps: Vec<Arc<App>>,
    /// `type: http` apps, longest route first.
    http_apps: Vec<Arc<HttpApp>>,
}

/// The app a path goes to.
pub enum Routed<'r, 'p> {
    /// A PHP app, and the part of the path below its route.
    Php(&'r Arc<App>, &'p str),
    Http(&'r Arc<HttpApp>),
}

impl Router {
    pub fn new(apps: Vec<Arc<App>>) -> Self {
        Self::with_http_apps(apps, Vec::new())
    }

    pub fn with_http_apps(mut apps: Vec<Arc<App>>, mut http_apps: Vec<Arc<HttpApp>>) -> Self {
        apps.sort_by_key(|app| std::cmp::Reverse(app.config.route.len()));
        http_apps.sort_by_key(|app| std::cmp::Reverse(app.config.route.len()));
        Self { apps, http_apps }
    }

    /// The app for `path`: the longest matching route of either kind.
    pub fn route<'p>(&self, path: &'p str) -> Option<Routed<'_, 'p>> {
        let php = self
            .apps
            .iter()
            .find_map(|app| strip_route(path, &app.config.route).map(|rest| (app, rest)));
        if self.http_apps.is_empty() {
            return php.map(|(app, rest)| Routed::Php(app, rest));
        }
        let http = self
            .http_apps
            .iter()
            .find(|app| strip_route(path, &app.config.route).is_some());
        match (php, http) {
            (Some((php, _)), Some(http)) if http.config.route.len() > php.config.route.len() => {
                Some(Routed::Http(http))
            }
            (Some((app, rest)), _) => Some(Routed::Php(app, rest)),
            (None, Some(http)) => Some(Routed::Http(http)),
            (None, None) => None,
        }
    }

    pub fn apps(&self) -> &[Arc<App>] {
        &self.apps
    }

    pub fn http_apps(&self) -> &[Arc<HttpApp>] {
        &self.http_apps
    }

    /// The app called `name` (app names are unique).
    pub fn app_named(&self, name: &str) -> Option<&Arc<App>> {
        self.apps.iter().find(|app| app.config.name == name)
    }
}

/// The metrics read the apps routed now at each scrape.
impl PoolSource for Arc<ArcSwap<Router>> {
    fn pools(&self) -> Vec<AppStatus> {
        self.load().apps().iter().map(|app| app.status()).collect()
    }

    fn http_apps(&self) -> Vec<crate::status::HttpAppPage> {
        self.load()
            .http_apps()
            .iter()
            .map(|app| app.status())
            .collect()
    }
}

/// `rest` of `path` below `route` ("" for the root route), on a segment
/// boundary.
pub fn strip_route<'p>(path: &'p str, route: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(route)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::strip_route;

    #[test]
    fn segment_boundaries() {
        assert_eq!(strip_route("/blog", "/blog"), Some(""));
        assert_eq!(strip_route("/blog/x", "/blog"), Some("/x"));
        assert_eq!(strip_route("/blogx", "/blog"), None);
        assert_eq!(strip_route("/anything", ""), Some("/anything"));
        assert_eq!(strip_route("/", ""), Some("/"));
    }
}
