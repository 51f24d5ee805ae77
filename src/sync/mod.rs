//! S3 prefix → local folder.
//!
//! A pass lists the prefix page by page and, for each object, asks [`plan`] what to do. Downloads
//! run on up to `maxConcurrency` tasks while listing continues, so memory stays bounded by a
//! page plus the in-flight bodies. Each download is verified (length, and MD5 for single-part
//! ETags) before it is renamed into place, and recorded in the [`state`] store only after that.
//!
//! - `plan`: pure decisions (key → path, download or not).
//! - `s3`: the S3 client and error mapping.
//! - `local`: atomic writes, safe folders, temp-file sweep.
//! - `state`: the crash-safe record of what was written.

pub mod local;
pub mod plan;
pub mod s3;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use md5::{Digest, Md5};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::credentials::{rfc3339, IotCredentialsProvider};
use plan::{Action, KeyVerdict, Reason, RelPath, Remote};
use s3::{S3Settings, Source};
use state::StateStore;

/// Attempts per object for failures that can pass on retry.
const OBJECT_ATTEMPTS: u32 = 3;
const OBJECT_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(200),
    cap: Duration::from_secs(5),
};
/// At most this many failures and skipped keys are kept in a summary (all are logged).
const MAX_LISTED_PROBLEMS: usize = 20;

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
    /// ListObjectsV2 denied.
    #[error(
        "listing s3://{bucket}/{prefix} was denied (AccessDenied{}); prefix mode needs s3:ListBucket: \
         grant the role behind roleAlias s3:ListBucket on arn:aws:s3:::{bucket} \
         (optionally with the condition s3:prefix = \"{prefix}*\")",
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
         s3:GetObject on arn:aws:s3:::{bucket}/{key} (e.g. arn:aws:s3:::{bucket}/<prefix>*)",
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
    /// MD5 does not match the ETag.
    #[error("object {key} is corrupt: MD5 {actual} does not match ETag {expected}")]
    Corrupt {
        /// Key.
        key: String,
        /// From the ETag.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// Local file system.
    #[error("local file system")]
    Local(#[from] local::Error),
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
            Self::NoSuchBucket { .. } => "NoSuchBucket",
            Self::WrongRegion { .. } => "WrongRegion",
            Self::ClockSkew { .. } | Self::ExpiredToken => "ClockSkew",
            Self::S3 { code, .. } => code,
            Self::Network { .. } => "NetworkError",
            Self::Vanished { .. } => "ObjectVanished",
            Self::ChangedDuringSync { .. } => "ObjectChanged",
            Self::Truncated { .. } => "Truncated",
            Self::Corrupt { .. } => "ChecksumMismatch",
            Self::Local(_) => "LocalFileError",
            Self::State(_) => "StateError",
            Self::Cancelled => "Cancelled",
        }
    }
}

/// Formats an error with its whole source chain, `a: b: c`.
#[must_use]
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cur = e.source();
    }
    text
}

/// A problem with one key.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyProblem {
    /// The object key.
    pub key: String,
    /// Short code.
    pub code: String,
    /// What happened.
    pub message: String,
}

/// What a pass did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Objects listed (including folder markers and skipped keys).
    pub listed: u64,
    /// Objects downloaded.
    pub downloaded: u64,
    /// Objects whose local copy was current.
    pub unchanged: u64,
    /// Keys never written because they are unsafe.
    pub skipped: u64,
    /// Zero-byte `folder/` markers (nothing to write).
    pub folder_markers: u64,
    /// Objects that failed.
    pub failed: u64,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Wall time, milliseconds.
    pub duration_ms: u64,
    /// Start (RFC 3339).
    pub started_at: String,
    /// End (RFC 3339).
    pub finished_at: String,
    /// The first failures.
    pub failures: Vec<KeyProblem>,
    /// The first skipped keys.
    pub skipped_keys: Vec<KeyProblem>,
}

impl Summary {
    /// Whether every object is in place.
    #[must_use]
    pub fn is_success(&self) -> bool {
        self.failed == 0
    }
}

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
}

