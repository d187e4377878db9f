//! The `tqserver` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tqserver::config;

/// mimalloc, not glibc's malloc: per-thread free lists without arena locks
/// for the many small, short-lived allocations of each request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tqserver",
    version,
    about = "Runs PHP applications: an HTTP server and a php-cgi process manager in one binary",
    long_about = "Runs PHP applications: an HTTP server, a process manager for pools of php-cgi \
workers, and a FastCGI listener that can stand in for php-fpm.\n\n\
Apps live in workers/<name>/ with their settings in workers/<name>/config/worker.yaml; \
the server's own settings are in config/server.yaml."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Path of server.yaml.
    #[arg(long, short, global = true, default_value = "config/server.yaml")]
    config: PathBuf,
    /// Development mode, whatever server.yaml's `server.mode` says: code
    /// changes are served at once and open pages reload themselves.
    #[arg(long, global = true)]
    dev: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default): start every enabled app's pool and the HTTP front.
    Run,
    /// Validate server.yaml and every worker.yaml, print what is wrong, and exit
    /// non-zero if anything is.
    Check,
    /// Print the pools and workers of the running server (from its admin
    /// endpoint).
    Status,
    /// Ask the running server (found through its pid file) to reload its
    /// configuration, and report whether the new one was applied.
    Reload,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.dev {
        config::force_development();
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => check(&cli.config),
        Command::Run => run(&cli.config),
        Command::Status => print_result(tqserver::control::status(&cli.config)),
        Command::Reload => print_result(tqserver::control::reload(&cli.config)),
    }
}

fn print_result(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("tqserver: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(config) => {
            println!("{}: configuration is valid", path.display());
            for app in &config.apps {
                println!(
                    "  app {:<16} {:<12} php {} ({}), {} {}..{} workers",
                    app.name,
                    config::validate::display_route(&app.route),
                    app.php.version,
                    app.php.binary.display(),
                    app.pool.manager.as_str(),
                    app.pool.floor(),
                    app.pool.max_workers,
                );
            }
            for app in &config.http_apps {
                println!(
                    "  app {:<16} {:<12} http: {}, {} instance{}",
                    app.name,
                    config::validate::display_route(&app.route),
                    app.command.join(" "),
                    app.instances,
                    if app.instances == 1 { "" } else { "s" },
                );
            }
            // Warnings, not errors: the configuration works as written.
            for app in &config.apps {
                if let Some(warning) = tqserver::docroot::symlinks::check_warning(app) {
                    eprintln!("{warning}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error{}",
                path.display(),
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            ExitCode::from(2)
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "tqserver: not starting; fix the configuration (`tqserver check` lists the errors)"
            );
            return ExitCode::from(2);
        }
    };
    let log_file = match tqserver::logging::init(&config.logging) {
        Ok(file) => file,
        Err(err) => {
            eprintln!("tqserver: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.server.threads > 0 {
        runtime.worker_threads(config.server.threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tqserver: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tqserver::server::run(config, log_file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("tqserver: {err:#}");
            ExitCode::FAILURE
        }
    }
}
