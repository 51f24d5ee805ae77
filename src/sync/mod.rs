//! S3 prefix → local folder.
//!
//! A pass lists the prefix page by page and, for each object, asks [`plan`] what to do. Downloads
//! run on up to `maxConcurrency` tasks while listing continues, so memory stays bounded by a
//! page plus the in-flight bodies. Each download is verified (length, and MD5 for single-part
//! ETags) before it is renamed into place, and recorded in the [`state`] store only after that.
//!
//! - `plan`: pure decisions (key → path, download or not, verification, deletions).
//! - `s3`: the S3 client and error mapping; `s3::lean` fetches small listed objects without
//!   the SDK's per-request orchestration (same endpoint rules, signer and connector).
//! - `download`: one object's job, retries and verification; `download::ranged` for large ones.
//! - `local`: folder descriptors, the durable commit, the temp-file sweep.
//! - `group`: group commit of small files (one writer thread, one `syncfs` per batch;
//!   `group::durability` and the trust checks are pure).
//! - `state`: the crash-safe record of what was written.
//! - `summary`: what a pass did, capped for every sink.
//! - `manifest`: fetching and caching `manifestKey`.
//! - `delete`: carrying out `deleteExtraneous`.
//! - `release`: the releases folder (`releases` on); `staged`: a pass that builds a release.

mod delete;
mod download;
pub mod filter;
mod group;
pub mod local;
pub mod manifest;
pub mod plan;
pub mod release;
pub mod s3;
mod staged;
pub mod state;
pub mod summary;

use std::path::PathBuf;
use std::sync::Arc;

use std::collections::HashSet;

use md5::{Digest, Md5};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::{Config, SourceMode};
use crate::credentials::{rfc3339, IotCredentialsProvider};
use download::{download_with_retries, Hooks, Job, Outcome, Root};
use filter::Filter;
use plan::{Action, KeyVerdict, RelPath};
use s3::{S3Settings, Source};
pub use staged::{
    list as list_releases, report as release_report, rollback, KeptRelease, RolledBack,
};
use state::StateStore;
pub use summary::{KeyProblem, PlannedAction, ReleaseInfo, ReleaseReport, Summary};

