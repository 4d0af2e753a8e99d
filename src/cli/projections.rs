//! `parley projections status | rebuild [NAME]`.

use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use parley_projections::postgres::{PgReadModels, RebuildPhase, RebuildProgress};
use parley_projections::ReadModels;

use super::{interactive, tool_pool, Failure};
use crate::config::{DatabaseArgs, RebuildArgs};

pub(super) async fn status(args: DatabaseArgs) -> Result<(), Failure> {
    let options = args.require("projections status").map_err(Failure::Usage)?;
    let models = ReadModels::postgres(PgReadModels::new(tool_pool(options).await?));
    let status = models
        .status()
        .await
        .context("reading projection checkpoints")?;
    println!(
        "{:<12} {:>12} {:>12} {:>10}",
        "projection", "checkpoint", "lag events", "lag ms"
    );
    for projection in status {
        println!(
            "{:<12} {:>12} {:>12} {:>10}",
            projection.name, projection.checkpoint.0, projection.lag_events, projection.lag_ms
        );
    }
    Ok(())
}

pub(super) async fn rebuild(args: RebuildArgs) -> Result<(), Failure> {
    let (options, names) = args.validate().map_err(Failure::Usage)?;
    let models = ReadModels::postgres(PgReadModels::new(tool_pool(options).await?));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let bar = progress_bar();
    let shown = bar.clone();
    let report = models
        .rebuild(&names, &move |progress: RebuildProgress| {
            show(&shown, progress)
        })
        .await;
    bar.finish_and_clear();
    let report = report.context("rebuilding projections")?;
    let swapped: Vec<String> = report
        .projections
        .iter()
        .map(|(name, checkpoint)| format!("{name} (at position {checkpoint})"))
        .collect();
    println!(
        "rebuilt {}: {} events replayed in {:.1} s",
        swapped.join(", "),
        report.events,
        report.elapsed.as_secs_f64()
    );
    Ok(())
}

fn progress_bar() -> ProgressBar {
    if !interactive() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg} [{elapsed_precise}] [{wide_bar}] {pos}/{len} events · {per_sec} · ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn show(bar: &ProgressBar, progress: RebuildProgress) {
    let phase = match progress.phase {
        RebuildPhase::Replaying => "replaying into shadow tables",
        RebuildPhase::Swapping => "swapping in",
        RebuildPhase::Done => "done",
    };
    bar.set_message(phase);
    bar.set_length(progress.target.0.max(0) as u64);
    bar.set_position(progress.position.0.max(0) as u64);
}
