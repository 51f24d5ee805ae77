//! The supervisor: builds the credentials provider and the sync engine from a configuration,
//! runs one pass or a pass every interval, and stops at a safe point when cancelled.
//!
//! - this module: file mode (`--config`);
//! - `greengrass`: Greengrass mode (configuration, status and events over IPC);
//! - `deferral`: when a component update may proceed (pure);
//! - `trigger`: what a trigger message asks for (pure).

pub mod deferral;
pub mod greengrass;
pub mod trigger;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::credentials::rfc3339;
use crate::credentials::{IotCredentialsProvider, ProviderSettings};
use crate::mqtt::Mqtt;
use crate::status::{self, StatusDocument};
use crate::sync::{self, chain, Summary, SyncSettings, Syncer};

/// Builds the engine for `config`. Nothing touches the network yet.
///
/// # Errors
/// [`sync::Error`] if the state store cannot be opened.
pub fn engine(config: &Config, clock: SharedClock) -> Result<Syncer, sync::Error> {
    build_engine(config, clock, false)
}

fn build_engine(config: &Config, clock: SharedClock, dry_run: bool) -> Result<Syncer, sync::Error> {
    let provider = IotCredentialsProvider::new(ProviderSettings::from(config), clock.clone());
    let settings = SyncSettings::from(config);
    let syncer = if dry_run {
        Syncer::for_dry_run(settings, provider, clock)?
    } else {
        Syncer::new(settings, provider, clock)?
    };
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
    let mut syncer = build_engine(config, clock, dry_run)?;
    let bar = (!dry_run && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .then(|| std::sync::Arc::new(crate::progress::TerminalProgress::new()));
    if let Some(b) = &bar {
        syncer.set_progress(b.clone());
    }
    let summary = if dry_run {
        syncer.dry_run(cancel).await?
    } else {
        syncer.run_pass(cancel).await?
    };
    if let Some(b) = &bar {
        b.finish();
    }
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

/// How long after a failed pass the next one starts: a wrong clock (a board that booted
/// without a real-time clock) is usually fixed by NTP within minutes, so such passes are
/// retried every [`CLOCK_RETRY`] instead of waiting a whole interval.
#[must_use]
pub fn after_failure(config: &Config, error: &sync::Error) -> Duration {
    let interval = next_interval(config);
    if error.code() == "ClockWrong" {
        interval.min(CLOCK_RETRY)
    } else {
        interval
    }
}

/// The retry period while the clock is wrong.
pub const CLOCK_RETRY: Duration = Duration::from_secs(30);

/// File-mode failures at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sync engine cannot be built.
    #[error("sync engine")]
    Sync(#[from] sync::Error),
    /// MQTT cannot be set up.
    #[error("MQTT status")]
    Mqtt(#[from] crate::mqtt::Error),
}

/// A pass now and then every `syncIntervalSeconds` (± jitter) until `cancel` fires. A failed
/// pass is logged and retried at the next interval; the process keeps running. With `mqtt`
/// configured, status documents are published after every pass and error, and a message on
/// `triggerTopic` starts a pass at once.
///
/// # Errors
/// Only if the engine or the MQTT connection cannot be set up.
pub async fn run(
    config: &Config,
    clock: SharedClock,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let mut syncer = engine(config, clock.clone())?;
    let context = |syncer: &Syncer| {
        let provider = syncer.credentials().clone();
        let config = config.clone();
        async move {
            let chosen = provider.source_in_use();
            status::Context::new(
                Some(&config),
                None,
                provider.expiration().await.map(rfc3339),
            )
            .with_clock_skew(provider.clock_skew_seconds())
            .with_source(
                chosen.map(crate::credentials::Chosen::as_str),
                chosen.and_then(|c| c.role_alias(&config.role_alias, None)),
            )
        }
    };
    let offline = |cx: &status::Context, last: Option<Summary>| {
        StatusDocument::offline(cx, rfc3339(clock.now()), last).encode()
    };
    let (mqtt, mut triggers) = match &config.mqtt {
        Some(m) => {
            let cx = context(&syncer).await;
            let (mqtt, rx) = Mqtt::start(
                m,
                &ProviderSettings::from(config),
                config.status_topic.clone(),
                config.trigger_topic.clone(),
                offline(&cx, None),
            )?;
            (Some(mqtt), Some(rx))
        }
        None => (None, None),
    };
    let mut last_pass = None;
    let release_live = |cx: &status::Context, report: &sync::ReleaseReport, cause| {
        let doc = status::ReleaseLive::new(cx, rfc3339(clock.now()), report, cause)?;
        Some((config.release_topic.clone()?, doc.encode()))
    };
    loop {
        let mut wait = next_interval(config);
        let doc = match syncer.run_pass(cancel).await {
            Ok(summary) => {
                log_summary(&summary);
                last_pass = Some(summary.clone());
                let cx = context(&syncer).await;
                if let (Some(m), Some(r)) = (&mqtt, summary.release.as_ref().filter(|r| r.switched))
                {
                    if let Some((topic, doc)) = release_live(&cx, r, status::ReleaseCause::Sync) {
                        m.publish_to(&topic, doc);
                    }
                }
                StatusDocument::after_pass(&cx, rfc3339(clock.now()), summary)
            }
            Err(sync::Error::Cancelled) => break,
            Err(e) => {
                let message = chain(&e);
                wait = after_failure(config, &e);
                tracing::error!(code = e.code(), error = %message, retry_in_s = wait.as_secs(), "sync pass failed");
                StatusDocument::error(
                    &context(&syncer).await,
                    rfc3339(clock.now()),
                    e.code(),
                    message,
                    last_pass.clone(),
                )
            }
        };
        if let Some(m) = &mqtt {
            m.publish(doc.encode());
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
            Some(payload) = async { match triggers.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                match trigger::parse(&payload) {
                    Ok(trigger::Request::Sync) => {}
                    Ok(trigger::Request::Rollback(to)) => {
                        match rollback_now(&syncer, to.as_deref(), rfc3339(clock.now())) {
                            Ok(report) => {
                                let cx = context(&syncer).await;
                                if let (Some(m), Some((topic, doc))) = (&mqtt, release_live(&cx, &report, status::ReleaseCause::Rollback)) {
                                    m.publish_to(&topic, doc);
                                }
                            }
                            Err(e) => tracing::error!(code = e.code(), error = %chain(&e), "rollback requested on the trigger topic failed"),
                        }
                    }
                    Err(problem) => tracing::warn!("{problem}"),
                }
            }
        }
    }
    if let Some(m) = mqtt {
        let cx = context(&syncer).await;
        m.stop(offline(&cx, last_pass)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// A rollback asked for on the trigger topic (between passes: the lock is free): switches,
/// then reports the releases for the "release live" document.
pub(crate) fn rollback_now(
    syncer: &Syncer,
    to: Option<&str>,
    now: String,
) -> Result<sync::ReleaseReport, sync::Error> {
    let r = sync::rollback(syncer.settings(), to, &now)?;
    tracing::info!(from = %r.from, to = %r.to, "rolled back on request");
    sync::release_report(syncer.settings())
}

pub(crate) fn log_summary(s: &Summary) {
    macro_rules! event {
        ($level:ident, $msg:literal) => {
            tracing::$level!(
                listed = s.listed,
                downloaded = s.downloaded,
                unchanged = s.unchanged,
                skipped = s.skipped,
                failed = s.failed,
                bytes = s.bytes,
                duration_ms = s.duration_ms,
                $msg
            )
        };
    }
    if s.is_success() {
        event!(info, "sync pass finished");
    } else {
        event!(warn, "sync pass finished with failures");
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;
    use std::path::Path;

    fn config(interval: &str) -> Config {
        let v = serde_json::json!({
            "roleAlias": "a", "bucket": "bucket", "localDir": "/l", "region": "us-east-1",
            "credentialsEndpoint": "c.example.com", "certificateFilePath": "/c",
            "privateKeyPath": "/k", "rootCaPath": "/r", "syncIntervalSeconds": interval,
            "syncJitterPercent": "0",
        });
        Config::from_value(&v, Path::new("/"), Path::new("/w"))
            .unwrap()
            .config
    }

    #[test]
    fn a_wrong_clock_is_retried_within_seconds_other_failures_wait_the_interval() {
        let clock = sync::Error::Credentials {
            code: "ClockWrong",
            message: "x".into(),
        };
        let other = sync::Error::Credentials {
            code: "RoleAliasAccessDenied",
            message: "x".into(),
        };
        assert_eq!(after_failure(&config("3600"), &clock), CLOCK_RETRY);
        assert_eq!(
            after_failure(&config("3600"), &other),
            Duration::from_secs(3600)
        );
        assert_eq!(
            after_failure(&config("10"), &clock),
            Duration::from_secs(10)
        );
    }
}
