//! Atomic content releases (`releases: {keep: N}`): `localDir` is a symbolic link to a complete,
//! verified release folder in the releases folder, and a pass that changes something builds
//! the next release in `.staging` (unchanged files hard-linked from the live release) and
//! switches the link with one `rename(2)`.
//!
//! Layout of the releases folder (default `.<localDir name>.releases` beside `localDir`):
//! - `<id>/`: a release tree (files read-only); `<id>.json`: its record ([`Meta`]): digest,
//!   counts, and the state records of its files, so a rollback knows what it holds.
//! - `.staging/`: the release being built; `.staging.base`: the live release it was cloned
//!   from (a staging folder built on another release is abandoned and removed).
//! - `current.json`: the switches (when each release went live) and a rollback's hold.
//!
//! Order of durable steps (kill -9 at any point leaves the link on a complete release): the
//! staged files are synced as they are written; at the end every folder of the staging tree is
//! synced, the record `<id>.json` written (temporary file, fsync, rename), `.staging` renamed to
//! `<id>`, the releases folder synced; then a new link is made under a temporary name and
//! renamed over `localDir`, and `localDir`'s folder synced. Only then is `current.json`
//! written. The decisions are in [`decide`] (pure).

pub mod decide;

use std::io::{self, Write as _};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode};
use serde::{Deserialize, Serialize};

use super::local::{self, Folder, Modes};
use super::plan::{self, KeyVerdict, Recorded, RelPath};

/// The staging folder's name in the releases folder.
pub const STAGING: &str = ".staging";
const STAGING_BASE: &str = ".staging.base";
const CURRENT: &str = "current.json";
/// Switches remembered in `current.json`.
const HISTORY: usize = 20;
/// A release's files are read-only unless `fileMode` says otherwise.
pub const DEFAULT_FILE_MODE: u32 = 0o444;

/// Release failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system call failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The releases folder is on another file system than `localDir`.
    #[error("releases.dir {} is not on the file system of localDir's folder {}: a release cannot be switched in with one rename; choose releases.dir on the same file system (default: beside localDir)", releases.display(), parent.display())]
    OtherFileSystem {
        /// The releases folder.
        releases: PathBuf,
        /// `localDir`'s folder.
        parent: PathBuf,
    },
    /// `localDir` is something the component will not replace.
    #[error("localDir {} is {found}; with releases on, localDir must be missing, a folder, or a link to a release in {}: move it away", path.display(), releases.display())]
    LocalDirTaken {
        /// `localDir`.
        path: PathBuf,
        /// What it is.
        found: String,
        /// The releases folder.
        releases: PathBuf,
    },
    /// The file system cannot hold releases (no hard links or symbolic links: vfat, exfat).
    #[error("the file system of {} cannot {what} (vfat and exfat cannot): releases need ext4, xfs, btrfs or f2fs; move localDir and releases.dir to such a file system, or turn releases off", path.display())]
    Unsupported {
        /// Where it was tried.
        path: PathBuf,
        /// What it cannot do.
        what: &'static str,
    },
    /// A releases command for a configuration without releases.
    #[error(
        "releases are off in this configuration; set releases: {{keep: N}} (see docs/releases.md)"
    )]
    Off,
    /// Nothing kept to roll back to.
    #[error("no release before {live} is kept in {}; nothing to roll back to (keep more with releases.keep)", releases.display())]
    NoPrevious {
        /// The live release (or "none").
        live: String,
        /// The releases folder.
        releases: PathBuf,
    },
    /// No such release to roll back to.
    #[error("release '{id}' is not kept in {}; kept releases: {}", releases.display(), if kept.is_empty() { "none".to_owned() } else { kept.join(", ") })]
    UnknownRelease {
        /// Asked for.
        id: String,
        /// The releases folder.
        releases: PathBuf,
        /// What is there.
        kept: Vec<String>,
    },
    /// Folder descriptor work.
    #[error(transparent)]
    Local(#[from] local::Error),
}

fn io_at(action: &'static str, path: PathBuf) -> impl FnOnce(rustix::io::Errno) -> Error {
    move |e| Error::Io {
        action,
        path,
        source: e.into(),
    }
}

