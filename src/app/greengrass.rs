//! Greengrass mode: started by the nucleus (`SVCUID`, socket path in the environment), with
//! everything else over IPC.
//!
//! One loop owns the state and reacts to: configuration updates (re-read, validate, apply
//! without restart, or keep the last good configuration and report why), trigger messages
//! (a pass now), component-update events (defer while a pass runs, then acknowledge), the
//! interval timer, the end of a pass (publish status), SIGTERM (stop cleanly, exit 0) and the
//! loss of the IPC connection (exit non-zero so the nucleus restarts the component with a
//! fresh token).
//!
//! Lifecycle state: RUNNING once configured. ERRORED only when a restart could fix it: a
//! subscription the nucleus ended or a sync task that died; configuration and AWS-side problems
//! are not fixed by restarting, so they are reported in the status document and retried.

use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::{self, Config};
use crate::credentials::{rfc3339, IotCredentialsProvider, ProviderSettings};
use crate::discovery::{self, Facts};
use crate::ipc::model::{
    ComponentUpdatePolicyEvents, ConfigurationUpdateEvents, LifecycleState,
    SubscriptionResponseMessage,
};
use crate::ipc::{self, IpcClient, Subscription};
use crate::status::{Context, ReleaseCause, ReleaseLive, StatusDocument};
use crate::sync::{self, chain, Summary, SyncSettings, Syncer};

use super::deferral::{Answer, Deferral};
use super::trigger;

/// How long to gather further configuration events before re-reading (a deployment's merge
/// arrives as one event per changed key).
const CONFIG_DEBOUNCE: Duration = Duration::from_millis(300);
/// Deferral message shown in the deployment's status.
const DEFER_MESSAGE: &str =
    "gg-s3-sync: a sync pass is in progress; the update proceeds when it finishes";
/// The nucleus's own configuration: the classic name first, then released lite's.
const NUCLEUS_NAMES: [&str; 2] = ["aws.greengrass.Nucleus", "aws.greengrass.NucleusLite"];
/// Where nucleus lite keeps its configuration (`ggconfigd -c`/`-C` defaults).
pub const LITE_CONFIG_DIR: &str = "/etc/greengrass";

/// Greengrass-mode failures that end the process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// IPC failed (connection lost, refused, …); the nucleus will restart the component.
    #[error("Greengrass IPC")]
    Ipc(#[from] ipc::Error),
    /// The nucleus ended a subscription the component relies on.
    #[error("the nucleus ended the {what} subscription")]
    SubscriptionEnded {
        /// Which.
        what: &'static str,
    },
    /// A sync task died.
    #[error("the sync task failed: {detail}")]
    TaskFailed {
        /// The panic or cancellation.
        detail: String,
    },
}

/// What the nucleus gives a component in its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// `AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT`, exactly as given.
    pub socket: PathBuf,
    /// `SVCUID` (redacted in `Debug`).
    pub token: crate::credentials::Secret,
    /// `{kernel:rootPath}` (passed by the recipe).
    pub kernel_root: Option<PathBuf>,
    /// The working folder (`{work:path}`): default `stateDir`, base of relative paths.
    pub working_dir: PathBuf,
    /// `AWS_IOT_THING_NAME`.
    pub thing_name: Option<String>,
    /// `AWS_REGION`.
    pub region: Option<String>,
    /// `GG_ROOT_CA_PATH`.
    pub root_ca: Option<String>,
    /// Nucleus lite's configuration folder (`config.yaml`, `config.d/`): [`LITE_CONFIG_DIR`],
    /// or `GG_S3_SYNC_LITE_CONFIG_DIR` where ggconfigd was started with other paths.
    pub lite_config_dir: PathBuf,
}

impl Environment {
    /// Reads the nucleus's variables from `get`; `None` when not started by a nucleus.
    pub fn from_vars(
        get: impl Fn(&str) -> Option<String>,
        kernel_root: Option<PathBuf>,
        working_dir: PathBuf,
    ) -> Option<Self> {
        let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
        Some(Self {
            socket: PathBuf::from(non_empty(
                "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT",
            )?),
            token: crate::credentials::Secret::new(non_empty("SVCUID")?),
            kernel_root,
            working_dir,
            thing_name: non_empty("AWS_IOT_THING_NAME"),
            region: non_empty("AWS_REGION").or_else(|| non_empty("AWS_DEFAULT_REGION")),
            root_ca: non_empty("GG_ROOT_CA_PATH"),
            lite_config_dir: non_empty("GG_S3_SYNC_LITE_CONFIG_DIR")
                .map_or_else(|| PathBuf::from(LITE_CONFIG_DIR), PathBuf::from),
        })
    }
}

