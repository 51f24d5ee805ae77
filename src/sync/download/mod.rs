//! Fetching one object: a job, its retries, and the two paths into place. Small objects stream
//! through one GET into a temporary file; large listed objects go through [`ranged`] (parallel
//! ranged GETs, resumable). Both verify with the one rule of `plan::expected_md5` (and S3's
//! checksums) and commit through `local::commit_file`.

mod ranged;

use std::sync::Arc;
use std::time::Duration;

use md5::{Digest, Md5};

use super::group;
use super::local;
use super::plan::{self, Reason, RelPath, Remote};
use super::s3::{self, Source};
use super::{chain, hex, Error, Progress};
use crate::backoff::Backoff;
use crate::credentials::IotCredentialsProvider;

/// Attempts per object for failures that can pass on retry.
pub(crate) const OBJECT_ATTEMPTS: u32 = 3;
pub(crate) const OBJECT_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(200),
    cap: Duration::from_secs(5),
};
/// Space left free on the disk beyond each object, so a sync never fills it to the last byte.
pub(crate) const DISK_HEADROOM: u64 = 64 * 1024;
/// Objects up to this size are received into memory and written, verified, in one blocking
/// task ([`local::write_new`]); larger ones stream to a temporary file. At most
/// `maxConcurrency` of them are in memory at once (16 × 256 KiB = 4 MiB).
pub(crate) const IN_MEMORY_MAX: u64 = 256 * 1024;

/// Where a download's bytes go until they are verified.
enum Sink {
    /// A small object, kept in memory.
    Memory(Vec<u8>),
    /// A temporary file in the destination folder (boxed: it holds its write buffer's state).
    File(Box<local::TempFile>),
}

impl Sink {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), local::Error> {
        match self {
            Self::Memory(v) => {
                v.extend_from_slice(chunk);
                Ok(())
            }
            Self::File(t) => t.write(chunk).await,
        }
    }

    /// Puts the verified bytes in place: a small object through the group-commit writer where
    /// the file system allows it, otherwise fsynced on its own. Folder entries are synced once
    /// for a batch of objects, before the engine records any of them
    /// (`Syncer::flush_committed`).
    async fn commit(
        self,
        folder: &local::Folder,
        name: &str,
        mtime: Option<std::time::SystemTime>,
        writer: &group::Writer,
    ) -> Result<Commit, local::Error> {
        let entry = local::EntrySync::Batched;
        let unsynced = |f: plan::LocalFile| Commit::FolderUnsynced(f, folder.clone());
        match self {
            Self::Memory(data) if writer.accepts(folder) => Ok(Commit::Queued(
                writer.queue(folder, name, data, mtime).await?,
            )),
            Self::Memory(data) => local::write_new(folder, name, data, mtime, entry)
                .await
                .map(unsynced),
            Self::File(t) => (*t).commit(name, mtime, entry).await.map(unsynced),
        }
    }
}

/// Where a download goes: a folder, or (releases on) the staging folder made only when the
/// first body arrives, so a pass of conditional GETs that all answer 304 creates nothing.
#[derive(Clone)]
pub(crate) enum Root {
    /// This folder.
    Ready(local::Folder),
    /// Made once, on first use, by the function; shared by the pass's tasks.
    Lazy(Arc<Lazy>),
}

/// A folder made on first use.
pub(crate) struct Lazy {
    made: std::sync::Mutex<Option<local::Folder>>,
    make: Box<dyn Fn() -> Result<local::Folder, Error> + Send + Sync>,
}

impl Lazy {
    pub(crate) fn new(
        make: impl Fn() -> Result<local::Folder, Error> + Send + Sync + 'static,
    ) -> Self {
        Self {
            made: std::sync::Mutex::new(None),
            make: Box::new(make),
        }
    }

    /// The folder, if it was made.
    pub(crate) fn made(&self) -> Option<local::Folder> {
        self.made.lock().ok()?.clone()
    }

    /// The folder, made now if needed (blocking file work: off the runtime's workers).
    pub(crate) fn get(&self) -> Result<local::Folder, Error> {
        let mut made = self.made.lock().map_err(|_| {
            Error::Local(local::Error::Io {
                action: "make",
                path: std::path::PathBuf::from(".staging"),
                source: std::io::Error::other("a task failed while making the staging folder"),
            })
        })?;
        if let Some(f) = made.as_ref() {
            return Ok(f.clone());
        }
        let f = super::off_runtime(|| (self.make)())?;
        *made = Some(f.clone());
        Ok(f)
    }
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("made", &self.made())
            .finish_non_exhaustive()
    }
}

