//! What `main` runs: parse, validate, dispatch to a subcommand, turn failures into a
//! one-line message and an exit code.

use std::process::ExitCode;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::{self, App, MIGRATOR};
use crate::config::{self, Cli, Command};
use crate::{server, telemetry};

/// Exit code for configuration a user must fix.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure at run time (database unreachable, port taken…).
const EXIT_FAILURE: u8 = 1;

pub async fn run(cli: Cli) -> ExitCode {
    telemetry::init();
    let result = match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Migrate(args)) => migrate(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(error)) => {
            eprintln!("parley: invalid configuration: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("parley: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

enum Failure {
    Config(config::ConfigError),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self::Runtime(error)
    }
}

async fn serve(args: config::ServeArgs) -> Result<(), Failure> {
    let config = args.validate().map_err(Failure::Config)?;
    let app = App::build(&config).await?;
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    server::run(listener, app, server::shutdown_signal())
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