type PassResult = (Syncer, Result<Summary, sync::Error>);

/// The loop's state.
struct Supervisor {
    ipc: IpcClient,
    env: Environment,
    clock: SharedClock,
    cancel: CancellationToken,
    config: Option<Config>,
    syncer: Option<Syncer>,
    pass: Option<JoinHandle<PassResult>>,
    pass_cancel: CancellationToken,
    last_pass: Option<Summary>,
    trigger: Option<(String, Subscription<SubscriptionResponseMessage>)>,
    reported_running: bool,
    sources_logged: bool,
    /// The nucleus's `iotRoleAlias` (the role TES credentials carry), from the last reload.
    nucleus_role_alias: Option<String>,
    next_pass: tokio::time::Instant,
    pass_requested: bool,
    reload_requested: bool,
    /// A rollback asked for on the trigger topic (`Some(None)`: to the previous release), run
    /// between passes.
    rollback_requested: Option<Option<String>>,
    /// Component-update handling (classic nucleus); blocks passes during an update.
    deferral: Deferral,
    /// Origin of the monotonic time given to `deferral`.
    started: tokio::time::Instant,
}

/// Runs until SIGTERM (`Ok`) or until IPC fails (`Err`: exit non-zero).
///
/// # Errors
/// [`Error`] when the component should be restarted by the nucleus.
pub async fn run(
    env: Environment,
    clock: SharedClock,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let ipc = IpcClient::connect(&env.socket, env.token.expose()).await?;
    tracing::info!(socket = %env.socket.display(), "connected to the Greengrass nucleus");
    let mut config_events = ipc.subscribe_to_configuration_update(None, &[]).await?;
    let mut updates = match ipc.subscribe_to_component_updates().await {
        Ok(s) => Some(s),
        Err(e) if !e.is_connection_error() => {
            tracing::warn!(error = %chain(&e), "cannot subscribe to component updates; deployments will not wait for a running pass");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let mut s = Supervisor {
        ipc: ipc.clone(),
        env,
        clock,
        pass_cancel: cancel.child_token(),
        cancel,
        config: None,
        syncer: None,
        pass: None,
        last_pass: None,
        trigger: None,
        reported_running: false,
        sources_logged: false,
        nucleus_role_alias: None,
        next_pass: now(),
        pass_requested: true,
        reload_requested: true,
        rollback_requested: None,
        deferral: Deferral::new(Duration::from_secs(config::DEFAULT_MAX_DEFER_SECS)),
        started: now(),
    };
    let result = s.main_loop(&mut config_events, &mut updates).await;
    s.pass_cancel.cancel();
    if let Some(handle) = s.pass.take() {
        let _ = handle.await;
    }
    if let Err(e) = &result {
        if matches!(
            e,
            Error::SubscriptionEnded { .. } | Error::TaskFailed { .. }
        ) {
            let _ = s.ipc.update_state(LifecycleState::Errored).await;
        }
    } else {
        tracing::info!("stopped");
    }
    result
}

/// Reads the nucleus configuration keys and files discovery needs.
async fn gather_facts(ipc: &IpcClient, env: &Environment) -> Result<Facts, Error> {
    let mut system = discovery::SystemConfig::default();
    if let Some(root) = &env.kernel_root {
        let path = root.join("config").join("effectiveConfig.yaml");
        match std::fs::read_to_string(&path) {
            Ok(text) => match discovery::parse_effective_config(&text) {
                Ok(s) => system = s,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot parse the nucleus configuration");
                }
            },
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "no classic nucleus configuration");
            }
        }
    }
    let (lite, problems) = discovery::merge_lite_config(&read_lite_config(&env.lite_config_dir));
    for p in problems {
        tracing::warn!(problem = %p, "cannot parse a nucleus lite configuration file; ggconfigd skips it too");
    }
    // The classic file first: a device has one nucleus, and its own file is the better witness.
    let system = lite.overlaid_with(system);
    Ok(Facts {
        nucleus_cred_endpoint: nucleus_key(ipc, "iotCredEndpoint").await?,
        nucleus_region: nucleus_key(ipc, "awsRegion").await?,
        nucleus_role_alias: nucleus_key(ipc, "iotRoleAlias").await?,
        env_thing_name: env.thing_name.clone(),
        env_region: env.region.clone(),
        env_root_ca: env.root_ca.clone(),
        system,
        kernel_root: env.kernel_root.clone(),
    })
}

