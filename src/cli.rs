//! What `main` runs: parse, validate, dispatch to a subcommand, turn failures into a
//! one-line message and an exit code.
//!
//! The administrative commands live in their own modules: [`events`] (export), [`projections`]
//! (status, rebuild), [`users`] (grant). They need PostgreSQL; bad arguments are refused
//! before anything is connected to or written.

mod events;
mod projections;
mod users;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgPool};
use tokio::net::TcpListener;

use crate::app::{self, App, MIGRATOR};
use crate::config::{self, Cli, Command, EventsCommand, ProjectionsCommand, UsersCommand};
use crate::{server, telemetry};

/// Exit code for configuration a user must fix.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure at run time (database unreachable, port taken…).
const EXIT_FAILURE: u8 = 1;

pub async fn run(cli: Cli) -> ExitCode {
    telemetry::init();
    let result = match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(*args).await,
        Some(Command::Migrate(args)) => migrate(args).await,
        Some(Command::Events(EventsCommand::Export(args))) => events::export(args).await,
        Some(Command::Projections(ProjectionsCommand::Status(args))) => {
            projections::status(args).await
        }
        Some(Command::Projections(ProjectionsCommand::Rebuild(args))) => {
            projections::rebuild(args).await
        }
        Some(Command::Users(UsersCommand::Grant(args))) => users::grant(args).await,
        Some(Command::Users(UsersCommand::Erase(args))) => users::erase(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(error)) => {
            eprintln!("parley: invalid configuration: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Usage(error)) => {
            eprintln!("parley: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("parley: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

enum Failure {
    /// The server's settings are wrong.
    Config(config::ConfigError),
    /// A command's arguments are wrong (same exit code: the user must fix them).
    Usage(config::ConfigError),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self::Runtime(error)
    }
}

async fn serve(args: config::ServeArgs) -> Result<(), Failure> {
    let config = args.validate().map_err(Failure::Config)?;
    // Installed first: a SIGTERM during start-up still means a clean stop.
    let shutdown = server::shutdown_signal();
    let app = App::build(&config).await?;
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let metrics = match config.metrics_bind {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for /metrics"))?,
        ),
        None => None,
    };
    server::run_serving(
        listener,
        metrics,
        app,
        crate::ws::WsConfig::default(),
        config.http,
        shutdown,
    )
    .await
    .context("serving HTTP")?;
    Ok(())
}

async fn migrate(args: config::MigrateArgs) -> Result<(), Failure> {
    let options = config::parse_database_url(&args.database_url).map_err(Failure::Config)?;
    let pool = app::connect(options, 2).await?;
    MIGRATOR
        .run(&pool)
        .await
        .context("applying database migrations")?;
    tracing::info!("migrations applied");
    Ok(())
}

/// A small pool for an administrative command. Statement logging is off: these commands
/// keep stderr for their progress bar and a one-line error.
async fn tool_pool(options: PgConnectOptions) -> Result<PgPool, Failure> {
    Ok(app::connect(options.disable_statement_logging(), 4).await?)
}

/// Whether progress bars are wanted: only for a person watching stderr.
fn interactive() -> bool {
    std::io::stderr().is_terminal()
}