/// Sync failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No credentials.
    #[error("cannot get AWS credentials: {message}")]
    Credentials {
        /// The credentials error code.
        code: &'static str,
        /// The credentials error, with its fix.
        message: String,
    },
    /// GetObject of a pinned version denied.
    #[error(
        "reading version {version} of s3://{bucket}/{key} was denied (AccessDenied{}); a manifest entry with versionId needs \
         s3:GetObjectVersion (not only s3:GetObject): grant the role behind roleAlias s3:GetObjectVersion on arn:aws:s3:::{bucket}/{key}",
        if message.is_empty() { String::new() } else { format!(": {message}") }
    )]
    GetVersionDenied {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// The version asked for.
        version: String,
        /// S3's message.
        message: String,
    },
    /// ListObjectsV2 denied.
    #[error(
        "listing s3://{bucket}/{prefix} was denied (AccessDenied{}); prefix mode needs s3:ListBucket: \
         grant the role behind roleAlias s3:ListBucket on arn:aws:s3:::{bucket} \
         (optionally with the condition s3:prefix = \"{prefix}*\"), or, to work with s3:GetObject alone, \
         list the objects in keys or manifestKey instead of listing the prefix",
        if message.is_empty() { String::new() } else { format!(": {message}") }
    )]
    ListDenied {
        /// Bucket.
        bucket: String,
        /// Prefix.
        prefix: String,
        /// S3's message.
        message: String,
    },
    /// GetObject denied.
    #[error(
        "reading s3://{bucket}/{key} was denied (AccessDenied{}); grant the role behind roleAlias \
         s3:GetObject on arn:aws:s3:::{bucket}/{key} (e.g. arn:aws:s3:::{bucket}/<prefix>*); without \
         s3:ListBucket, S3 also answers AccessDenied for a key that does not exist",
        if message.is_empty() { String::new() } else { format!(": {message}") }
    )]
    GetDenied {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// S3's message.
        message: String,
    },
    /// The bucket does not exist.
    #[error("bucket '{bucket}' does not exist (NoSuchBucket); check bucket, region ({region}) and s3EndpointUrl")]
    NoSuchBucket {
        /// Bucket.
        bucket: String,
        /// Configured region.
        region: String,
    },
    /// The bucket is in another region.
    #[error("bucket '{bucket}' is not in region '{region}' ({message}); set region to the bucket's region")]
    WrongRegion {
        /// Bucket.
        bucket: String,
        /// Configured region.
        region: String,
        /// S3's message.
        message: String,
    },
    /// The device clock is off.
    #[error("S3 rejected the request time (RequestTimeTooSkewed: {message}); the system clock is wrong: enable time synchronisation (NTP)")]
    ClockSkew {
        /// S3's message.
        message: String,
    },
    /// The session credentials expired (refreshed and retried once before this is reported).
    #[error("S3 says the session credentials have expired (ExpiredToken) although they were just refreshed; check the system clock")]
    ExpiredToken,
    /// Another S3 error.
    #[error("{op} {target} failed: {code}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    S3 {
        /// Operation.
        op: &'static str,
        /// Key or prefix.
        target: String,
        /// S3 error code.
        code: String,
        /// S3 message.
        message: String,
    },
    /// The server's listing cannot be trusted (S3 never does this; a proxy or an
    /// S3-compatible server may): acting on it could delete files of objects that exist.
    #[error("listing s3://{bucket}/{prefix} is inconsistent: {detail}; no file is deleted on a partial listing (is s3EndpointUrl an S3-compatible server?)")]
    ListingInvalid {
        /// Bucket.
        bucket: String,
        /// Prefix.
        prefix: String,
        /// What is wrong.
        detail: String,
    },
    /// Another instance is syncing the same folder or state.
    #[error(transparent)]
    InUse(#[from] crate::lock::Error),
    /// Network failure talking to S3.
    #[error("{op} {target} failed: network error: {detail}")]
    Network {
        /// Operation.
        op: &'static str,
        /// Key or prefix.
        target: String,
        /// The innermost cause.
        detail: String,
    },
    /// The object was deleted between listing and download.
    #[error("object {key} was deleted during the pass; it is picked up again next pass")]
    Vanished {
        /// Key.
        key: String,
    },
    /// The object was overwritten between listing and download.
    #[error("object {key} changed during the pass; the new version is downloaded next pass")]
    ChangedDuringSync {
        /// Key.
        key: String,
    },
    /// Fewer or more bytes than listed.
    #[error("object {key}: expected {expected} bytes, received {received}")]
    Truncated {
        /// Key.
        key: String,
        /// Listed size.
        expected: u64,
        /// Bytes received.
        received: u64,
    },
    /// The body does not match the ETag's MD5 or the object's checksum.
    #[error("object {key} is corrupt: got {actual}, expected {expected}")]
    Corrupt {
        /// Key.
        key: String,
        /// From the ETag.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The manifest object cannot be used.
    #[error("manifest s3://{bucket}/{key} is not usable: {detail}; fix manifestKey or the manifest object")]
    Manifest {
        /// Bucket.
        bucket: String,
        /// manifestKey.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// Not enough space for an object.
    #[error(
        "disk full: {key} needs {needed} bytes in {}, {} free; free some space or move localDir \
         (files already synced are kept)",
        dir.display(),
        free.map_or_else(|| "less than that".to_owned(), |f| format!("{f} bytes"))
    )]
    DiskFull {
        /// The object.
        key: String,
        /// Its size plus headroom.
        needed: u64,
        /// The folder.
        dir: PathBuf,
        /// Free bytes, if known.
        free: Option<u64>,
    },
    /// Local file system.
    #[error("local file system")]
    Local(#[from] local::Error),
    /// The releases folder.
    #[error("releases")]
    Release(#[from] release::Error),
    /// State store.
    #[error("sync state")]
    State(#[from] state::Error),
    /// Stopped by a shutdown request.
    #[error("stopped before the pass finished")]
    Cancelled,
}

impl Error {
    /// Whether retrying the same object can succeed.
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Network { .. }
                | Self::Truncated { .. }
                | Self::Corrupt { .. }
                | Self::ExpiredToken
        ) || matches!(self, Self::S3 { code, .. } if matches!(code.as_str(),
            "InternalError" | "SlowDown" | "ServiceUnavailable" | "RequestTimeout" | "Unknown"))
    }

    /// A stable short code for reports.
    #[must_use]
    pub fn code(&self) -> &str {
        match self {
            Self::Credentials { code, .. } => code,
            Self::ListDenied { .. } => "ListBucketDenied",
            Self::GetDenied { .. } => "GetObjectDenied",
            Self::GetVersionDenied { .. } => "GetObjectVersionDenied",
            Self::NoSuchBucket { .. } => "NoSuchBucket",
            Self::WrongRegion { .. } => "WrongRegion",
            Self::ClockSkew { .. } | Self::ExpiredToken => "ClockSkew",
            Self::S3 { code, .. } => code,
            Self::Network { .. } => "NetworkError",
            Self::Vanished { .. } => "ObjectVanished",
            Self::ChangedDuringSync { .. } => "ObjectChanged",
            Self::Truncated { .. } => "Truncated",
            Self::Corrupt { .. } => "ChecksumMismatch",
            Self::ListingInvalid { .. } => "ListingInvalid",
            Self::InUse(_) => "InstanceLocked",
            Self::Manifest { .. } => "ManifestInvalid",
            Self::DiskFull { .. } => "DiskFull",
            Self::Local(_) => "LocalFileError",
            Self::Release(e) => match e {
                release::Error::OtherFileSystem { .. } => "ReleasesDirInvalid",
                release::Error::LocalDirTaken { .. } => "LocalDirTaken",
                release::Error::UnknownRelease { .. } | release::Error::NoPrevious { .. } => {
                    "UnknownRelease"
                }
                release::Error::Unsupported { .. } => "ReleasesUnsupported",
                release::Error::Off => "ReleasesOff",
                release::Error::Io { .. } | release::Error::Local(_) => "LocalFileError",
            },
            Self::State(_) => "StateError",
            Self::Cancelled => "Cancelled",
        }
    }
}

pub use crate::errtext::chain;

/// What the engine needs from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSettings {
    /// S3 side.
    pub s3: S3Settings,
    /// Prefix (empty or ending in `/`).
    pub prefix: String,
    /// Destination.
    pub local_dir: PathBuf,
    /// Simultaneous downloads.
    pub max_concurrency: usize,
    /// Where the state file lives.
    pub state_dir: PathBuf,
    /// Listed prefix, explicit keys, or manifest.
    pub source: SourceMode,
    /// include/exclude.
    pub filter: Filter,
    /// Remove files whose objects are gone.
    pub delete_extraneous: bool,
    /// Deletion guard.
    pub max_delete_percent: u8,
    /// Total download rate in bytes per second (0 = unlimited).
    pub bandwidth_limit: u64,
    /// Ranged-download threshold (0 = off).
    pub ranged_threshold: u64,
    /// `fileMode` / `dirMode`.
    pub modes: local::Modes,
    /// `releases` (`None`: files are replaced one by one in `localDir`).
    pub releases: Option<crate::config::ReleaseSettings>,
}