impl Root {
    fn folder(&self) -> Result<local::Folder, Error> {
        match self {
            Self::Ready(f) => Ok(f.clone()),
            Self::Lazy(l) => l.get(),
        }
    }
}

/// What every download task shares: the bandwidth limit and the progress sink.
#[derive(Debug, Clone)]
pub(crate) struct Hooks {
    pub(crate) limiter: Option<Arc<crate::backoff::RateLimiter>>,
    pub(crate) progress: Option<Arc<dyn Progress>>,
    /// Objects larger than this are fetched in ranged parts (0 = never).
    pub(crate) ranged_threshold: u64,
    /// Parts of one object fetched at once.
    pub(crate) ranged_parallel: usize,
    /// Parts in flight across all objects: each holds a write buffer, so this bounds memory
    /// (`maxConcurrency` parts, whatever the number of large objects at once).
    pub(crate) part_slots: Arc<tokio::sync::Semaphore>,
    /// To drop credentials S3 called expired (ranged parts retry on their own).
    pub(crate) credentials: IotCredentialsProvider,
    /// Writes small objects and makes them durable a batch at a time.
    pub(crate) writer: Arc<group::Writer>,
}

/// One object to fetch.
#[derive(Debug)]
pub(crate) enum Job {
    /// Listed: its ETag and size are known; GET If-Match.
    Listed {
        remote: Remote,
        rel: RelPath,
        reason: Reason,
    },
    /// Named by keys/manifest: conditional GET If-None-Match the recorded ETag when the local
    /// copy is intact (304 = unchanged), plain GET otherwise.
    Unlisted {
        key: String,
        rel: RelPath,
        if_none_match: Option<String>,
        /// The manifest's entry: a version to fetch, a digest and size to verify.
        pin: super::manifest::Entry,
    },
}

impl Job {
    pub(crate) fn key(&self) -> &str {
        match self {
            Self::Listed { remote, .. } => &remote.key,
            Self::Unlisted { key, .. } => key,
        }
    }
}

pub(crate) enum Outcome {
    Downloaded {
        key: String,
        /// What the state records once the commit is durable (its mtime is filled in from
        /// the commit, except for [`Commit::Durable`]).
        recorded: plan::Recorded,
        bytes: u64,
        commit: Commit,
    },
    NotModified,
}

/// Where a downloaded object stands before the engine records it.
#[derive(Debug)]
pub(crate) enum Commit {
    /// In place, its folder entry durable too.
    Durable,
    /// In place; its folder needs an fsync before the object is recorded.
    FolderUnsynced(plan::LocalFile, local::Folder),
    /// With the group-commit writer: in place once it flushes ([`group::Ticket::wait`]).
    Queued(group::Ticket),
}

/// The engine's error for a file the writer could not put in place: a full disk is
/// [`Error::DiskFull`] as on the per-file path.
pub(crate) fn commit_error(key: &str, size: u64, e: local::Error) -> Error {
    if local::is_disk_full(&e) {
        let dir = match &e {
            local::Error::Io { path, .. } => path.parent().unwrap_or(path).to_owned(),
            _ => std::path::PathBuf::new(),
        };
        Error::DiskFull {
            key: key.to_owned(),
            needed: size.saturating_add(DISK_HEADROOM),
            free: local::free_space(&dir),
            dir,
        }
    } else {
        Error::Local(e)
    }
}

/// The bytes one attempt reported to the progress sink; given back if the attempt does not
/// complete (a retry fetches them again, and the bar must not count them twice).
pub(crate) struct AttemptProgress<'a> {
    progress: Option<&'a Arc<dyn Progress>>,
    bytes: u64,
}

impl<'a> AttemptProgress<'a> {
    pub(crate) fn new(progress: Option<&'a Arc<dyn Progress>>) -> Self {
        Self { progress, bytes: 0 }
    }

    /// `n` more bytes arrived.
    pub(crate) fn add(&mut self, n: u64) {
        if let Some(p) = self.progress {
            p.transferred(n);
            self.bytes += n;
        }
    }

    /// The attempt completed: its bytes stay counted.
    pub(crate) fn keep(mut self) {
        self.bytes = 0;
    }
}

impl Drop for AttemptProgress<'_> {
    fn drop(&mut self) {
        if let (Some(p), true) = (self.progress, self.bytes > 0) {
            p.discarded(self.bytes);
        }
    }
}

