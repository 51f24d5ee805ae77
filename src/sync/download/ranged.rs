//! Large objects: parallel ranged GETs into a preallocated file, resumable after a crash.
//!
//! The data goes to `.gg-s3-sync.<id>.resume.part` next to the destination, and a sidecar
//! `.gg-s3-sync.<id>.resume.json` records the object version (ETag, size, part size) and the
//! parts written. A part is recorded only after it is fsynced, so after a crash, kill -9 or
//! SIGTERM the next attempt fetches only the missing parts. Every part is requested with
//! `If-Match: <ETag>`: if the object changes meanwhile, the partial data is discarded. Memory
//! stays bounded by the parts in flight, whatever the object's size.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::{body_error, Hooks, DISK_HEADROOM, OBJECT_ATTEMPTS, OBJECT_BACKOFF};
use crate::sync::local;
use crate::sync::plan::{self, LocalFile, Remote, RESUME_MARK, TEMP_PREFIX, TEMP_SUFFIX};
use crate::sync::s3::Source;
use crate::sync::{chain, hex, Error};

/// How often the resume sidecar is rewritten while parts complete.
const SIDECAR_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A monotonic instant for throttling sidecar writes (no wall time is involved).
#[allow(clippy::disallowed_methods)]
fn monotonic_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Sidecar {
    key: String,
    etag: String,
    size: u64,
    part_size: u64,
    done: Vec<usize>,
    /// What the responses of the parts in `done` said of the object's encryption, so a resumed
    /// download is verified by the same rule as one made in a single run.
    #[serde(default)]
    encryption: plan::Encryption,
}

impl Sidecar {
    /// Whether `self` records a download of the same object version in the same parts.
    fn same_download(&self, other: &Self) -> bool {
        (&self.key, &self.etag, self.size, self.part_size)
            == (&other.key, &other.etag, other.size, other.part_size)
    }
}

/// The resume files of one object, by name inside its destination folder. The names are
/// predictable (derived from the key), so each is created with `O_EXCL | O_NOFOLLOW` after
/// removing whatever stands there, and opened with `O_NOFOLLOW`: a symlink planted at one of
/// them is removed or refused, never followed.
struct Names {
    folder: local::Folder,
    data: String,
    sidecar: String,
    sidecar_tmp: String,
}

fn names(folder: &local::Folder, key: &str) -> Names {
    let id = hex(&Md5::digest(key.as_bytes())[..8]);
    Names {
        folder: folder.clone(),
        data: format!(
            "{TEMP_PREFIX}{id}{}{}",
            RESUME_MARK.trim_end_matches('.'),
            TEMP_SUFFIX
        ),
        sidecar: format!("{TEMP_PREFIX}{id}{RESUME_MARK}json"),
        sidecar_tmp: format!("{TEMP_PREFIX}{id}{RESUME_MARK}json.tmp"),
    }
}

fn io(action: &'static str, path: PathBuf) -> impl FnOnce(std::io::Error) -> Error {
    move |source| {
        Error::Local(local::Error::Io {
            action,
            path,
            source,
        })
    }
}

impl Names {
    fn path(&self, name: &str) -> PathBuf {
        self.folder.display(name)
    }

    fn discard(&self) {
        let _ = self.folder.remove(&self.data);
        let _ = self.folder.remove(&self.sidecar);
    }

    /// A new, empty file at `name`, replacing whatever was there without following it.
    fn create_fresh(&self, name: &str) -> Result<std::fs::File, Error> {
        self.folder.remove(name)?;
        Ok(self.folder.create_new(name)?)
    }

    fn save(&self, side: &Sidecar) -> Result<(), Error> {
        use std::io::Write as _;
        let text = serde_json::to_vec(side).unwrap_or_default();
        let mut f = self.create_fresh(&self.sidecar_tmp)?;
        f.write_all(&text)
            .map_err(io("write", self.path(&self.sidecar_tmp)))?;
        drop(f);
        Ok(self.folder.rename(&self.sidecar_tmp, &self.sidecar)?)
    }

