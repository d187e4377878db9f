//! How the running server shows itself to the admin endpoint: the
//! [`ServerView`] of [`ServerState`]. It belongs with the server state; it is
//! a module of its own so that `admin` needs nothing of `server` (which
//! starts the endpoint), and the endpoint can be tested with a view made by
//! hand.

use crate::admin::{ServerFacts, ServerView};
use crate::server::{Phase, ServerState};
use crate::status::{AppStatus, ReloadPage};

impl ServerView for ServerState {
    fn metrics(&self, openmetrics: bool) -> String {
        self.telemetry.metrics.encode(openmetrics)
    }

    fn not_ready_reason(&self) -> Option<String> {
        ServerState::not_ready_reason(self)
    }

    fn server(&self) -> ServerFacts {
        let reload = self.last_reload();
        ServerFacts {
            phase: match self.phase() {
                Phase::Starting => "starting",
                Phase::Running => "running",
                Phase::Draining => "draining",
                Phase::Stopping => "stopping",
            },
            uptime: self.uptime(),
            config: self.config_path().to_owned(),
            last_reload: ReloadPage {
                seq: reload.seq,
                begun: reload.begun,
                ok: reload.ok,
                at: reload.at_unix,
                errors: reload.errors,
            },
        }
    }

    fn apps(&self) -> Vec<AppStatus> {
        self.router
            .load()
            .apps()
            .iter()
            .map(|app| app.status())
            .collect()
    }

    fn http_apps(&self) -> Vec<crate::status::HttpAppPage> {
        self.router
            .load()
            .http_apps()
            .iter()
            .map(|app| app.status())
            .collect()
    }

    fn app(&self, name: &str) -> Option<AppStatus> {
        self.router.load().app_named(name).map(|app| app.status())
    }
}