impl From<&Config> for SyncSettings {
    fn from(c: &Config) -> Self {
        Self {
            s3: S3Settings {
                bucket: c.bucket.clone(),
                region: c.region.clone(),
                endpoint_url: c.s3_endpoint_url.clone(),
                force_path_style: c.s3_force_path_style,
                root_ca_path: Some(c.root_ca_path.clone()),
            },
            prefix: c.prefix.clone(),
            local_dir: c.local_dir.clone(),
            max_concurrency: c.max_concurrency,
            state_dir: c.state_dir.clone(),
            source: c.source.clone(),
            filter: Filter::new(&c.include, &c.exclude),
            // A release holds exactly the objects of its pass.
            delete_extraneous: c.delete_extraneous || c.releases.is_some(),
            max_delete_percent: c.max_delete_percent,
            bandwidth_limit: c.bandwidth_limit,
            modes: local::Modes {
                file: c.file_mode,
                dir: c.dir_mode,
            },
            ranged_threshold: c.ranged_threshold,
            releases: c.releases.clone(),
        }
    }
}

impl SyncSettings {
    /// The state file name: one per (endpoint, bucket, prefix, localDir), so changing any of
    /// them starts a fresh comparison instead of trusting a record about other objects.
    #[must_use]
    pub fn state_file_name(&self) -> String {
        let id = format!(
            "{}\n{}\n{}\n{}",
            self.s3.endpoint_url.as_deref().unwrap_or(""),
            self.s3.bucket,
            self.prefix,
            self.local_dir.display()
        );
        let digest = Md5::digest(id.as_bytes());
        format!("gg-s3-sync-state-{}.jsonl", hex(&digest[..8]))
    }
}

