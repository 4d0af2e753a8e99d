//! `parley events export`: the positioned log to stdout or to a file, published atomically.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use parley_projections::export::{self, ExportError, ExportProgress, ExportSummary};
use parley_projections::postgres::PgEventLog;

use super::{interactive, tool_pool, Failure};
use crate::config::{ExportArgs, ExportConfig};

pub(super) async fn export(args: ExportArgs) -> Result<(), Failure> {
    let config = args.validate().map_err(Failure::Usage)?;
    let pool = tool_pool(config.database.clone()).await?;
    let log = PgEventLog::new(pool);
    let bar = progress_bar();
    let result = match &config.output {
        None => to_stdout(&log, &config, &bar).await,
        Some(path) => to_file(&log, &config, path, &bar).await,
    };
    bar.finish_and_clear();
    let summary = result?;
    if interactive() {
        let target = config
            .output
            .as_ref()
            .map_or_else(|| "stdout".to_owned(), |p| p.display().to_string());
        eprintln!(
            "exported {} events (positions {}..={}, {:.1} MB) to {target}",
            summary.events,
            summary.first,
            summary.last,
            summary.bytes as f64 / 1e6
        );
    }
    Ok(())
}

async fn to_stdout(
    log: &PgEventLog,
    config: &ExportConfig,
    bar: &ProgressBar,
) -> Result<ExportSummary, Failure> {
    let run = export::export(
        log,
        &config.filter,
        config.format,
        io::stdout(),
        report(bar.clone()),
    );
    match interruptible(run).await? {
        Ok((_, summary)) => Ok(summary),
        // The reader went away (`| head`): it has what it wanted.
        Err(ExportError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExportSummary {
            events: 0,
            bytes: 0,
            first: Default::default(),
            last: Default::default(),
        }),
        Err(error) => Err(anyhow::Error::new(error).into()),
    }
}

async fn to_file(
    log: &PgEventLog,
    config: &ExportConfig,
    path: &Path,
    bar: &ProgressBar,
) -> Result<ExportSummary, Failure> {
    let partial = PartialFile::create(path)?;
    let file = partial.open()?;
    let run = export::export(
        log,
        &config.filter,
        config.format,
        file,
        report(bar.clone()),
    );
    let (file, summary) = interruptible(run)
        .await?
        .with_context(|| format!("exporting to {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    partial.publish()?;
    Ok(summary)
}

/// Runs `work` unless Ctrl-C or SIGTERM comes first; then the export is abandoned (and a
/// partial file removed by its guard).
async fn interruptible<T>(work: impl std::future::Future<Output = T>) -> Result<T, Failure> {
    tokio::select! {
        result = work => Ok(result),
        () = interrupted() => {
            Err(anyhow::anyhow!("interrupted; nothing was written to the output file").into())
        }
    }
}

/// Completes on SIGINT or SIGTERM; never, if neither can be listened for.
async fn interrupted() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

fn progress_bar() -> ProgressBar {
    if !interactive() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} exporting [{elapsed_precise}] [{wide_bar}] position {pos}/{len} · {msg} · ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn report(bar: ProgressBar) -> impl FnMut(ExportProgress) + Send + 'static {
    move |progress: ExportProgress| {
        let span = (progress.last.0 - progress.first.0 + 1).max(0) as u64;
        bar.set_length(span);
        bar.set_position((progress.position.0 - progress.first.0 + 1).clamp(0, span as i64) as u64);
        bar.set_message(format!("{} events", progress.events));
    }
}

/// The output file while it is being written: a hidden temporary file next to it, renamed
/// over it only once complete, and removed if the export does not complete. A reader of the
/// output path sees the previous file or the whole new one, never part of one.
struct PartialFile {
    temporary: PathBuf,
    target: PathBuf,
    published: bool,
}

impl PartialFile {
    fn create(target: &Path) -> Result<Self, Failure> {
        let name = target
            .file_name()
            .with_context(|| format!("{} does not name a file", target.display()))?
            .to_string_lossy();
        let temporary = target.with_file_name(format!(".{name}.{}.partial", std::process::id()));
        Ok(Self {
            temporary,
            target: target.to_owned(),
            published: false,
        })
    }

    fn open(&self) -> Result<File, Failure> {
        Ok(OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.temporary)
            .with_context(|| format!("cannot create {}", self.temporary.display()))?)
    }

    fn publish(mut self) -> Result<(), Failure> {
        std::fs::rename(&self.temporary, &self.target).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.temporary.display(),
                self.target.display()
            )
        })?;
        self.published = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}