impl From<&Config> for SyncSettings {
    fn from(c: &Config) -> Self {
        Self {
            s3: S3Settings {
                bucket: c.bucket.clone(),
                region: c.region.clone(),
                endpoint_url: c.s3_endpoint_url.clone(),
                force_path_style: c.s3_force_path_style,
            },
            prefix: c.prefix.clone(),
            local_dir: c.local_dir.clone(),
            max_concurrency: c.max_concurrency,
            state_dir: c.state_dir.clone(),
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
        format!("gg-s3-sync-state-{}.jsonl", hex8(&digest[..8]))
    }
}

fn hex8(bytes: &[u8]) -> String {
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
}

struct Job {
    remote: Remote,
    rel: RelPath,
    reason: Reason,
}

struct Done {
    key: String,
    recorded: plan::Recorded,
    bytes: u64,
}

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
        let source = Source::new(&settings.s3, credentials.clone());
        Ok(Self {
            settings,
            source,
            credentials,
            state,
            clock,
            swept: false,
        })
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
    /// pass (credentials, listing) are returned.
    ///
    /// # Errors
    /// The error that stopped the pass, or [`Error::Cancelled`].
    pub async fn run_pass(&mut self, cancel: &CancellationToken) -> Result<Summary, Error> {
        let started_wall = self.clock.now();
        let started = self.clock.monotonic();
        let mut summary = Summary {
            listed: 0,
            downloaded: 0,
            unchanged: 0,
            skipped: 0,
            folder_markers: 0,
            failed: 0,
            bytes: 0,
            duration_ms: 0,
            started_at: rfc3339(started_wall),
            finished_at: String::new(),
            failures: Vec::new(),
            skipped_keys: Vec::new(),
        };
        self.prepare_local_dir()?;
        // Fetch credentials first so their errors arrive whole, not wrapped by the SDK.
        if let Err(e) = self.credentials.credentials().await {
            return Err(Error::Credentials {
                code: e.code(),
                message: e.to_string(),
            });
        }

        let source = Arc::new(self.source.clone());
        let mut tasks: JoinSet<(String, Result<Done, Error>)> = JoinSet::new();
        let mut token = None;
        let result = loop {
            let page = tokio::select! {
                // Dropping list_page is safe: it only reads.
                () = cancel.cancelled() => break Err(Error::Cancelled),
                page = list_page_refreshing(&self.source, &self.credentials, &self.settings.prefix, token.take()) => page,
            };
            let page = match page {
                Ok(p) => p,
                Err(e) => break Err(e),
            };
            for remote in page.objects {
                summary.listed += 1;
                if let Some(job) = self.classify(remote, &mut summary) {
                    while tasks.len() >= self.settings.max_concurrency {
                        if let Some(joined) = tasks.join_next().await {
                            self.absorb(joined, &mut summary)?;
                        }
                    }
                    let source = source.clone();
                    let creds = self.credentials.clone();
                    let root = self.settings.local_dir.clone();
                    let cancel = cancel.clone();
                    tasks.spawn(async move {
                        let key = job.remote.key.clone();
                        let result = tokio::select! {
                            // Dropping the download removes its temporary file.
                            () = cancel.cancelled() => Err(Error::Cancelled),
                            r = download_with_retries(&source, &creds, &root, &job) => r,
                        };
                        (key, result)
                    });
                }
            }
            match page.next {
                Some(next) => token = Some(next),
                None => break Ok(()),
            }
        };
        if let Err(e) = result {
            tasks.shutdown().await;
            self.state.commit()?;
            return Err(e);
        }
        while let Some(joined) = tasks.join_next().await {
            self.absorb(joined, &mut summary)?;
        }
        self.state.commit()?;
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
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

    fn prepare_local_dir(&mut self) -> Result<(), Error> {
        let dir = &self.settings.local_dir;
        std::fs::create_dir_all(dir).map_err(|source| local::Error::Io {
            action: "create localDir",
            path: dir.clone(),
            source,
        })?;
        if !self.swept {
            let n = local::sweep_temp_files(dir)?;
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

    /// Decides for one listed object; returns a download job if one is needed.
    fn classify(&self, remote: Remote, summary: &mut Summary) -> Option<Job> {
        let rel = match plan::map_key(&remote.key, &self.settings.prefix, remote.size) {
            KeyVerdict::Path(rel) => rel,
            KeyVerdict::FolderMarker => {
                summary.folder_markers += 1;
                return None;
            }
            KeyVerdict::Unsafe(why) => {
                tracing::warn!(key = %remote.key.escape_debug(), reason = %why, "skipping unsafe object key");
                summary.skipped += 1;
                push_capped(
                    &mut summary.skipped_keys,
                    KeyProblem {
                        key: remote.key.escape_debug().to_string(),
                        code: "UnsafeKey".into(),
                        message: why.to_string(),
                    },
                );
                return None;
            }
        };
        let dest = self.settings.local_dir.join(rel.as_str());
        match plan::plan(&remote, self.state.get(&remote.key), local::observe(&dest)) {
            Action::Unchanged => {
                summary.unchanged += 1;
                None
            }
            Action::Download(reason) => Some(Job {
                remote,
                rel,
                reason,
            }),
        }
    }

    fn absorb(
        &mut self,
        joined: Result<(String, Result<Done, Error>), tokio::task::JoinError>,
        summary: &mut Summary,
    ) -> Result<(), Error> {
        let (key, result) = match joined {
            Ok(r) => r,
            Err(e) => {
                summary.failed += 1;
                push_capped(
                    &mut summary.failures,
                    KeyProblem {
                        key: String::new(),
                        code: "TaskFailed".into(),
                        message: e.to_string(),
                    },
                );
                return Ok(());
            }
        };
        match result {
            Ok(done) => {
                summary.downloaded += 1;
                summary.bytes += done.bytes;
                self.state.record(&done.key, done.recorded)?;
            }
            Err(Error::Cancelled) => {}
            Err(e) => {
                let message = chain(&e);
                tracing::warn!(key = %key, error = %message, "object not synced");
                summary.failed += 1;
                push_capped(
                    &mut summary.failures,
                    KeyProblem {
                        key,
                        code: e.code().to_owned(),
                        message,
                    },
                );
            }
        }
        Ok(())
    }
}

fn push_capped(list: &mut Vec<KeyProblem>, p: KeyProblem) {
    if list.len() < MAX_LISTED_PROBLEMS {
        list.push(p);
    }
}

async fn download_with_retries(
    source: &Source,
    creds: &IotCredentialsProvider,
    root: &std::path::Path,
    job: &Job,
) -> Result<Done, Error> {
    let mut attempt = 0;
    loop {
        match download(source, root, job).await {
            Err(Error::ExpiredToken) if attempt + 1 < OBJECT_ATTEMPTS => {
                // The credentials expired under us (e.g. a long transfer); refresh, then retry.
                creds.invalidate().await;
            }
            Err(e) if e.is_retryable() && attempt + 1 < OBJECT_ATTEMPTS => {
                let delay = OBJECT_BACKOFF.random_delay(attempt);
                tracing::debug!(key = %job.remote.key, error = %chain(&e), ?delay, "retrying object");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
        attempt += 1;
    }
}

/// Downloads one object into place: temp file, verify, fsync, rename.
async fn download(source: &Source, root: &std::path::Path, job: &Job) -> Result<Done, Error> {
    let remote = &job.remote;
    let dest = local::prepare_destination(root, &job.rel)?;
    let parent = dest.parent().unwrap_or(root);
    let out = source.get(&remote.key, &remote.etag).await?;
    let kms_or_customer_key = out.sse_customer_algorithm().is_some()
        || out
            .server_side_encryption()
            .is_some_and(|s| s.as_str().starts_with("aws:kms"));
    // ETags of SSE-KMS/SSE-C objects are not MD5s; multipart ETags never are.
    let expected_md5 = (!kms_or_customer_key)
        .then(|| plan::md5_of_etag(&remote.etag))
        .flatten()
        .map(str::to_ascii_lowercase);
    let mut hasher = expected_md5.as_ref().map(|_| Md5::new());
    let mut body = out.body;
    let mut tmp = local::TempFile::create(parent).await?;
    let mut received: u64 = 0;
    loop {
        let chunk = body.try_next().await.map_err(|e| Error::Network {
            op: "GetObject",
            target: remote.key.clone(),
            detail: chain(&e),
        })?;
        let Some(chunk) = chunk else { break };
        received += chunk.len() as u64;
        if received > remote.size {
            break;
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        tmp.write(&chunk).await?;
    }
    if received != remote.size {
        return Err(Error::Truncated {
            key: remote.key.clone(),
            expected: remote.size,
            received,
        });
    }
    if let (Some(h), Some(expected)) = (hasher, expected_md5) {
        let actual = hex8(&h.finalize());
        if actual != expected {
            return Err(Error::Corrupt {
                key: remote.key.clone(),
                expected,
                actual,
            });
        }
    }
    let written = tmp.commit(&dest, remote.last_modified).await?;
    tracing::debug!(key = %remote.key, path = %dest.display(), reason = %job.reason, bytes = received, "downloaded");
    Ok(Done {
        key: remote.key.clone(),
        recorded: plan::Recorded {
            etag: plan::version_tag(remote),
            size: remote.size,
            mtime_ns: written.mtime_ns,
        },
        bytes: received,
    })
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