/// Lower-case hex of any bytes.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The engine for one configuration. Keeps the S3 client and the state between passes.
#[derive(Debug)]
pub struct Syncer {
    settings: SyncSettings,
    source: Source,
    credentials: IotCredentialsProvider,
    state: StateStore,
    clock: SharedClock,
    swept: bool,
    /// `localDir`, held open for the pass (every write and removal is relative to it).
    root: Option<local::Folder>,
    /// On a case-insensitive `localDir`: this pass's paths, case-folded, and the key of each.
    case_folded: Option<std::collections::HashMap<String, String>>,
    hooks: Hooks,
    /// With `releases` on: the releases folder, once opened.
    releases: Option<release::Releases>,
    /// Where this pass reads and writes, with `releases` on.
    release_pass: staged::ReleasePass,
    /// The release the state store describes (`None`: a staging folder, or not known yet).
    state_release: Option<String>,
    /// The SHA-256 of the manifest when every entry of it is pinned (the release id uses it).
    pinned_manifest: Option<String>,
    /// Objects in place whose folder entries are not synced yet: recorded in the state only
    /// after [`Syncer::flush_committed`] syncs their folders (once per folder per batch).
    committed: Vec<Committed>,
}

/// An object counted as downloaded that the group-commit writer then could not put in place:
/// its key, its bytes and why ([`report_late_failures`]).
type LateFailure = (String, u64, Error);

/// A downloaded object waiting to be recorded.
#[derive(Debug)]
struct Committed {
    key: String,
    recorded: plan::Recorded,
    bytes: u64,
    commit: download::Commit,
}

/// Objects committed before their folders are synced and they are recorded: one folder
/// fsync per folder for up to this many objects, instead of one per object. A crash loses at
/// most this many records (those objects are compared again and fetched once more).
const COMMIT_BATCH: usize = 128;

/// Receives progress while a pass runs (e.g. a terminal progress bar).
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// A download was queued; `bytes` is its size when known (0 otherwise).
    fn planned(&self, bytes: u64);
    /// Body bytes arrived.
    fn transferred(&self, bytes: u64);
    /// Bytes reported by an attempt that failed (they are fetched again): take them back.
    fn discarded(&self, bytes: u64);
    /// A queued download ended (in any way).
    fn finished(&self);
}

type Task = (String, Result<Outcome, Error>);

impl Syncer {
    /// Opens the state store and builds the S3 client; no network traffic yet.
    ///
    /// # Errors
    /// [`Error::State`] if the state store cannot be opened.
    pub fn new(
        settings: SyncSettings,
        credentials: IotCredentialsProvider,
        clock: SharedClock,
    ) -> Result<Self, Error> {
        let state = StateStore::open(&settings.state_dir, &settings.state_file_name())?;
        Ok(Self::with_state(settings, credentials, clock, state))
    }

    /// An engine for [`Syncer::dry_run`] only: the state is read, never created or written.
    ///
    /// # Errors
    /// [`Error::State`] if an existing state cannot be read.
    pub fn for_dry_run(
        settings: SyncSettings,
        credentials: IotCredentialsProvider,
        clock: SharedClock,
    ) -> Result<Self, Error> {
        let state = StateStore::open_read_only(&settings.state_dir, &settings.state_file_name())?;
        Ok(Self::with_state(settings, credentials, clock, state))
    }

    fn with_state(
        settings: SyncSettings,
        credentials: IotCredentialsProvider,
        clock: SharedClock,
        state: StateStore,
    ) -> Self {
        let source = Source::new(&settings.s3, credentials.clone());
        let limiter =
            crate::backoff::RateLimiter::new(settings.bandwidth_limit, clock.clone()).map(Arc::new);
        let (ranged_threshold, ranged_parallel) =
            (settings.ranged_threshold, settings.max_concurrency.min(4));
        let part_slots = Arc::new(tokio::sync::Semaphore::new(settings.max_concurrency.max(1)));
        Self {
            settings,
            source,
            state,
            clock,
            swept: false,
            root: None,
            case_folded: None,
            hooks: Hooks {
                limiter,
                progress: None,
                ranged_threshold,
                ranged_parallel,
                part_slots,
                credentials: credentials.clone(),
                writer: Arc::default(),
            },
            credentials,
            releases: None,
            release_pass: staged::ReleasePass::default(),
            state_release: None,
            pinned_manifest: None,
            committed: Vec::new(),
        }
    }

    /// Reports progress to `progress` from now on.
    pub fn set_progress(&mut self, progress: Arc<dyn Progress>) {
        self.hooks.progress = Some(progress);
    }

    /// The credentials provider in use.
    #[must_use]
    pub fn credentials(&self) -> &IotCredentialsProvider {
        &self.credentials
    }

    /// The settings in use.
    #[must_use]
    pub fn settings(&self) -> &SyncSettings {
        &self.settings
    }

    /// The state file in use.
    #[must_use]
    pub fn state_path(&self) -> &std::path::Path {
        self.state.path()
    }