/// A link the file system refuses to make at all, named as such; other failures as I/O.
/// vfat answers EPERM; a FUSE file system without the operation ENOSYS or, through fusepy's
/// defaults, EROFS (the folder was just written, so it is not read-only).
fn link_err(
    what: &'static str,
    action: &'static str,
    path: PathBuf,
) -> impl FnOnce(rustix::io::Errno) -> Error {
    move |e| match e {
        rustix::io::Errno::PERM
        | rustix::io::Errno::OPNOTSUPP
        | rustix::io::Errno::NOSYS
        | rustix::io::Errno::ROFS => Error::Unsupported { path, what },
        other => io_at(action, path)(other),
    }
}

/// One file of a release, as the state records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MetaRecord {
    /// Object key.
    pub k: String,
    /// ETag or pinned tag.
    pub e: String,
    /// Size.
    pub s: u64,
    /// Modification time (ns).
    pub m: i128,
}

/// A release's record, `<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// Release id.
    pub id: String,
    /// [`decide::tree_digest`].
    pub tree_digest: String,
    /// Files.
    pub files: u64,
    /// Bytes.
    pub bytes: u64,
    /// When it was built (RFC 3339).
    pub created_at: String,
    /// The pinned manifest's SHA-256, when the release is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// Its files.
    pub records: Vec<MetaRecord>,
}

/// When a release went live.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Switch {
    /// Release id.
    pub id: String,
    /// RFC 3339.
    pub at: String,
}

/// A rollback's hold: the content turned away from is not switched to again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hold {
    /// Tree digest of the release rolled back from.
    pub digest: String,
    /// The release rolled back to.
    pub to: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Current {
    #[serde(default)]
    switches: Vec<Switch>,
    #[serde(default)]
    hold: Option<Hold>,
}

/// What `localDir` is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    /// Nothing yet.
    Missing,
    /// A link to this release.
    Release(String),
    /// A real folder (from before releases were turned on): adopted at the first switch.
    Folder,
}

/// The releases folder of one `localDir`.
#[derive(Debug, Clone)]
pub struct Releases {
    parent: Folder,
    link_name: String,
    local_dir: PathBuf,
    dir: Folder,
    dir_path: PathBuf,
    keep: usize,
    file_mode: u32,
    dir_modes: Modes,
}

