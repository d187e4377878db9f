//! `php.pool`: the process manager's settings, and the php-cgi command line.

#[allow(unused_imports)]
use super::*;

pub(super) fn pool_config(
    name: &str,
    raw: Option<&RawPool>,
    at: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
    command: WorkerCommand,
) -> PoolConfig {
    let empty = RawPool::default();
    let raw = raw.unwrap_or(&empty);
    let manager = match raw.manager.as_deref().unwrap_or(defaults::MANAGER) {
        "static" => Manager::Static,
        "dynamic" => Manager::Dynamic,
        "ondemand" => Manager::Ondemand,
        other => {
            let hint = suggest(other, &["static", "dynamic", "ondemand"])
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            errors.push(at(
                "php.pool.manager",
                format!("`{other}` is not one of static, dynamic, ondemand{hint}"),
            ));
            Manager::Dynamic
        }
    };
    let max_workers = raw.max_workers.unwrap_or_else(defaults::max_workers);
    let min_workers = match manager {
        Manager::Ondemand => 0,
        _ => raw
            .min_workers
            .unwrap_or(defaults::MIN_WORKERS.min(max_workers)),
    };
    let start_workers = raw
        .start_workers
        .unwrap_or(defaults::START_WORKERS.clamp(min_workers, max_workers.max(min_workers)));
    if max_workers == 0 {
        errors.push(at("php.pool.max_workers", "must be at least 1".to_owned()));
    }
    if max_workers > 4096 {
        errors.push(at(
            "php.pool.max_workers",
            "must be at most 4096".to_owned(),
        ));
    }
    if manager == Manager::Ondemand && raw.min_workers.is_some_and(|m| m > 0) {
        errors.push(at(
            "php.pool.min_workers",
            "ondemand starts with no workers; use manager: dynamic for a minimum".to_owned(),
        ));
    }
    if min_workers > max_workers {
        errors.push(at(
            "php.pool.min_workers",
            format!("{min_workers} is more than max_workers ({max_workers})"),
        ));
    }
    if manager == Manager::Dynamic && !(min_workers..=max_workers).contains(&start_workers) {
        errors.push(at(
            "php.pool.start_workers",
            format!("{start_workers} must lie between min_workers ({min_workers}) and max_workers ({max_workers})"),
        ));
    }
    let min_spare = raw.min_spare.unwrap_or(0);
    if let Some(max_spare) = raw.max_spare
        && max_spare < min_spare
    {
        errors.push(at(
            "php.pool.max_spare",
            format!("{max_spare} is less than min_spare ({min_spare})"),
        ));
    }
    let max_spawn_rate = raw.max_spawn_rate.unwrap_or(defaults::MAX_SPAWN_RATE);
    if max_spawn_rate == 0 {
        errors.push(at(
            "php.pool.max_spawn_rate",
            "must be at least 1".to_owned(),
        ));
    }
    let request_timeout = dur(raw.request_timeout, defaults::REQUEST_TIMEOUT);
    if request_timeout.is_zero() {
        errors.push(at(
            "php.pool.request_timeout",
            "must be more than 0".to_owned(),
        ));
    }
    let mut config = PoolConfig::with_command(name, command);
    config.manager = manager;
    config.min_workers = min_workers;
    config.max_workers = max_workers.max(1);
    config.start_workers = start_workers;
    config.min_spare = min_spare;
    config.max_spare = raw.max_spare;
    config.max_spawn_rate = max_spawn_rate.max(1);
    config.max_requests = raw.max_requests.unwrap_or(0);
    config.idle_timeout = dur(raw.idle_timeout, defaults::IDLE_TIMEOUT_POOL);
    config.request_timeout = request_timeout.max(Duration::from_millis(1));
    config.max_queue = raw.max_queue.unwrap_or(defaults::MAX_QUEUE);
    config.queue_timeout = dur(raw.queue_timeout, defaults::QUEUE_TIMEOUT);
    config.spawn_timeout = dur(raw.spawn_timeout, defaults::SPAWN_TIMEOUT);
    config.kill_grace = dur(raw.kill_grace, defaults::KILL_GRACE);
    config
}

pub(super) fn queue_limit(value: Option<crate::config::raw::RawQueueLimit>) -> Option<QueueLimit> {
    value.map(|limit| limit.0.map_or(QueueLimit::Off, QueueLimit::Max))
}

pub(super) fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let (start, end) = text.split_once('-')?;
    let start: u16 = start.trim().parse().ok()?;
    let end: u16 = end.trim().parse().ok()?;
    (start > 0 && start <= end).then_some((start, end))
}
