//! The supervisor: builds the credentials provider and the sync engine from a configuration,
//! runs one pass or a pass every interval, and stops at a safe point when cancelled.
//!
//! - this module: file mode (`--config`);
//! - `greengrass`: Greengrass mode (configuration, status and events over IPC).

pub mod greengrass;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::credentials::{IotCredentialsProvider, ProviderSettings};
use crate::sync::{self, chain, Summary, SyncSettings, Syncer};

/// Builds the engine for `config`. Nothing touches the network yet.
///
/// # Errors
/// [`sync::Error`] if the state store cannot be opened.
pub fn engine(config: &Config, clock: SharedClock) -> Result<Syncer, sync::Error> {
    let provider = IotCredentialsProvider::new(ProviderSettings::from(config), clock.clone());
    let syncer = Syncer::new(SyncSettings::from(config), provider, clock)?;
    tracing::info!(
        bucket = %config.bucket,
        prefix = %config.prefix,
        local_dir = %config.local_dir.display(),
        region = %config.region,
        credentials_endpoint = %config.credentials_endpoint,
        role_alias = %config.role_alias,
        s3_endpoint = config.s3_endpoint_url.as_deref().unwrap_or("(AWS)"),
        state = %syncer.state_path().display(),
        "configured"
    );
    Ok(syncer)
}

/// One pass.
///
/// # Errors
/// The error that stopped the pass; [`sync::Error::Cancelled`] if `cancel` fired.
pub async fn once(
    config: &Config,
    clock: SharedClock,
    cancel: &CancellationToken,
    dry_run: bool,
) -> Result<Summary, sync::Error> {
    let mut syncer = engine(config, clock)?;
    let summary = if dry_run {
        syncer.dry_run(cancel).await?
    } else {
        syncer.run_pass(cancel).await?
    };
    log_summary(&summary);
    Ok(summary)
}

/// The wait before the next pass: `syncIntervalSeconds` ± `syncJitterPercent`.
#[must_use]
pub fn next_interval(config: &Config) -> Duration {
    crate::backoff::jittered(
        config.sync_interval,
        config.sync_jitter_percent,
        fastrand::f64(),
    )
}

/// A pass now and then every `syncIntervalSeconds` until `cancel` fires. A failed pass is
/// logged and retried at the next interval; the process keeps running.
///
/// # Errors
/// Only if the engine cannot be built.
pub async fn run(
    config: &Config,
    clock: SharedClock,
    cancel: &CancellationToken,
) -> Result<(), sync::Error> {
    let mut syncer = engine(config, clock)?;
    loop {
        match syncer.run_pass(cancel).await {
            Ok(summary) => log_summary(&summary),
            Err(sync::Error::Cancelled) => break,
            Err(e) => {
                tracing::error!(code = e.code(), error = %chain(&e), "sync pass failed; retrying at the next interval")
            }
        }
        if !sleep_or_cancel(next_interval(config), cancel).await {
            break;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Sleeps; returns false if cancelled first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

fn log_summary(s: &Summary) {
    let level_ok = s.is_success();
    let msg = "sync pass finished";
    if level_ok {
        tracing::info!(
            listed = s.listed,
            downloaded = s.downloaded,
            unchanged = s.unchanged,
            skipped = s.skipped,
            failed = s.failed,
            bytes = s.bytes,
            duration_ms = s.duration_ms,
            "{msg}"
        );
    } else {
        tracing::warn!(
            listed = s.listed,
            downloaded = s.downloaded,
            unchanged = s.unchanged,
            skipped = s.skipped,
            failed = s.failed,
            bytes = s.bytes,
            duration_ms = s.duration_ms,
            "{msg} with failures"
        );
    }
}