    /// One pass. Per-object failures are counted in the summary; errors that stop the whole
    /// pass (credentials, listing, manifest) are returned. A dry run changes nothing: it only
    /// fills [`Summary::planned`].
    ///
    /// # Errors
    /// The error that stopped the pass, or [`Error::Cancelled`].
    pub async fn run_pass(&mut self, cancel: &CancellationToken) -> Result<Summary, Error> {
        self.pass(cancel, false).await
    }

    /// What [`Syncer::run_pass`] would do, changing nothing.
    ///
    /// # Errors
    /// As [`Syncer::run_pass`].
    pub async fn dry_run(&mut self, cancel: &CancellationToken) -> Result<Summary, Error> {
        self.pass(cancel, true).await
    }

    async fn pass(&mut self, cancel: &CancellationToken, dry_run: bool) -> Result<Summary, Error> {
        let started = self.clock.monotonic();
        let mut summary = Summary::new(rfc3339(self.clock.now()), dry_run);
        // One writer at a time, for the whole pass (a dry run writes nothing).
        let releases = self.settings.releases.is_some();
        let _lock = if dry_run {
            // Read only: the folder is looked at if it exists, never created.
            self.root = if releases {
                self.release_dry_root()
            } else {
                local::Folder::open_root(&self.settings.local_dir).ok()
            };
            None
        } else if releases {
            let lock = off_runtime(|| self.prepare_release())?;
            off_runtime(|| self.sweep_once())?;
            Some(lock)
        } else {
            self.prepare_local_dir()?;
            let lock =
                crate::lock::InstanceLock::acquire(&self.settings.local_dir, self.state.path())?;
            off_runtime(|| self.sweep_once())?;
            Some(lock)
        };
        // Fetch credentials first so their errors arrive whole, not wrapped by the SDK.
        if let Err(e) = self.credentials.credentials().await {
            return Err(Error::Credentials {
                code: e.code(),
                message: e.to_string(),
            });
        }
        let mut seen: HashSet<String> = HashSet::new();
        let mut tasks: JoinSet<Task> = JoinSet::new();
        let result = match self.settings.source.clone() {
            SourceMode::Prefix => {
                self.listed_pass(cancel, dry_run, &mut summary, &mut seen, &mut tasks)
                    .await
            }
            SourceMode::Keys(keys) => {
                self.pinned_manifest = None;
                let entries = keys.into_iter().map(manifest::Entry::plain).collect();
                self.unlisted_pass(
                    entries,
                    cancel,
                    dry_run,
                    &mut summary,
                    &mut seen,
                    &mut tasks,
                )
                .await
            }
            SourceMode::Manifest(key) => match self.fetch_manifest(&key, dry_run).await {
                Ok(keys) => {
                    self.unlisted_pass(keys, cancel, dry_run, &mut summary, &mut seen, &mut tasks)
                        .await
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            tasks.shutdown().await;
            // What was written is recorded; the pass fails as a whole, so the writer's own
            // failures need no report.
            off_runtime(|| self.flush_and_commit())?;
            return Err(e);
        }
        while let Some(joined) = tasks.join_next().await {
            self.absorb(joined, &mut summary)?;
        }
        if releases {
            self.adopt_lazy_staging();
        }
        if cancel.is_cancelled() {
            off_runtime(|| self.flush_and_commit())?;
            return Err(Error::Cancelled);
        }
        if self.settings.delete_extraneous {
            report_late_failures(&mut summary, off_runtime(|| self.flush_committed())?);
            off_runtime(|| self.delete_extraneous(&seen, dry_run, &mut summary))?;
        }
        if !dry_run {
            // fsync, and now and then a compaction: not on a runtime thread.
            report_late_failures(&mut summary, off_runtime(|| self.flush_and_commit())?);
            if releases {
                summary.release = Some(off_runtime(|| self.finish_release(&summary))?);
            }
        }
        summary.finished_at = rfc3339(self.clock.now());
        summary.duration_ms = u64::try_from(
            self.clock
                .monotonic()
                .saturating_duration_since(started)
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        Ok(summary)
    }

    async fn listed_pass(
        &mut self,
        cancel: &CancellationToken,
        dry_run: bool,
        summary: &mut Summary,
        seen: &mut HashSet<String>,
        tasks: &mut JoinSet<Task>,
    ) -> Result<(), Error> {
        let mut fetch = self.fetch_page(None);
        loop {
            let page = tokio::select! {
                // Dropping a listing is safe: it only reads (the prefetch aborts on drop).
                () = cancel.cancelled() => return Err(Error::Cancelled),
                page = &mut fetch => page?,
            };
            // The next page is requested now, while this one's objects are planned and
            // downloaded: listing and downloading overlap instead of taking turns. At most
            // two pages are held.
            let next = page.next.clone().map(|token| self.fetch_page(Some(token)));
            for (key, class) in page.archived {
                // Still in the bucket: its file (if any) is not extraneous.
                summary.listed += 1;
                if self.settings.delete_extraneous {
                    seen.insert(key.clone());
                }
                summary.skip(
                    &key,
                    "ArchivedObject",
                    &format!("storage class {class}: restore the object (s3:RestoreObject) or copy it to a readable class to sync it"),
                );
            }
            for remote in page.objects {
                summary.listed += 1;
                if self.settings.delete_extraneous {
                    seen.insert(remote.key.clone());
                }
                let Some(rel) = self.admit(&remote.key, remote.size, summary) else {
                    continue;
                };
                match plan::plan(
                    &remote,
                    self.state.get(&remote.key).as_ref(),
                    self.observe(&rel),
                ) {
                    Action::Unchanged => summary.unchanged += 1,
                    Action::Download(reason) if dry_run => {
                        planned(
                            summary,
                            "download",
                            &remote.key,
                            Some(&rel),
                            reason.to_string(),
                        );
                    }
                    Action::Download(reason) => {
                        self.spawn(
                            Job::Listed {
                                remote,
                                rel,
                                reason,
                            },
                            cancel,
                            tasks,
                            summary,
                        )
                        .await?;
                    }
                }
            }
            match next {
                Some(n) => fetch = n,
                None => return Ok(()),
            }
        }
    }

    /// Starts listing the page after `token` (the first page for `None`) on its own task.
    fn fetch_page(&self, token: Option<String>) -> PageFetch {
        let (source, creds, prefix) = (
            self.source.clone(),
            self.credentials.clone(),
            self.settings.prefix.clone(),
        );
        PageFetch(tokio::spawn(async move {
            list_page_refreshing(&source, &creds, &prefix, token).await
        }))
    }

    async fn unlisted_pass(
        &mut self,
        entries: Vec<manifest::Entry>,
        cancel: &CancellationToken,
        dry_run: bool,
        summary: &mut Summary,
        seen: &mut HashSet<String>,
        tasks: &mut JoinSet<Task>,
    ) -> Result<(), Error> {
        for entry in entries {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let key = entry.key.clone();
            summary.listed += 1;
            if self.settings.delete_extraneous {
                seen.insert(key.clone());
            }
            // Sizes are unknown before the GET; a trailing '/' can only be a folder marker.
            let size = u64::from(!key.ends_with('/'));
            let Some(rel) = self.admit(&key, size, summary) else {
                continue;
            };
            let recorded = self.state.get(&key);
            let on_disk = self.observe(&rel);
            let intact = recorded.as_ref().filter(|r| {
                on_disk
                    == Some(plan::LocalFile {
                        size: r.size,
                        mtime_ns: r.mtime_ns,
                    })
            });
            if dry_run {
                // HeadObject needs only s3:GetObject and changes nothing.
                match self.source.head(&key).await {
                    Ok(remote) => match plan::plan(&remote, recorded.as_ref(), on_disk) {
                        Action::Unchanged => summary.unchanged += 1,
                        Action::Download(reason) => {
                            planned(summary, "download", &key, Some(&rel), reason.to_string())
                        }
                    },
                    Err(e) => planned(summary, "error", &key, Some(&rel), chain(&e)),
                }
                continue;
            }
            // A pinned version of a file recorded intact needs no request: versions do not
            // change.
            if entry
                .pin_tag()
                .is_some_and(|t| intact.is_some_and(|r| r.etag == t))
            {
                summary.unchanged += 1;
                continue;
            }
            let if_none_match = intact
                .map(|r| r.etag.clone())
                .filter(|e| !e.starts_with("lm:") && !e.starts_with(release::decide::PIN_PREFIX));
            self.spawn(
                Job::Unlisted {
                    key,
                    rel,
                    if_none_match,
                    pin: entry,
                },
                cancel,
                tasks,
                summary,
            )
            .await?;
        }
        Ok(())
    }

    /// Maps a key to its path and applies the filters; counts what is left out.
    fn admit(&mut self, key: &str, size: u64, summary: &mut Summary) -> Option<RelPath> {
        match plan::map_key(key, &self.settings.prefix, size) {
            KeyVerdict::Path(rel) if self.settings.filter.allows(rel.as_str()) => {
                // On a case-insensitive file system two keys that differ only in case are one
                // file: the first in this pass gets it, the other is reported (before, they
                // overwrote each other every pass, downloaded again and again).
                if let Some(seen) = &mut self.case_folded {
                    match seen.entry(plan::case_fold(rel.as_str())) {
                        std::collections::hash_map::Entry::Occupied(first)
                            if first.get() != key =>
                        {
                            let message = format!(
                                "differs only in case from '{}', and localDir's file system does not tell case apart (vfat, exfat?): one file cannot hold both",
                                first.get()
                            );
                            tracing::warn!(key = %key, "{message}");
                            summary.skip(key, "CaseConflict", &message);
                            return None;
                        }
                        std::collections::hash_map::Entry::Occupied(_) => {}
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(key.to_owned());
                        }
                    }
                }
                Some(rel)
            }
            KeyVerdict::Path(_) => {
                summary.excluded += 1;
                None
            }
            KeyVerdict::FolderMarker => {
                summary.folder_markers += 1;
                None
            }
            KeyVerdict::Unsafe(why) => {
                tracing::warn!(key = %key.escape_debug(), reason = %why, "skipping unsafe object key");
                let key = key.escape_debug().to_string();
                planned(summary, "skip", &key, None, why.to_string());
                summary.skip(&key, "UnsafeKey", &why.to_string());
                None
            }
        }
    }

    async fn spawn(
        &mut self,
        job: Job,
        cancel: &CancellationToken,
        tasks: &mut JoinSet<Task>,
        summary: &mut Summary,
    ) -> Result<(), Error> {
        while tasks.len() >= self.settings.max_concurrency {
            if let Some(joined) = tasks.join_next().await {
                self.absorb(joined, summary)?;
            }
        }
        let (source, creds, hooks) = (
            self.source.clone(),
            self.credentials.clone(),
            self.hooks.clone(),
        );
        if let Some(p) = &hooks.progress {
            p.planned(match &job {
                Job::Listed { remote, .. } => remote.size,
                Job::Unlisted { .. } => 0,
            });
        }
        let root = if self.settings.releases.is_some() {
            self.release_root(&job)?
        } else {
            Root::Ready(self.root.clone().ok_or_else(|| local::Error::Io {
                action: "open",
                path: self.settings.local_dir.clone(),
                source: std::io::Error::other("localDir is not open"),
            })?)
        };
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let key = job.key().to_owned();
            let result = tokio::select! {
                // Dropping the download removes its temporary file.
                () = cancel.cancelled() => Err(Error::Cancelled),
                r = download_with_retries(&source, &creds, &root, &job, &hooks) => r,
            };
            if let Some(p) = &hooks.progress {
                p.finished();
            }
            (key, result)
        });
        Ok(())
    }