    fn load(&self) -> Option<Sidecar> {
        use std::io::Read as _;
        let mut f = self.folder.open_file(&self.sidecar, false).ok()??;
        let mut text = Vec::new();
        f.read_to_end(&mut text).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn open_data(&self, write: bool) -> Result<std::fs::File, Error> {
        self.folder
            .open_file(&self.data, write)?
            .ok_or_else(|| io("open", self.path(&self.data))(std::io::ErrorKind::NotFound.into()))
    }
}

/// Downloads `remote` into `dest` in `folder`, in parts of `part_size`, `parallel` at a time.
/// The file work runs on the blocking pool.
pub(super) async fn download(
    source: &Source,
    remote: &Remote,
    folder: &local::Folder,
    dest: &str,
    part_size: u64,
    parallel: usize,
    hooks: &Hooks,
) -> Result<LocalFile, Error> {
    let p = Arc::new(names(folder, &remote.key));
    // A full disk can surface in any write (a part, the sidecar, the commit): one mapping.
    download_into(source, remote, &p, dest, part_size, parallel, hooks)
        .await
        .map_err(|e| disk_full_or(remote, &p, e))
}

async fn download_into(
    source: &Source,
    remote: &Remote,
    p: &Arc<Names>,
    dest: &str,
    part_size: u64,
    parallel: usize,
    hooks: &Hooks,
) -> Result<LocalFile, Error> {
    let folder = &p.folder;
    let wanted = Sidecar {
        key: remote.key.clone(),
        etag: remote.etag.clone(),
        size: remote.size,
        part_size,
        done: Vec::new(),
        encryption: plan::Encryption::default(),
    };
    let (names, size, key) = (p.clone(), remote.size, remote.key.clone());
    let mut side = blocking(p.path(&p.data), move || {
        let previous = names.load();
        let data_len = names.folder.observe(&names.data).map(|f| f.size);
        match previous {
            Some(prev) if prev.same_download(&wanted) && data_len == Some(size) => {
                tracing::info!(key = %key, parts_done = prev.done.len(), "resuming an interrupted download");
                Ok(prev)
            }
            _ => {
                names.discard();
                let f = names.create_fresh(&names.data)?;
                f.set_len(size)
                    .map_err(io("allocate", names.path(&names.data)))?;
                names.save(&wanted)?;
                Ok(wanted)
            }
        }
    })
    .await?;
    let all = plan::parts(remote.size, part_size);
    let done_bytes: u64 = side
        .done
        .iter()
        .filter_map(|i| all.get(*i))
        .map(|(a, b)| b - a + 1)
        .sum();
    if let Some(progress) = &hooks.progress {
        progress.transferred(done_bytes);
    }
    let needed = remote.size - done_bytes + DISK_HEADROOM;
    if let Some(free) = folder.free_space() {
        if free < needed {
            return Err(Error::DiskFull {
                key: remote.key.clone(),
                needed,
                dir: folder.path().to_owned(),
                free: Some(free),
            });
        }
    }
    let done: std::collections::HashSet<usize> = side.done.iter().copied().collect();
    let mut todo: Vec<(usize, (u64, u64))> = all
        .iter()
        .copied()
        .enumerate()
        .filter(|(i, _)| !done.contains(i))
        .collect();
    drop(done);
    todo.reverse(); // pop() takes them in order
    let mut running: JoinSet<Result<(usize, plan::Encryption), Error>> = JoinSet::new();
    let mut last_save = monotonic_now();
    loop {
        while running.len() < parallel.max(1) {
            let Some((index, range)) = todo.pop() else {
                break;
            };
            let (source, remote, names, hooks) =
                (source.clone(), remote.clone(), p.clone(), hooks.clone());
            running.spawn(async move {
                // Closed only if the engine is gone; then the part simply runs.
                let _slot = hooks.part_slots.clone().acquire_owned().await.ok();
                fetch_part_with_retries(&source, &remote, &names, range, &hooks)
                    .await
                    .map(|enc| (index, enc))
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        match joined.map_err(|e| {
            Error::Local(local::Error::Io {
                action: "download a part of",
                path: p.path(&p.data),
                source: std::io::Error::other(e),
            })
        })? {
            Ok((index, enc)) => {
                side.encryption = side.encryption.or(enc);
                side.done.push(index);
                // The sidecar lists every part done: rewriting it for each part would cost
                // O(parts²). At most once a second (and at the end) loses at most a second of
                // parts to a crash; those are fetched again.
                if last_save.elapsed() >= SIDECAR_INTERVAL || todo.is_empty() {
                    let (names, snapshot) = (p.clone(), side.clone());
                    blocking(p.path(&p.sidecar), move || names.save(&snapshot)).await?;
                    last_save = monotonic_now();
                }
            }
            Err(e) => {
                running.shutdown().await;
                if matches!(e, Error::ChangedDuringSync { .. } | Error::Vanished { .. }) {
                    let names = p.clone();
                    let _ = tokio::task::spawn_blocking(move || names.discard()).await;
                }
                return Err(e);
            }
        }
    }
    if let Some(expected) = plan::expected_md5(&remote.etag, side.encryption) {
        let names = p.clone();
        let actual = blocking(p.path(&p.data), move || md5_file(&names)).await?;
        if actual != expected {
            let names = p.clone();
            let _ = tokio::task::spawn_blocking(move || names.discard()).await;
            return Err(Error::Corrupt {
                key: remote.key.clone(),
                expected: format!("MD5 {expected} (ETag)"),
                actual: format!("MD5 {actual}"),
            });
        }
    } else if let Some(checksum) = source
        .full_object_checksum(&remote.key, &remote.etag)
        .await?
    {
        // Multipart (or KMS) objects: the ETag says nothing of the data, but S3 may keep a
        // checksum of the whole object. Without this, only the length was checked.
        let names = p.clone();
        let algorithm = checksum.algorithm;
        let actual = blocking(p.path(&p.data), move || checksum_file(&names, algorithm)).await?;
        if actual != checksum.base64 {
            let names = p.clone();
            let _ = tokio::task::spawn_blocking(move || names.discard()).await;
            return Err(Error::Corrupt {
                key: remote.key.clone(),
                expected: format!("x-amz-checksum-{algorithm} {}", checksum.base64),
                actual: format!("x-amz-checksum-{algorithm} {actual}"),
            });
        }
    }
    let (names, dest, mtime) = (p.clone(), dest.to_owned(), remote.last_modified);
    let written = blocking(p.path(&p.data), move || {
        let file = names.open_data(true)?;
        let written = local::commit_file(
            &names.folder,
            file,
            &names.data,
            &dest,
            mtime,
            local::EntrySync::Now,
        )?;
        names.folder.remove(&names.sidecar)?;
        Ok(written)
    })
    .await?;
    Ok(written)
}

/// A write error that is the disk being full becomes [`Error::DiskFull`] with the numbers, as
/// on the single-GET path.
fn disk_full_or(remote: &Remote, names: &Names, e: Error) -> Error {
    match e {
        Error::Local(l) if local::is_disk_full(&l) => Error::DiskFull {
            key: remote.key.clone(),
            needed: remote.size + DISK_HEADROOM,
            dir: names.folder.path().to_owned(),
            free: names.folder.free_space(),
        },
        other => other,
    }
}

/// Runs file work on the blocking pool; `path` names it if the task dies.
async fn blocking<T: Send + 'static>(
    path: PathBuf,
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io("finish", path)(std::io::Error::other(e)))?
}

async fn fetch_part_with_retries(
    source: &Source,
    remote: &Remote,
    data: &Names,
    range: (u64, u64),
    hooks: &super::Hooks,
) -> Result<plan::Encryption, Error> {
    let mut attempt = 0;
    loop {
        match fetch_part(source, remote, data, range, hooks).await {
            Err(Error::ExpiredToken) if attempt + 1 < OBJECT_ATTEMPTS => {
                // Retrying with the same credentials would fail the same way.
                hooks.credentials.invalidate().await;
            }
            Err(e) if e.is_retryable() && attempt + 1 < OBJECT_ATTEMPTS => {
                let delay = OBJECT_BACKOFF.random_delay(attempt);
                tracing::debug!(key = %remote.key, ?range, error = %chain(&e), ?delay, "retrying part");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
        attempt += 1;
    }
}

async fn fetch_part(
    source: &Source,
    remote: &Remote,
    names: &Names,
    (start, end): (u64, u64),
    hooks: &super::Hooks,
) -> Result<plan::Encryption, Error> {
    let out = source
        .get_range(&remote.key, &remote.etag, start, end)
        .await?;
    let encryption = super::s3::encryption_of(&out);
    let data = names.path(&names.data);
    let opened = {
        let f = names.folder.clone();
        let name = names.data.clone();
        blocking(data.clone(), move || {
            f.open_file(&name, true)?
                .ok_or_else(|| io("open", f.display(&name))(std::io::ErrorKind::NotFound.into()))
        })
        .await?
    };
    let mut file = tokio::fs::File::from_std(opened);
    file.seek(SeekFrom::Start(start))
        .await
        .map_err(io("seek in", data.clone()))?;
    // One write buffer per part in flight (they are bounded by maxConcurrency): 256 KiB, not
    // 1 MiB, so 16 parts at once hold 4 MiB, not 16 MiB (bench/run, "ten").
    let mut file = tokio::io::BufWriter::with_capacity(local::WRITE_BUFFER, file);
    let mut body = out.body;
    let expected = end - start + 1;
    let mut shown = super::AttemptProgress::new(hooks.progress.as_ref());
    let mut received = 0u64;
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| body_error(&remote.key, &e))?
    {
        received += chunk.len() as u64;
        if received > expected {
            break;
        }
        if let Some(l) = &hooks.limiter {
            l.acquire(chunk.len()).await;
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| disk_full_or(remote, names, io("write", data.clone())(e)))?;
        shown.add(chunk.len() as u64);
    }
    if received != expected {
        return Err(Error::Truncated {
            key: format!("{} (bytes {start}-{end})", remote.key),
            expected,
            received,
        });
    }
    file.flush()
        .await
        .map_err(|e| disk_full_or(remote, names, io("write", data.clone())(e)))?;
    file.get_ref()
        .sync_data()
        .await
        .map_err(|e| disk_full_or(remote, names, io("sync", data)(e)))?;
    shown.keep();
    Ok(encryption)
}

/// Feeds the assembled data to `update` (blocking; read through the folder, never a symlink).
fn read_data(names: &Names, mut update: impl FnMut(&[u8])) -> Result<(), Error> {
    use std::io::Read as _;
    let path = names.path(&names.data);
    let mut f = names.open_data(false)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io("read", path.clone()))?;
        if n == 0 {
            return Ok(());
        }
        update(&buf[..n]);
    }
}

/// The MD5 of the assembled data, hex.
fn md5_file(names: &Names) -> Result<String, Error> {
    let mut hasher = Md5::new();
    read_data(names, |b| hasher.update(b))?;
    Ok(hex(&hasher.finalize()))
}

/// The `algorithm` checksum of the assembled data, base64 as S3 sends it.
fn checksum_file(names: &Names, algorithm: &str) -> Result<String, Error> {
    let algorithm: aws_smithy_checksums::ChecksumAlgorithm = algorithm.parse().map_err(|_| {
        io("verify", names.path(&names.data))(std::io::Error::other(format!(
            "unknown checksum algorithm {algorithm}"
        )))
    })?;
    let mut h = algorithm.into_impl();
    read_data(names, |b| h.update(b))?;
    Ok(aws_smithy_types::base64::encode(h.finalize()))
}