pub(crate) async fn download_with_retries(
    source: &Source,
    creds: &IotCredentialsProvider,
    root: &Root,
    job: &Job,
    hooks: &Hooks,
) -> Result<Outcome, Error> {
    let mut attempt = 0;
    // The digest of the last corrupt body: the same wrong digest twice is not a transfer error
    // but what the server stores, and no retry changes it.
    let mut corrupt: Option<String> = None;
    loop {
        match download(source, root, job, hooks).await {
            Err(Error::Corrupt {
                key,
                expected,
                actual,
            }) => {
                if corrupt.as_deref() == Some(actual.as_str()) || attempt + 1 >= OBJECT_ATTEMPTS {
                    return Err(Error::Corrupt {
                        key,
                        expected,
                        actual,
                    });
                }
                tracing::debug!(key = %job.key(), %actual, "retrying a body that failed verification");
                corrupt = Some(actual);
            }
            Err(Error::ExpiredToken) if attempt + 1 < OBJECT_ATTEMPTS => {
                // The credentials expired under us (e.g. a long transfer); refresh, then retry.
                creds.invalidate().await;
            }
            Err(e) if e.is_retryable() && attempt + 1 < OBJECT_ATTEMPTS => {
                let delay = OBJECT_BACKOFF.random_delay(attempt);
                tracing::debug!(key = %job.key(), error = %chain(&e), ?delay, "retrying object");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
        attempt += 1;
    }
}

/// Fetches one object and writes it into place: temp file, verify, fsync, rename.
async fn download(
    source: &Source,
    root: &Root,
    job: &Job,
    hooks: &Hooks,
) -> Result<Outcome, Error> {
    if let Job::Listed { remote, rel, .. } = job {
        if hooks.ranged_threshold > 0
            && remote.size > hooks.ranged_threshold
            && !remote.etag.is_empty()
        {
            let (folder, name) = local::prepare_destination(&root.folder()?, rel)?;
            let part_size = (hooks.ranged_threshold / 2).max(1);
            let written = ranged::download(
                source,
                remote,
                &folder,
                name,
                part_size,
                hooks.ranged_parallel,
                hooks,
            )
            .await?;
            return Ok(Outcome::Downloaded {
                key: remote.key.clone(),
                recorded: plan::Recorded {
                    etag: plan::version_tag(remote),
                    size: remote.size,
                    mtime_ns: written.mtime_ns,
                },
                bytes: remote.size,
                commit: Commit::Durable,
            });
        }
    }
    let (out, remote, rel) = match job {
        Job::Listed { remote, rel, .. } => {
            // A small object without a bandwidth limit (which the lean path, receiving the
            // body at once, would not pace) skips the SDK's per-request orchestration.
            let out = if remote.size <= s3::LEAN_MAX && hooks.limiter.is_none() {
                source.get_small(&remote.key, &remote.etag).await?
            } else {
                source.get(&remote.key, &remote.etag).await?
            };
            (out, remote.clone(), rel)
        }
        Job::Unlisted {
            key,
            rel,
            if_none_match,
            pin,
        } => {
            let out = match &pin.version_id {
                Some(version) => Some(source.get_version(key, version).await?),
                None => {
                    source
                        .get_conditional(key, if_none_match.as_deref())
                        .await?
                }
            };
            let Some(out) = out else {
                return Ok(Outcome::NotModified);
            };
            let remote = Remote {
                key: key.clone(),
                etag: out.e_tag().map(plan::normalize_etag).unwrap_or_default(),
                size: out
                    .content_length()
                    .and_then(|l| u64::try_from(l).ok())
                    .unwrap_or(0),
                last_modified: out
                    .last_modified()
                    .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
            };
            (out, remote, rel)
        }
    };
    let (folder, name) = local::prepare_destination(&root.folder()?, rel)?;
    let parent = folder.path().to_owned();
    let needed = remote.size.saturating_add(DISK_HEADROOM);
    if let Some(free) = folder.free_space() {
        if free < needed {
            return Err(Error::DiskFull {
                key: remote.key.clone(),
                needed,
                dir: parent.to_owned(),
                free: Some(free),
            });
        }
    }
    let disk_full = |e: local::Error| {
        if local::is_disk_full(&e) {
            Error::DiskFull {
                key: remote.key.clone(),
                needed,
                dir: parent.clone(),
                free: folder.free_space(),
            }
        } else {
            Error::Local(e)
        }
    };
    let pin = match job {
        Job::Unlisted { pin, .. } => Some(pin),
        Job::Listed { .. } => None,
    };
    if let Some(size) = pin.and_then(|p| p.size).filter(|s| *s != remote.size) {
        return Err(Error::Corrupt {
            key: remote.key.clone(),
            expected: format!("{size} bytes (manifest)"),
            actual: format!("{} bytes", remote.size),
        });
    }
    let expected_md5 = plan::expected_md5(&remote.etag, s3::encryption_of(&out));
    let mut hasher = expected_md5.as_ref().map(|_| Md5::new());
    let expected_sha256 = pin.and_then(|p| p.sha256.clone());
    let mut sha = expected_sha256
        .as_ref()
        .map(|_| <sha2::Sha256 as sha2::Digest>::new());
    let mut body = out.body;
    let mut tmp = if remote.size <= IN_MEMORY_MAX {
        Sink::Memory(Vec::with_capacity(
            usize::try_from(remote.size).unwrap_or(0),
        ))
    } else {
        Sink::File(Box::new(
            local::TempFile::create(&folder).await.map_err(disk_full)?,
        ))
    };
    let mut received: u64 = 0;
    let mut shown = AttemptProgress::new(hooks.progress.as_ref());
    loop {
        let chunk = body
            .try_next()
            .await
            .map_err(|e| body_error(&remote.key, &e))?;
        let Some(chunk) = chunk else { break };
        received += chunk.len() as u64;
        if received > remote.size {
            break;
        }
        if let Some(l) = &hooks.limiter {
            l.acquire(chunk.len()).await;
        }
        shown.add(chunk.len() as u64);
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        if let Some(h) = sha.as_mut() {
            sha2::Digest::update(h, &chunk);
        }
        tmp.write(&chunk).await.map_err(disk_full)?;
    }
    if received != remote.size {
        return Err(Error::Truncated {
            key: remote.key.clone(),
            expected: remote.size,
            received,
        });
    }
    if let (Some(h), Some(expected)) = (hasher, expected_md5) {
        let actual = hex(&h.finalize());
        if actual != expected {
            return Err(Error::Corrupt {
                key: remote.key.clone(),
                expected: format!("MD5 {expected} (ETag)"),
                actual: format!("MD5 {actual}"),
            });
        }
    }
    if let (Some(h), Some(expected)) = (sha, expected_sha256) {
        let actual = hex(&sha2::Digest::finalize(h));
        if actual != expected {
            return Err(Error::Corrupt {
                key: remote.key.clone(),
                expected: format!("SHA-256 {expected} (manifest)"),
                actual: format!("SHA-256 {actual}"),
            });
        }
    }
    let commit = tmp
        .commit(&folder, name, remote.last_modified, &hooks.writer)
        .await
        .map_err(disk_full)?;
    shown.keep();
    let dest = folder.display(name);
    let why = match job {
        Job::Listed { reason, .. } => reason.to_string(),
        Job::Unlisted { .. } => "named in keys/manifest".to_owned(),
    };
    tracing::debug!(key = %remote.key, path = %dest.display(), bytes = received, reason = %why, "downloaded");
    Ok(Outcome::Downloaded {
        key: remote.key.clone(),
        recorded: plan::Recorded {
            etag: pin
                .and_then(super::manifest::Entry::pin_tag)
                .unwrap_or_else(|| plan::version_tag(&remote)),
            size: remote.size,
            // Read back from the commit when it is recorded (`Syncer::flush_committed`).
            mtime_ns: 0,
        },
        bytes: received,
        commit,
    })
}

/// A failure while reading a body: the SDK's checksum verification, or the network.
pub(crate) fn body_error(key: &str, e: &(dyn std::error::Error + 'static)) -> Error {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(aws_smithy_checksums::body::validate::Error::ChecksumMismatch {
            expected,
            actual,
        }) = err.downcast_ref::<aws_smithy_checksums::body::validate::Error>()
        {
            return Error::Corrupt {
                key: key.to_owned(),
                expected: format!(
                    "x-amz-checksum {}",
                    aws_smithy_types::base64::encode(expected)
                ),
                actual: aws_smithy_types::base64::encode(actual),
            };
        }
        cur = err.source();
    }
    Error::Network {
        op: "GetObject",
        target: key.to_owned(),
        detail: chain(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};

    #[derive(Debug, Default)]
    struct Counter(AtomicI64);

    impl Progress for Counter {
        fn planned(&self, _: u64) {}
        fn transferred(&self, n: u64) {
            self.0
                .fetch_add(i64::try_from(n).unwrap(), Ordering::Relaxed);
        }
        fn discarded(&self, n: u64) {
            self.0
                .fetch_sub(i64::try_from(n).unwrap(), Ordering::Relaxed);
        }
        fn finished(&self) {}
    }

    /// A failed attempt's bytes are given back, so a retry does not count them twice.
    #[test]
    fn a_failed_attempt_gives_its_bytes_back() {
        let counter = Arc::new(Counter::default());
        let sink: Arc<dyn Progress> = counter.clone();
        {
            let mut failed = AttemptProgress::new(Some(&sink));
            failed.add(700);
        }
        let mut ok = AttemptProgress::new(Some(&sink));
        ok.add(1_000);
        ok.keep();
        assert_eq!(counter.0.load(Ordering::Relaxed), 1_000);
    }
}