    fn prepare_local_dir(&mut self) -> Result<(), Error> {
        let dir = &self.settings.local_dir;
        std::fs::create_dir_all(dir).map_err(|source| local::Error::Io {
            action: "create localDir",
            path: dir.clone(),
            source,
        })?;
        let root = local::Folder::open_root_with(dir, self.settings.modes)?;
        let insensitive = root.is_case_insensitive()?;
        if insensitive && self.case_folded.is_none() {
            tracing::info!(local_dir = %dir.display(), "localDir's file system does not tell case apart; keys that differ only in case are reported as conflicts");
        }
        self.case_folded = insensitive.then(std::collections::HashMap::new);
        self.root = Some(root);
        Ok(())
    }

    /// The regular file at `rel` now, without following any symlink below `localDir`.
    fn observe(&self, rel: &RelPath) -> Option<plan::LocalFile> {
        let (folder, name) = self.root.as_ref()?.parent_of(rel, false).ok()??;
        folder.observe(name)
    }

    /// Removes what an interrupted run left (once per process; under the instance lock, so
    /// never another instance's files).
    fn sweep_once(&mut self) -> Result<(), Error> {
        if !self.swept {
            let Some(root) = &self.root else {
                return Ok(());
            };
            let n = local::sweep_temp_files(root, self.clock.now())?;
            if n > 0 {
                tracing::info!(
                    removed = n,
                    "removed temporary files left by an interrupted run"
                );
            }
            self.swept = true;
        }
        Ok(())
    }