/// A key of the nucleus's configuration: `aws.greengrass.Nucleus` (the classic nucleus; lite
/// after v2.6.0 aliases it), else `aws.greengrass.NucleusLite` (released lite knows only that
/// name and answers ResourceNotFoundError for the other). Values loaded from lite's YAML are
/// strings; anything else that is not a non-empty string counts as absent.
async fn nucleus_key(
    ipc: &IpcClient,
    key: &'static str,
) -> Result<Option<discovery::Found>, Error> {
    for component in NUCLEUS_NAMES {
        match ipc.get_configuration(Some(component), &[key]).await {
            Ok(v) => {
                if let Some(value) = v
                    .get(key)
                    .and_then(|x| x.as_str())
                    .filter(|s| !s.trim().is_empty())
                {
                    return Ok(Some(discovery::Found {
                        value: value.trim().to_owned(),
                        source: format!("nucleus {key} ({component})"),
                    }));
                }
            }
            Err(e) if e.is_connection_error() => return Err(e.into()),
            Err(e) => {
                tracing::debug!(component, key, error = %chain(&e), "nucleus configuration key not available");
            }
        }
    }
    Ok(None)
}

/// Lite's configuration files in ggconfigd's load order: `config.yaml`, then each regular file
/// of `config.d` in directory order (ggconfigd reads it with readdir and skips anything that is
/// not `DT_REG`, symlinks included). Unreadable files are left out (logged at debug: on the
/// classic nucleus none of them exist).
fn read_lite_config(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut read = |path: PathBuf| match std::fs::read_to_string(&path) {
        Ok(text) => files.push((path.display().to_string(), text)),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "nucleus lite configuration not readable")
        }
    };
    read(dir.join("config.yaml"));
    if let Ok(entries) = std::fs::read_dir(dir.join("config.d")) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                read(entry.path());
            }
        }
    }
    files
}

/// Connects and reads, resolves and validates the configuration once (for `check`).
///
/// # Errors
/// A message naming what failed.
pub async fn load_config(env: &Environment) -> Result<(Config, Vec<String>), String> {
    let ipc = IpcClient::connect(&env.socket, env.token.expose())
        .await
        .map_err(|e| chain(&e))?;
    let own = ipc
        .get_configuration(None, &[])
        .await
        .map_err(|e| chain(&e))?;
    let facts = gather_facts(&ipc, env).await.map_err(|e| chain(&e))?;
    let resolved = discovery::resolve(&own, &facts);
    let parsed = Config::from_value(&resolved.document, &env.working_dir, &env.working_dir)
        .map_err(|e| {
            let missing: Vec<String> = resolved
                .sources
                .iter()
                .filter(|(_, s)| s.starts_with("not found"))
                .map(|(k, _)| (*k).to_owned())
                .collect();
            if missing.is_empty() {
                chain(&e)
            } else {
                format!("{} (not discoverable: {})", chain(&e), missing.join(", "))
            }
        })?;
    Ok((parsed.config, parsed.warnings))
}

#[allow(clippy::disallowed_methods)] // tokio timers need tokio instants; durations come from config
fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

