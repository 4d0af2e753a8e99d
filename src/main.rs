use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    parley::cli::run(parley::config::Cli::parse()).await
}