    /// Makes the objects committed since the last call durable (the writer's batch, and each
    /// unsynced folder once), then records them: a record never names a file whose data or
    /// folder entry could be lost. Returns those the writer could not put in place. Blocking.
    fn flush_committed(&mut self) -> Result<Vec<LateFailure>, Error> {
        let pending = std::mem::take(&mut self.committed);
        if pending
            .iter()
            .any(|c| matches!(c.commit, download::Commit::Queued(_)))
        {
            self.hooks.writer.flush();
        }
        let mut synced: Vec<&std::path::Path> = Vec::new();
        for c in &pending {
            if let download::Commit::FolderUnsynced(_, folder) = &c.commit {
                if !synced.contains(&folder.path()) {
                    folder.sync()?;
                    synced.push(folder.path());
                }
            }
        }
        let mut late = Vec::new();
        for c in pending {
            let mut recorded = c.recorded;
            match c.commit {
                download::Commit::Queued(ticket) => match ticket.wait() {
                    Ok(written) => recorded.mtime_ns = written.mtime_ns,
                    Err(e) => {
                        let e = download::commit_error(&c.key, recorded.size, e);
                        late.push((c.key, c.bytes, e));
                        continue;
                    }
                },
                download::Commit::FolderUnsynced(written, _) => {
                    recorded.mtime_ns = written.mtime_ns
                }
                download::Commit::Durable => {}
            }
            self.state.record(&c.key, recorded)?;
        }
        Ok(late)
    }

