//! Which app takes a URL: the longest route that is a prefix of the path on
//! a segment boundary (`/blog` takes `/blog` and `/blog/x`, never `/blogx`);
//! an app at `/` takes the rest.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::app::App;
use crate::metrics::PoolSource;
use crate::status::AppStatus;

#[derive(Default)]
pub struct Router {
    /// Longest route first.
    apps: Vec<Arc<App>>,
}

impl Router {
    pub fn new(mut apps: Vec<Arc<App>>) -> Self {
        apps.sort_by_key(|app| std::cmp::Reverse(app.config.route.len()));
        Self { apps }
    }

    /// The app for `path` and the part of the path below its route.
    pub fn route<'p>(&self, path: &'p str) -> Option<(&Arc<App>, &'p str)> {
        self.apps
            .iter()
            .find_map(|app| strip_route(path, &app.config.route).map(|rest| (app, rest)))
    }

    pub fn apps(&self) -> &[Arc<App>] {
        &self.apps
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