impl Releases {
    /// Opens the releases folder `dir` for `local_dir`, creating it (and `localDir`'s folder)
    /// if `create`; `None` when it does not exist and `create` is off (nothing synced yet).
    ///
    /// # Errors
    /// [`Error::OtherFileSystem`], or I/O.
    pub fn open(
        local_dir: &Path,
        dir: &Path,
        keep: usize,
        modes: Modes,
        create: bool,
    ) -> Result<Option<Self>, Error> {
        let parent_path = local_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        let link_name = local_dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::LocalDirTaken {
                path: local_dir.to_owned(),
                found: "a path without a file name".into(),
                releases: dir.to_owned(),
            })?
            .to_owned();
        let exists = dir.is_dir() && parent_path.is_dir();
        if !create && !exists {
            return Ok(None);
        }
        std::fs::create_dir_all(&parent_path).map_err(|source| Error::Io {
            action: "create the folder of localDir",
            path: parent_path.clone(),
            source,
        })?;
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            action: "create releases.dir",
            path: dir.to_owned(),
            source,
        })?;
        let parent = Folder::open_root(&parent_path)?;
        let folder = Folder::open_root_with(dir, modes)?;
        let dev = |f: &Folder| rustix::fs::fstat(f.as_fd()).map(|s| s.st_dev).ok();
        if dev(&parent) != dev(&folder) {
            return Err(Error::OtherFileSystem {
                releases: dir.to_owned(),
                parent: parent_path,
            });
        }
        Ok(Some(Self {
            parent,
            link_name,
            local_dir: local_dir.to_owned(),
            dir: folder,
            dir_path: dir.to_owned(),
            keep: keep.max(1),
            file_mode: modes.file.unwrap_or(DEFAULT_FILE_MODE),
            dir_modes: Modes {
                file: None,
                dir: modes.dir,
            },
        }))
    }

    /// The releases folder.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.dir_path
    }

    /// Whether the releases' file system tells `a` from `A` (see [`Folder::is_case_insensitive`]).
    ///
    /// # Errors
    /// I/O.
    pub fn is_case_insensitive(&self) -> Result<bool, Error> {
        // Read-only once an entry with letters exists (a release id, current.json).
        Ok(self.dir.is_case_insensitive()?)
    }

    /// What `localDir` is.
    ///
    /// # Errors
    /// [`Error::LocalDirTaken`] for a file or a link elsewhere.
    pub fn live(&self) -> Result<Live, Error> {
        match rustix::fs::readlinkat(self.parent.as_fd(), self.link_name.as_str(), Vec::new()) {
            Ok(target) => {
                let target = PathBuf::from(
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                        target.as_bytes(),
                    ),
                );
                match decide::id_of_target(&target, self.parent.path(), &self.dir_path) {
                    Some(id) if self.dir.stat(&id).is_some() => Ok(Live::Release(id)),
                    // Our link, to a release someone removed: build a new one over it.
                    Some(id) => {
                        tracing::warn!(release = %id, "localDir points at a release that is gone; a new one is built");
                        Ok(Live::Missing)
                    }
                    None => Err(Error::LocalDirTaken {
                        path: self.local_dir.clone(),
                        found: format!("a link to {}", target.display()),
                        releases: self.dir_path.clone(),
                    }),
                }
            }
            Err(rustix::io::Errno::NOENT) => Ok(Live::Missing),
            Err(rustix::io::Errno::INVAL) => match self.parent.stat(&self.link_name) {
                Some(st)
                    if rustix::fs::FileType::from_raw_mode(st.st_mode)
                        == rustix::fs::FileType::Directory =>
                {
                    Ok(Live::Folder)
                }
                _ => Err(Error::LocalDirTaken {
                    path: self.local_dir.clone(),
                    found: "a file".into(),
                    releases: self.dir_path.clone(),
                }),
            },
            Err(e) => Err(io_at("read the link", self.local_dir.clone())(e)),
        }
    }

    /// The live release's id, if `localDir` is a release.
    ///
    /// # Errors
    /// As [`Releases::live`].
    pub fn live_id(&self) -> Result<Option<String>, Error> {
        Ok(match self.live()? {
            Live::Release(id) => Some(id),
            _ => None,
        })
    }

    /// Opens a kept release's tree.
    ///
    /// # Errors
    /// I/O, or [`Error::UnknownRelease`].
    pub fn open_release(&self, id: &str) -> Result<Folder, Error> {
        if decide::is_release_id(id) {
            if let Some(f) = self.dir.subfolder(id, false)? {
                return Ok(f);
            }
        }
        Err(self.unknown(id))
    }

    /// `localDir` itself opened as a folder (a real folder being adopted).
    ///
    /// # Errors
    /// I/O.
    pub fn open_local_folder(&self) -> Result<Option<Folder>, Error> {
        Ok(self.parent.subfolder(&self.link_name, false)?)
    }

    fn unknown(&self, id: &str) -> Error {
        Error::UnknownRelease {
            id: id.to_owned(),
            releases: self.dir_path.clone(),
            kept: self.ids(),
        }
    }

    /// Release ids in the folder, oldest first.
    #[must_use]
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .dir
            .entries()
            .unwrap_or_default()
            .into_iter()
            .filter(|(name, is_dir, _)| *is_dir && decide::is_release_id(name))
            .map(|(name, _, _)| name)
            .collect();
        ids.sort_unstable_by_key(|i| (decide::seq_of(i), i.clone()));
        ids
    }

    /// The next sequence number.
    #[must_use]
    pub fn next_seq(&self) -> u64 {
        let used = self.ids().iter().filter_map(|i| decide::seq_of(i)).max();
        let recorded = self
            .current()
            .switches
            .iter()
            .filter_map(|s| decide::seq_of(&s.id))
            .max();
        used.max(recorded).map_or(1, |n| n + 1)
    }

    /// A release's record.
    #[must_use]
    pub fn meta(&self, id: &str) -> Option<Meta> {
        let f = self.dir.open_file(&format!("{id}.json"), false).ok()??;
        serde_json::from_reader(io::BufReader::new(f)).ok()
    }

    /// The staging folder, if a pass left one built on `live` (one built on another release is
    /// removed).
    ///
    /// # Errors
    /// I/O.
    pub fn reusable_staging(&self, live: Option<&str>) -> Result<Option<Folder>, Error> {
        if let Some(staging) = self.reusable_staging_read_only(live)? {
            return Ok(Some(staging));
        }
        if self.dir.stat(STAGING).is_some() {
            tracing::info!(live = ?live, "removing a staging folder built on another release");
            self.remove_staging()?;
        }
        Ok(None)
    }

    /// As [`Releases::reusable_staging`], removing nothing (dry runs).
    ///
    /// # Errors
    /// I/O.
    pub fn reusable_staging_read_only(&self, live: Option<&str>) -> Result<Option<Folder>, Error> {
        let base = self
            .dir
            .open_file(STAGING_BASE, false)?
            .and_then(|f| io::read_to_string(f).ok());
        if base.as_deref().map(str::trim) != Some(live.unwrap_or("")) {
            return Ok(None);
        }
        Ok(self.dir.subfolder(STAGING, false)?)
    }

    /// A new, empty staging folder built on `live`.
    ///
    /// # Errors
    /// I/O.
    pub fn create_staging(&self, live: Option<&str>) -> Result<Folder, Error> {
        self.remove_staging()?;
        self.write_small(STAGING_BASE, live.unwrap_or("").as_bytes())?;
        let staging = self
            .dir
            .subfolder(STAGING, true)?
            .ok_or_else(|| self.missing(STAGING))?;
        // Downloads get the umask's bits while written; `finalize` sets the release's.
        Ok(Folder::open_root_with(staging.path(), self.dir_modes)?)
    }

    fn missing(&self, name: &str) -> Error {
        Error::Io {
            action: "open",
            path: self.dir_path.join(name),
            source: io::ErrorKind::NotFound.into(),
        }
    }

    /// Removes the staging folder, if any.
    ///
    /// # Errors
    /// I/O.
    pub fn remove_staging(&self) -> Result<(), Error> {
        remove_tree(&self.dir, STAGING)?;
        self.dir.remove(STAGING_BASE)?;
        Ok(())
    }

    /// Hard-links every file of `entries` that is intact in `from` (size and time as recorded)
    /// into `to`. Returns the keys linked; the others are downloaded again.
    ///
    /// # Errors
    /// I/O.
    pub fn link_unchanged(
        from: &Folder,
        to: &Folder,
        entries: &[(String, RelPath, Recorded)],
    ) -> Result<Vec<String>, Error> {
        let mut linked = Vec::with_capacity(entries.len());
        for (key, rel, rec) in entries {
            let Some((src, name)) = from.parent_of(rel, false).ok().flatten() else {
                continue;
            };
            let intact = src
                .observe(name)
                .is_some_and(|l| l.size == rec.size && l.mtime_ns == rec.mtime_ns);
            if !intact {
                continue;
            }
            let (dst, dst_name) = local::prepare_destination(to, rel)?;
            match rustix::fs::linkat(src.as_fd(), name, dst.as_fd(), dst_name, AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => linked.push(key.clone()),
                Err(e) => {
                    return Err(link_err("make hard links", "link", dst.display(dst_name))(
                        e,
                    ))
                }
            }
        }
        Ok(linked)
    }

    /// Makes the staged tree durable and read-only, writes its record, and renames it to
    /// `meta.id`.
    ///
    /// # Errors
    /// I/O.
    pub fn finalize(&self, staging: &Folder, meta: &Meta) -> Result<(), Error> {
        seal_tree(staging, self.file_mode)?;
        let text = serde_json::to_vec(meta).map_err(|e| Error::Io {
            action: "encode",
            path: self.dir_path.join(format!("{}.json", meta.id)),
            source: io::Error::other(e),
        })?;
        self.write_small(&format!("{}.json", meta.id), &text)?;
        rustix::fs::renameat(
            self.dir.as_fd(),
            STAGING,
            self.dir.as_fd(),
            meta.id.as_str(),
        )
        .map_err(io_at(
            "rename the staged release to",
            self.dir_path.join(&meta.id),
        ))?;
        self.dir.remove(STAGING_BASE)?;
        self.dir.sync()?;
        Ok(())
    }

    /// Points `localDir` at release `id` with one rename, syncs, and records the switch at
    /// `now` (RFC 3339). A real folder at `localDir` is moved into the releases folder as
    /// `adopted-<time>` (kept; never removed by retention).
    ///
    /// # Errors
    /// I/O.
    pub fn switch(&self, id: &str, now: &str, hold: Option<Hold>) -> Result<(), Error> {
        let live = self.live()?;
        let tmp = format!(".{}.switch", self.link_name);
        let target = decide::link_target(self.parent.path(), &self.dir_path, id);
        let _ = self.parent.remove(&tmp);
        rustix::fs::symlinkat(target.as_path(), self.parent.as_fd(), tmp.as_str()).map_err(
            link_err(
                "make symbolic links",
                "create the link",
                self.parent.display(&tmp),
            ),
        )?;
        if live == Live::Folder {
            // A folder cannot be renamed over: exchange the two names in one call, so
            // `localDir` is never missing.
            rustix::fs::renameat_with(
                self.parent.as_fd(),
                tmp.as_str(),
                self.parent.as_fd(),
                self.link_name.as_str(),
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(io_at("switch the link", self.local_dir.clone()))?;
            let adopted = format!("adopted-{}", now.replace(':', ""));
            if !self.parent.remove_empty_folder(&tmp)? {
                rustix::fs::renameat(
                    self.parent.as_fd(),
                    tmp.as_str(),
                    self.dir.as_fd(),
                    adopted.as_str(),
                )
                .map_err(io_at(
                    "move the old localDir to",
                    self.dir_path.join(&adopted),
                ))?;
                tracing::warn!(kept = %self.dir_path.join(&adopted).display(), "localDir was a folder: it is kept in the releases folder; remove it when no longer needed");
                self.dir.sync()?;
            }
        } else {
            rustix::fs::renameat(
                self.parent.as_fd(),
                tmp.as_str(),
                self.parent.as_fd(),
                self.link_name.as_str(),
            )
            .map_err(io_at("switch the link", self.local_dir.clone()))?;
        }
        self.parent.sync()?;
        let mut current = self.current();
        current.switches.push(Switch {
            id: id.to_owned(),
            at: now.to_owned(),
        });
        let excess = current.switches.len().saturating_sub(HISTORY);
        current.switches.drain(..excess);
        current.hold = hold;
        self.write_current(&current)?;
        Ok(())
    }

    /// The hold a rollback set, if any.
    #[must_use]
    pub fn hold(&self) -> Option<Hold> {
        self.current().hold
    }

    /// When each release went live, oldest first.
    #[must_use]
    pub fn switches(&self) -> Vec<Switch> {
        self.current().switches
    }

    fn current(&self) -> Current {
        self.dir
            .open_file(CURRENT, false)
            .ok()
            .flatten()
            .and_then(|f| serde_json::from_reader(io::BufReader::new(f)).ok())
            .unwrap_or_default()
    }

    fn write_current(&self, c: &Current) -> Result<(), Error> {
        let text = serde_json::to_vec_pretty(c).map_err(|e| Error::Io {
            action: "encode",
            path: self.dir_path.join(CURRENT),
            source: io::Error::other(e),
        })?;
        self.write_small(CURRENT, &text)
    }

    /// Writes `name` in the releases folder: temporary file, fsync, rename, folder fsync.
    fn write_small(&self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        let tmp = format!("{name}.tmp");
        let _ = self.dir.remove(&tmp);
        let mut f = self.dir.create_new(&tmp)?;
        let path = self.dir_path.join(name);
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|source| Error::Io {
                action: "write",
                path: path.clone(),
                source,
            })?;
        drop(f);
        self.dir.rename(&tmp, name)?;
        self.dir.sync()?;
        Ok(())
    }

    /// Removes all but the newest `keep` releases (never `live`), their records, records
    /// without a release, and leftover temporary files. Returns the ids removed.
    ///
    /// # Errors
    /// I/O.
    pub fn retain(&self, live: Option<&str>) -> Result<Vec<String>, Error> {
        let ids = self.ids();
        let mut gone = decide::to_remove(&ids, live, self.keep);
        // A release whose record is gone was being removed when the process died: finish.
        for id in &ids {
            let recorded = self.dir.stat(&format!("{id}.json")).is_some();
            if !recorded && Some(id.as_str()) != live && !gone.contains(id) {
                gone.push(id.clone());
            }
        }
        for id in &gone {
            // The record first: a folder without a record is not offered for rollback.
            self.dir.remove(&format!("{id}.json"))?;
            remove_tree(&self.dir, id)?;
        }
        for (name, _, is_file) in self.dir.entries()? {
            let orphan = name
                .strip_suffix(".json")
                .is_some_and(|id| decide::is_release_id(id) && !ids.iter().any(|i| i == id));
            if is_file && (orphan || name.ends_with(".tmp")) {
                self.dir.remove(&name)?;
            }
        }
        if !gone.is_empty() {
            self.dir.sync()?;
        }
        Ok(gone)
    }
}