async fn next_or_pending<T: serde::de::DeserializeOwned>(
    sub: &mut Option<Subscription<T>>,
) -> Option<Result<T, ipc::Error>> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    async fn main_loop(
        &mut self,
        config_events: &mut Subscription<ConfigurationUpdateEvents>,
        updates: &mut Option<Subscription<ComponentUpdatePolicyEvents>>,
    ) -> Result<(), Error> {
        loop {
            if self.reload_requested && self.pass.is_none() {
                self.reload_requested = false;
                self.reload().await?;
            }
            if self.pass.is_none() && self.syncer.is_some() {
                if let Some(to) = self.rollback_requested.take() {
                    self.rollback(to).await;
                }
            }
            let updating = self.deferral.blocks_passes(self.mono());
            if self.pass.is_none()
                && !updating
                && self.syncer.is_some()
                && (self.pass_requested || now() >= self.next_pass)
            {
                self.start_pass();
            }
            let ipc = self.ipc.clone();
            let mut trigger = self.trigger.take();
            let idle = self.pass.is_none() && self.syncer.is_some();
            let gate_opens = self
                .deferral
                .gate_deadline()
                .map_or(self.next_pass, |d| self.started + d);
            tokio::select! {
                // Each branch is cancel-safe: Subscription::next loses no event when dropped,
                // and the pass handle and timers are only polled.
                () = self.cancel.cancelled() => {
                    self.trigger = trigger;
                    return Ok(());
                }
                reason = ipc.closed() => {
                    return Err(ipc::Error::ConnectionLost { reason }.into());
                }
                ev = config_events.next() => match ev {
                    Some(Ok(_)) => {
                        // Gather the rest of the deployment's events, then re-read once.
                        let _ = tokio::time::timeout(CONFIG_DEBOUNCE, async {
                            while let Some(Ok(_)) = config_events.next().await {}
                        }).await;
                        tracing::info!("configuration changed");
                        self.reload_requested = true;
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(Error::SubscriptionEnded { what: "configuration update" }),
                },
                msg = async { match trigger.as_mut() { Some((_, sub)) => sub.next().await, None => std::future::pending().await } } => {
                    match msg {
                        Some(Ok(msg)) => match trigger::parse(&trigger::payload_of(&msg)) {
                            Ok(trigger::Request::Sync) => {
                                tracing::info!("sync requested on the trigger topic");
                                self.pass_requested = true;
                            }
                            Ok(trigger::Request::Rollback(to)) => {
                                tracing::info!(to = ?to, "rollback requested on the trigger topic");
                                self.rollback_requested = Some(to);
                            }
                            Err(problem) => tracing::warn!("{problem}"),
                        },
                        // Lite can deliver an event before the subscription's response; the
                        // client queues it, so nothing is lost and nothing is an error here.
                        Some(Err(e)) if e.is_connection_error() => return Err(e.into()),
                        Some(Err(e)) => tracing::warn!(error = %chain(&e), "trigger topic message"),
                        None => {
                            tracing::warn!("the nucleus ended the trigger subscription; resubscribing");
                            trigger = None;
                            self.reload_requested = true;
                        }
                    }
                }
                ev = next_or_pending(updates) => match ev {
                    Some(Ok(ev)) => self.on_component_update(ev).await?,
                    Some(Err(e)) if e.is_connection_error() => return Err(e.into()),
                    Some(Err(e)) => tracing::warn!(error = %chain(&e), "component update event"),
                    None => return Err(Error::SubscriptionEnded { what: "component updates" }),
                },
                done = async { match self.pass.as_mut() { Some(h) => h.await, None => std::future::pending().await } } => {
                    self.pass = None;
                    self.pass_ended(done).await?;
                    // A deferred update is let through at the nucleus's next check: the
                    // nucleus accepts DeferComponentUpdate only as the answer to one.
                }
                () = tokio::time::sleep_until(self.next_pass), if idle && !updating => {}
                () = tokio::time::sleep_until(gate_opens), if updating => {}
            }
            if self.trigger.is_none() {
                self.trigger = trigger;
            }
        }
    }

    /// Monotonic time since the supervisor started (for the deferral policy).
    fn mono(&self) -> Duration {
        now().saturating_duration_since(self.started)
    }

    /// Takes back the syncer of a finished pass and reports it; a stopped pass is picked up
    /// again by the next one.
    async fn pass_ended(
        &mut self,
        done: Result<PassResult, tokio::task::JoinError>,
    ) -> Result<(), Error> {
        match done {
            Ok((syncer, result)) => {
                self.syncer = Some(syncer);
                if self.pass_cancel.is_cancelled() && !self.cancel.is_cancelled() {
                    // Stopped for a component update: a fresh token for the next pass.
                    self.pass_cancel = self.cancel.child_token();
                    self.pass_requested = true;
                }
                self.finish_pass(result).await;
                if !self.reported_running && self.config.is_some() {
                    self.report_running().await?;
                }
                Ok(())
            }
            Err(e) => Err(Error::TaskFailed {
                detail: e.to_string(),
            }),
        }
    }

    async fn on_component_update(&mut self, ev: ComponentUpdatePolicyEvents) -> Result<(), Error> {
        if let Some(pre) = ev.pre_update_event {
            let id = pre.deployment_id;
            let answer = self
                .deferral
                .on_pre_update(&id, self.mono(), self.pass.is_some());
            let (recheck_ms, message) = match answer {
                Answer::Defer { recheck_after_ms } => {
                    tracing::info!(deployment = %id, recheck_after_ms, "deferring a component update until the running pass finishes");
                    (recheck_after_ms, Some(DEFER_MESSAGE))
                }
                Answer::Proceed { stop_pass } => {
                    if stop_pass {
                        tracing::warn!(deployment = %id, "a pass has held this component update back for maxDeferSeconds; stopping the pass at a safe point so the update can proceed");
                        self.pass_cancel.cancel();
                        if let Some(handle) = self.pass.take() {
                            let done = handle.await;
                            self.pass_ended(done).await?;
                        }
                    } else {
                        tracing::info!(deployment = %id, "no pass running; the component update may proceed");
                    }
                    (0, None)
                }
            };
            match self
                .ipc
                .defer_component_update(&id, message, recheck_ms)
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_connection_error() => return Err(e.into()),
                // The nucleus stopped waiting for this answer (its timeout passed, or the
                // deployment moved on): nothing to undo, and no reason to stop.
                Err(e) => {
                    tracing::warn!(deployment = %id, error = %chain(&e), "the nucleus did not take the answer to its update check");
                }
            }
        }
        if let Some(post) = ev.post_update_event {
            tracing::info!(deployment = %post.deployment_id, "component update finished");
            self.deferral.on_post_update(&post.deployment_id);
        }
        Ok(())
    }

    /// UpdateState(RUNNING). Only a lost connection is fatal: nucleus lite answers
    /// `ServiceError` while its health daemon is not up, so a refusal is retried after the
    /// next pass.
    async fn report_running(&mut self) -> Result<(), Error> {
        match self.ipc.update_state(LifecycleState::Running).await {
            Ok(()) => {
                self.reported_running = true;
                Ok(())
            }
            Err(e) if e.is_connection_error() => Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %chain(&e), "the nucleus refused the RUNNING state; retrying after the next pass");
                Ok(())
            }
        }
    }

    /// Re-reads, validates and applies the configuration; an invalid one is reported and the
    /// last good one kept.
    async fn reload(&mut self) -> Result<(), Error> {
        let own = self.ipc.get_configuration(None, &[]).await?;
        let facts = gather_facts(&self.ipc, &self.env).await?;
        self.nucleus_role_alias = facts.nucleus_role_alias.as_ref().map(|f| f.value.clone());
        let resolved = discovery::resolve(&own, &facts);
        let wd = self.env.working_dir.clone();
        let parsed = match Config::from_value(&resolved.document, &wd, &wd) {
            Ok(p) => p,
            Err(e) => {
                let kept = if self.config.is_some() {
                    "; keeping the last good configuration"
                } else {
                    ""
                };
                let message = format!("{}{kept}", chain(&e));
                tracing::error!(%message, "invalid configuration");
                for (key, source) in resolved
                    .sources
                    .iter()
                    .filter(|(_, s)| s.starts_with("not found"))
                {
                    tracing::error!(key, "{source}");
                }
                self.publish(StatusDocument::error(
                    &self.context().await,
                    self.timestamp(),
                    "ConfigInvalid",
                    message,
                    self.last_pass.clone(),
                ))
                .await;
                return Ok(());
            }
        };
        if !self.sources_logged {
            for (key, source) in &resolved.sources {
                tracing::info!(key, source = %source, "configuration source");
            }
            self.sources_logged = true;
        }
        for w in &parsed.warnings {
            tracing::warn!("{w}");
        }
        if parsed.config.mqtt.is_some() {
            tracing::warn!("mqtt is ignored under Greengrass: status is published through the nucleus (statusTopic, localStatusTopic)");
        }
        let config = parsed.config;
        if self.config.as_ref() == Some(&config) {
            // Nothing changed, but a trigger subscription the nucleus ended is made again.
            return self.resubscribe_trigger(config.trigger_topic).await;
        }
        self.apply(config).await
    }

    async fn apply(&mut self, config: Config) -> Result<(), Error> {
        let provider_settings = ProviderSettings::from(&config);
        // Keep the credentials cache unless what it depends on changed.
        let provider = match &self.syncer {
            Some(s) if *s.credentials().settings() == provider_settings => s.credentials().clone(),
            _ => IotCredentialsProvider::new(provider_settings, self.clock.clone()),
        };
        let syncer = match Syncer::new(SyncSettings::from(&config), provider, self.clock.clone()) {
            Ok(s) => s,
            Err(e) => {
                let message = chain(&e);
                tracing::error!(%message, "cannot use the new configuration");
                self.publish(StatusDocument::error(
                    &self.context().await,
                    self.timestamp(),
                    e.code(),
                    message,
                    self.last_pass.clone(),
                ))
                .await;
                return Ok(());
            }
        };
        let interval_changed = self
            .config
            .as_ref()
            .is_some_and(|c| c.sync_interval != config.sync_interval);
        tracing::info!(
            bucket = %config.bucket, prefix = %config.prefix, local_dir = %config.local_dir.display(),
            region = %config.region, credentials_endpoint = %config.credentials_endpoint, role_alias = %config.role_alias,
            interval_s = config.sync_interval.as_secs(), state = %syncer.state_path().display(),
            "configuration applied"
        );
        self.resubscribe_trigger(config.trigger_topic.clone())
            .await?;
        self.syncer = Some(syncer);
        self.deferral.set_max_defer(config.max_defer);
        self.config = Some(config);
        // A new configuration is synced at once.
        self.pass_requested = true;
        if interval_changed {
            self.next_pass = now();
        }
        if !self.reported_running {
            self.report_running().await?;
        }
        Ok(())
    }

    async fn resubscribe_trigger(&mut self, topic: Option<String>) -> Result<(), Error> {
        if self.trigger.as_ref().map(|(t, _)| t) == topic.as_ref() {
            return Ok(());
        }
        self.trigger = None; // dropping unsubscribes
        if let Some(topic) = topic {
            match self.ipc.subscribe_to_topic(&topic).await {
                Ok(sub) => self.trigger = Some((topic, sub)),
                Err(e) if e.is_connection_error() => return Err(e.into()),
                Err(e) => tracing::warn!(
                    topic = %topic, error = %chain(&e),
                    "cannot subscribe to the trigger topic; grant aws.greengrass#SubscribeToTopic on it in accessControl (aws.greengrass.ipc.pubsub)"
                ),
            }
        }
        Ok(())
    }

    fn start_pass(&mut self) {
        let Some(mut syncer) = self.syncer.take() else {
            return;
        };
        self.pass_requested = false;
        let cancel = self.pass_cancel.clone();
        self.pass = Some(tokio::spawn(async move {
            let result = syncer.run_pass(&cancel).await;
            (syncer, result)
        }));
    }

    async fn finish_pass(&mut self, result: Result<Summary, sync::Error>) {
        let interval = self.config.as_ref().map_or(
            Duration::from_secs(config::DEFAULT_SYNC_INTERVAL_SECS),
            super::next_interval,
        );
        self.next_pass = now() + interval;
        let doc = match result {
            Ok(summary) => {
                super::log_summary(&summary);
                self.last_pass = Some(summary.clone());
                if let Some(r) = summary.release.as_ref().filter(|r| r.switched) {
                    self.publish_release(r, ReleaseCause::Sync).await;
                }
                StatusDocument::after_pass(&self.context().await, self.timestamp(), summary)
            }
            Err(sync::Error::Cancelled) => return,
            Err(e) => {
                let message = chain(&e);
                if let Some(c) = &self.config {
                    self.next_pass = now() + super::after_failure(c, &e);
                }
                tracing::error!(code = e.code(), error = %message, "sync pass failed; retrying at the next interval");
                StatusDocument::error(
                    &self.context().await,
                    self.timestamp(),
                    e.code(),
                    message,
                    self.last_pass.clone(),
                )
            }
        };
        self.publish(doc).await;
    }

    fn timestamp(&self) -> String {
        rfc3339(self.clock.now())
    }

    async fn context(&self) -> Context {
        let (expiration, skew, chosen) = match &self.syncer {
            Some(s) => (
                s.credentials().expiration().await.map(rfc3339),
                s.credentials().clock_skew_seconds(),
                s.credentials().source_in_use(),
            ),
            None => (None, None, None),
        };
        let role_alias = chosen.zip(self.config.as_ref()).and_then(|(c, config)| {
            c.role_alias(&config.role_alias, self.nucleus_role_alias.as_deref())
        });
        let source = chosen.map(crate::credentials::Chosen::as_str);
        Context::new(
            self.config.as_ref(),
            self.env.thing_name.clone(),
            expiration,
        )
        .with_clock_skew(skew)
        .with_source(source, role_alias)
    }

    /// Carries out a rollback asked for on the trigger topic, then publishes "release live"
    /// and a status document whose last pass shows the releases now.
    async fn rollback(&mut self, to: Option<String>) {
        let Some(syncer) = &self.syncer else { return };
        match super::rollback_now(syncer, to.as_deref(), self.timestamp()) {
            Ok(report) => {
                self.publish_release(&report, ReleaseCause::Rollback).await;
                if let Some(mut last) = self.last_pass.take() {
                    last.release = Some(sync::ReleaseReport {
                        switched: false,
                        ..report
                    });
                    self.last_pass = Some(last.clone());
                    let doc =
                        StatusDocument::after_pass(&self.context().await, self.timestamp(), last);
                    self.publish(doc).await;
                }
            }
            Err(e) => {
                let message = chain(&e);
                tracing::error!(code = e.code(), error = %message, "rollback requested on the trigger topic failed");
                let doc = StatusDocument::error(
                    &self.context().await,
                    self.timestamp(),
                    e.code(),
                    format!("rollback failed: {message}"),
                    self.last_pass.clone(),
                );
                self.publish(doc).await;
            }
        }
    }

    /// Publishes "release live" on `releaseTopic` (local pub/sub, as a binary message: the
    /// form nucleus lite delivers).
    async fn publish_release(&self, report: &sync::ReleaseReport, cause: ReleaseCause) {
        let Some(topic) = self.config.as_ref().and_then(|c| c.release_topic.clone()) else {
            return;
        };
        let Some(doc) = ReleaseLive::new(&self.context().await, self.timestamp(), report, cause)
        else {
            return;
        };
        if let Err(e) = self
            .ipc
            .publish_binary_to_topic(&topic, &doc.encode())
            .await
        {
            tracing::warn!(topic = %topic, error = %chain(&e), "cannot publish \"release live\"; grant aws.greengrass#PublishToTopic on it in accessControl (aws.greengrass.ipc.pubsub)");
        }
    }

    /// Publishes to IoT Core and locally; failures are logged with the fix, never fatal.
    async fn publish(&self, doc: StatusDocument) {
        let (iot, local) = match &self.config {
            Some(c) => (c.status_topic.clone(), c.local_status_topic.clone()),
            None => (
                Some(config::default_status_topic(self.env.thing_name.as_deref())),
                Some(config::DEFAULT_LOCAL_STATUS_TOPIC.to_owned()),
            ),
        };
        let bytes = doc.encode();
        if let Some(topic) = iot {
            if let Err(e) = self.ipc.publish_to_iot_core(&topic, &bytes).await {
                tracing::warn!(topic = %topic, error = %chain(&e), "cannot publish status to IoT Core; grant aws.greengrass#PublishToIoTCore on it in accessControl (aws.greengrass.ipc.mqttproxy)");
            }
        }
        if let Some(topic) = local {
            if let Err(e) = self.ipc.publish_binary_to_topic(&topic, &bytes).await {
                tracing::warn!(topic = %topic, error = %chain(&e), "cannot publish status locally; grant aws.greengrass#PublishToTopic on it in accessControl (aws.greengrass.ipc.pubsub)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_needs_socket_and_token() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(Environment::from_vars(vars(&[("SVCUID", "T")]), None, "/w".into()).is_none());
        let e = Environment::from_vars(
            vars(&[
                ("SVCUID", "SVCUID-VALUE"),
                (
                    "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT",
                    "../../ipc.socket",
                ),
                ("AWS_DEFAULT_REGION", "eu-west-1"),
            ]),
            None,
            "/w".into(),
        )
        .unwrap();
        assert_eq!(
            e.socket,
            PathBuf::from("../../ipc.socket"),
            "kept exactly as given"
        );
        assert_eq!(e.region.as_deref(), Some("eu-west-1"));
        assert!(
            !format!("{e:?}").contains("SVCUID-VALUE"),
            "the token never shows in Debug output"
        );
    }
}