    /// [`Syncer::flush_committed`], then makes the state durable.
    fn flush_and_commit(&mut self) -> Result<Vec<LateFailure>, Error> {
        let late = self.flush_committed()?;
        self.state.commit()?;
        Ok(late)
    }

    fn absorb(
        &mut self,
        joined: Result<Task, tokio::task::JoinError>,
        summary: &mut Summary,
    ) -> Result<(), Error> {
        let (key, result) = match joined {
            Ok(r) => r,
            Err(e) => {
                summary.fail("", "TaskFailed", e.to_string());
                return Ok(());
            }
        };
        match result {
            Ok(Outcome::Downloaded {
                key,
                recorded,
                bytes,
                commit,
            }) => {
                summary.downloaded += 1;
                summary.bytes += bytes;
                self.committed.push(Committed {
                    key,
                    recorded,
                    bytes,
                    commit,
                });
                if self.committed.len() >= COMMIT_BATCH {
                    report_late_failures(summary, off_runtime(|| self.flush_committed())?);
                }
            }
            Ok(Outcome::NotModified) => summary.unchanged += 1,
            Err(Error::Cancelled) => {}
            Err(e) => {
                let message = chain(&e);
                tracing::warn!(key = %key, error = %message, "object not synced");
                summary.fail(&key, e.code(), message);
            }
        }
        Ok(())
    }
}

fn planned(
    summary: &mut Summary,
    action: &'static str,
    key: &str,
    rel: Option<&RelPath>,
    reason: String,
) {
    summary.plan(action, key, rel.map(ToString::to_string), reason);
}

/// Runs blocking file work (a tree walk, fsyncs, a state compaction, deletions) without holding
/// up a runtime worker: `block_in_place` moves the worker's other tasks elsewhere. On a
/// current-thread runtime it runs inline.
fn off_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// Objects counted as downloaded that the writer then could not put in place become the
/// pass's failures (a release does not switch, the status names them).
fn report_late_failures(summary: &mut Summary, late: Vec<LateFailure>) {
    for (key, bytes, e) in late {
        let message = chain(&e);
        tracing::warn!(key = %key, error = %message, "object not synced");
        summary.downloaded = summary.downloaded.saturating_sub(1);
        summary.bytes = summary.bytes.saturating_sub(bytes);
        summary.fail(&key, e.code(), message);
    }
}

/// A page being listed on its own task; aborted if dropped (an error or a cancellation ends
/// the pass before the page is needed).
struct PageFetch(tokio::task::JoinHandle<Result<s3::Page, Error>>);

impl Drop for PageFetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::future::Future for PageFetch {
    type Output = Result<s3::Page, Error>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|joined| {
            joined.unwrap_or_else(|e| {
                Err(Error::Network {
                    op: "ListObjectsV2",
                    target: String::new(),
                    detail: format!("the listing task failed: {e}"),
                })
            })
        })
    }
}

/// Lists a page; if S3 says the credentials expired (they were revoked or the clock jumped),
/// refreshes them and lists the page once more.
async fn list_page_refreshing(
    source: &Source,
    creds: &IotCredentialsProvider,
    prefix: &str,
    token: Option<String>,
) -> Result<s3::Page, Error> {
    match source.list_page(prefix, token.clone()).await {
        Err(Error::ExpiredToken) => {
            creds.invalidate().await;
            source.list_page(prefix, token).await
        }
        other => other,
    }
}