/// The records of a release, for the state store.
#[must_use]
pub fn records_of(meta: &Meta) -> Vec<(String, Recorded)> {
    meta.records
        .iter()
        .map(|r| {
            (
                r.k.clone(),
                Recorded {
                    etag: r.e.clone(),
                    size: r.s,
                    mtime_ns: r.m,
                },
            )
        })
        .collect()
}

/// The entries of `records` that map to a path under `prefix`.
#[must_use]
pub fn with_paths(
    records: Vec<(String, Recorded)>,
    prefix: &str,
) -> Vec<(String, RelPath, Recorded)> {
    records
        .into_iter()
        .filter_map(|(k, r)| match plan::map_key(&k, prefix, r.size.max(1)) {
            KeyVerdict::Path(rel) => Some((k, rel, r)),
            _ => None,
        })
        .collect()
}

/// Every regular file gets `file_mode` (synced when changed), every folder is synced.
fn seal_tree(root: &Folder, file_mode: u32) -> Result<(), Error> {
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for (name, is_dir, is_file) in dir.entries()? {
            if is_dir {
                if let Some(sub) = dir.subfolder(&name, false)? {
                    stack.push(sub);
                }
            } else if is_file && name.starts_with(plan::TEMP_PREFIX) {
                // A resumable part of an object that went away, or a crash's leftover: not
                // part of the release.
                dir.remove(&name)?;
            } else if is_file {
                let Some(st) = dir.stat(&name) else { continue };
                if st.st_mode & 0o7777 != file_mode {
                    let f = dir.open_file(&name, false)?.ok_or_else(|| {
                        io_at("open", dir.display(&name))(rustix::io::Errno::NOENT)
                    })?;
                    rustix::fs::fchmod(&f, Mode::from_raw_mode(file_mode))
                        .map_err(io_at("set the mode of", dir.display(&name)))?;
                    f.sync_all().map_err(|source| Error::Io {
                        action: "sync",
                        path: dir.display(&name),
                        source,
                    })?;
                }
            }
        }
        dir.sync()?;
    }
    Ok(())
}

/// Removes the folder `name` in `parent` and everything below it, through folder descriptors
/// (a symlink inside is removed, never followed).
fn remove_tree(parent: &Folder, name: &str) -> Result<(), Error> {
    match parent.subfolder(name, false) {
        Ok(Some(dir)) => {
            for (entry, is_dir, _) in dir.entries()? {
                if is_dir {
                    remove_tree(&dir, &entry)?;
                } else {
                    dir.remove(&entry)?;
                }
            }
            parent.remove_empty_folder(name)?;
        }
        Ok(None) => {}
        // A file or a link where a folder was expected: remove the entry itself.
        Err(local::Error::Symlink { .. } | local::Error::Conflict { .. }) => {
            parent.remove(name)?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
