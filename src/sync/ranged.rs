//! Large objects: parallel ranged GETs into a preallocated file, resumable after a crash.
//!
//! The data goes to `.gg-s3-sync.<id>.resume.part` next to the destination, and a sidecar
//! `.gg-s3-sync.<id>.resume.json` records the object version (ETag, size, part size) and the
//! parts written. A part is recorded only after it is fsynced, so after a crash, kill -9 or
//! SIGTERM the next attempt fetches only the missing parts. Every part is requested with
//! `If-Match: <ETag>`: if the object changes meanwhile, the partial data is discarded. Memory
//! stays bounded by the parts in flight, whatever the object's size.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::local;
use super::plan::{self, LocalFile, Remote, TEMP_PREFIX, TEMP_SUFFIX};
use super::s3::Source;
use super::{body_error, chain, hex, Error, Hooks, DISK_HEADROOM, OBJECT_ATTEMPTS, OBJECT_BACKOFF};

/// Marks resumable files, which the start-up sweep keeps.
pub(crate) const RESUME_MARK: &str = ".resume.";

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

struct Paths {
    data: PathBuf,
    sidecar: PathBuf,
}

fn paths(dir: &Path, key: &str) -> Paths {
    let id = hex(&Md5::digest(key.as_bytes())[..8]);
    Paths {
        data: dir.join(format!(
            "{TEMP_PREFIX}{id}{}{}",
            RESUME_MARK.trim_end_matches('.'),
            TEMP_SUFFIX
        )),
        sidecar: dir.join(format!("{TEMP_PREFIX}{id}{}json", RESUME_MARK)),
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| {
        Error::Local(local::Error::Io {
            action,
            path: path.to_owned(),
            source,
        })
    }
}

fn discard(p: &Paths) {
    let _ = std::fs::remove_file(&p.data);
    let _ = std::fs::remove_file(&p.sidecar);
}

fn save(p: &Paths, side: &Sidecar) -> Result<(), Error> {
    let tmp = p.sidecar.with_extension("json.tmp");
    let text = serde_json::to_vec(side).unwrap_or_default();
    std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &p.sidecar).map_err(io("rename", &p.sidecar))
}

/// Downloads `remote` into `dest` in parts of `part_size`, `parallel` at a time.
pub(super) async fn download(
    source: &Source,
    remote: &Remote,
    dest: &Path,
    part_size: u64,
    parallel: usize,
    hooks: &Hooks,
) -> Result<LocalFile, Error> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let p = paths(dir, &remote.key);
    let wanted = Sidecar {
        key: remote.key.clone(),
        etag: remote.etag.clone(),
        size: remote.size,
        part_size,
        done: Vec::new(),
        encryption: plan::Encryption::default(),
    };
    let previous: Option<Sidecar> = std::fs::read(&p.sidecar)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let data_len = std::fs::metadata(&p.data).map(|m| m.len()).ok();
    let mut side = match previous {
        Some(prev) if prev.same_download(&wanted) && data_len == Some(remote.size) => {
            tracing::info!(key = %remote.key, parts_done = prev.done.len(), "resuming an interrupted download");
            prev
        }
        _ => {
            discard(&p);
            let f = std::fs::File::create(&p.data).map_err(io("create", &p.data))?;
            f.set_len(remote.size).map_err(io("allocate", &p.data))?;
            save(&p, &wanted)?;
            wanted
        }
    };
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
    if let Some(free) = local::free_space(dir) {
        if free < needed {
            return Err(Error::DiskFull {
                key: remote.key.clone(),
                needed,
                dir: dir.to_owned(),
                free: Some(free),
            });
        }
    }
    let mut todo: Vec<(usize, (u64, u64))> = all
        .iter()
        .copied()
        .enumerate()
        .filter(|(i, _)| !side.done.contains(i))
        .collect();
    todo.reverse(); // pop() takes them in order
    let mut running: JoinSet<Result<(usize, plan::Encryption), Error>> = JoinSet::new();
    loop {
        while running.len() < parallel.max(1) {
            let Some((index, range)) = todo.pop() else {
                break;
            };
            let (source, remote, data, hooks) = (
                source.clone(),
                remote.clone(),
                p.data.clone(),
                hooks.clone(),
            );
            running.spawn(async move {
                fetch_part_with_retries(&source, &remote, &data, range, &hooks)
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
                path: p.data.clone(),
                source: std::io::Error::other(e),
            })
        })? {
            Ok((index, enc)) => {
                side.encryption = side.encryption.or(enc);
                side.done.push(index);
                save(&p, &side)?;
            }
            Err(e) => {
                running.shutdown().await;
                if matches!(e, Error::ChangedDuringSync { .. } | Error::Vanished { .. }) {
                    discard(&p);
                }
                return Err(e);
            }
        }
    }
    if let Some(expected) = plan::expected_md5(&remote.etag, side.encryption) {
        let actual = md5_file(&p.data).await?;
        if actual != expected {
            discard(&p);
            return Err(Error::Corrupt {
                key: remote.key.clone(),
                expected: format!("MD5 {expected} (ETag)"),
                actual: format!("MD5 {actual}"),
            });
        }
    }
    let (data, dest_owned, mtime) = (p.data.clone(), dest.to_owned(), remote.last_modified);
    let finished = tokio::task::spawn_blocking(move || -> Result<LocalFile, Error> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&data)
            .map_err(io("open", &data))?;
        if let Some(t) = mtime {
            f.set_modified(t)
                .map_err(io("set the modification time of", &data))?;
        }
        f.sync_all().map_err(io("sync", &data))?;
        std::fs::rename(&data, &dest_owned).map_err(io("rename into place", &dest_owned))?;
        if let Some(parent) = dest_owned.parent() {
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io("sync folder", parent))?;
        }
        local::observe(&dest_owned)
            .ok_or_else(|| io("read back", &dest_owned)(std::io::ErrorKind::NotFound.into()))
    })
    .await
    .map_err(|e| io("finish", &p.data)(std::io::Error::other(e)))?;
    let _ = std::fs::remove_file(&p.sidecar);
    finished
}

async fn fetch_part_with_retries(
    source: &Source,
    remote: &Remote,
    data: &Path,
    range: (u64, u64),
    hooks: &super::Hooks,
) -> Result<plan::Encryption, Error> {
    let mut attempt = 0;
    loop {
        match fetch_part(source, remote, data, range, hooks).await {
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
    data: &Path,
    (start, end): (u64, u64),
    hooks: &super::Hooks,
) -> Result<plan::Encryption, Error> {
    let out = source
        .get_range(&remote.key, &remote.etag, start, end)
        .await?;
    let encryption = super::s3::encryption_of(&out);
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(data)
        .await
        .map_err(io("open", data))?;
    file.seek(SeekFrom::Start(start))
        .await
        .map_err(io("seek in", data))?;
    let mut file = tokio::io::BufWriter::with_capacity(4 * local::WRITE_BUFFER, file);
    let mut body = out.body;
    let expected = end - start + 1;
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
        file.write_all(&chunk).await.map_err(io("write", data))?;
        if let Some(p) = &hooks.progress {
            p.transferred(chunk.len() as u64);
        }
    }
    if received != expected {
        return Err(Error::Truncated {
            key: format!("{} (bytes {start}-{end})", remote.key),
            expected,
            received,
        });
    }
    file.flush().await.map_err(io("write", data))?;
    file.get_ref().sync_data().await.map_err(io("sync", data))?;
    Ok(encryption)
}

async fn md5_file(path: &Path) -> Result<String, Error> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(io("open", path))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await.map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}
