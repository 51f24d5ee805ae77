//! The sync state: for every file the component wrote, the object version it came from.
//!
//! Stored as an append-only log of JSON lines (`{"k":key,"e":etag,"s":size,"m":mtime_ns}`, or
//! `{"k":key,"d":1}` when forgotten), replayed at start-up and compacted (snapshot written to a
//! temporary file, fsynced, renamed over the log) when it has grown to twice the live entries.
//! Recording an object costs one appended line, never a rewrite.
//!
//! Crash safety: a line is appended only after its file was renamed into place, so the log
//! never claims a file that is not there; a crash can lose the newest lines (those files are
//! then compared again and downloaded once more) or leave a torn last line (ignored).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plan::Recorded;

/// Compaction happens when the log has this many more lines than live entries, at least.
const MIN_GARBAGE_LINES: usize = 1024;

/// State-store failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a state file.
    #[error("cannot {action} sync state file {}; check stateDir", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct Line {
    k: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<i128>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<u8>,
}

impl Line {
    fn record(key: &str, r: &Recorded) -> Self {
        Self {
            k: key.to_owned(),
            e: Some(r.etag.clone()),
            s: Some(r.size),
            m: Some(r.mtime_ns),
            d: None,
        }
    }
}

/// An ETag as stored: 16 bytes for the usual MD5 hex, the text otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Etag {
    Md5([u8; 16]),
    Text(Box<str>),
}

impl Etag {
    fn new(s: &str) -> Self {
        let lower = s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if lower {
            let mut out = [0u8; 16];
            for (i, pair) in s.as_bytes().chunks(2).enumerate() {
                let hex = |c: u8| {
                    if c.is_ascii_digit() {
                        c - b'0'
                    } else {
                        c - b'a' + 10
                    }
                };
                out[i] = hex(pair[0]) << 4 | hex(pair[1]);
            }
            return Self::Md5(out);
        }
        Self::Text(s.into())
    }

    fn text(&self) -> String {
        match self {
            Self::Md5(b) => super::hex(b),
            Self::Text(t) => t.to_string(),
        }
    }
}

/// What is kept in memory per object (about half the size of a [`Recorded`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    etag: Etag,
    size: u64,
    mtime_ns: i128,
}

impl Entry {
    fn new(r: &Recorded) -> Self {
        Self {
            etag: Etag::new(&r.etag),
            size: r.size,
            mtime_ns: r.mtime_ns,
        }
    }

    fn recorded(&self) -> Recorded {
        Recorded {
            etag: self.etag.text(),
            size: self.size,
            mtime_ns: self.mtime_ns,
        }
    }
}

/// The state of one (bucket, prefix, localDir) triple.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    entries: HashMap<Box<str>, Entry>,
    /// `None` when opened read-only (a dry run writes nothing, not even the folder).
    log: Option<BufWriter<File>>,
    lines: usize,
}

impl StateStore {
    /// Opens (or creates) `dir/<name>`, replaying its log.
    ///
    /// # Errors
    /// [`Error::Io`] if the folder or file cannot be created, read or opened for appending.
    pub fn open(dir: &Path, name: &str) -> Result<Self, Error> {
        Self::open_with(dir, name, false)
    }

    /// Reads the state without creating, appending to or compacting anything (dry runs).
    ///
    /// # Errors
    /// [`Error::Io`] if an existing log cannot be read.
    pub fn open_read_only(dir: &Path, name: &str) -> Result<Self, Error> {
        Self::open_with(dir, name, true)
    }

    fn open_with(dir: &Path, name: &str, read_only: bool) -> Result<Self, Error> {
        let path = dir.join(name);
        let io_err = |action, source| Error::Io {
            action,
            path: path.clone(),
            source,
        };
        if !read_only {
            fs::create_dir_all(dir).map_err(|e| io_err("create the folder of", e))?;
        }
        let mut entries = HashMap::new();
        let mut lines = 0;
        let mut skipped = 0;
        match File::open(&path) {
            Ok(f) => {
                for line in BufReader::new(f).split(b'\n') {
                    let line = line.map_err(|e| io_err("read", e))?;
                    if line.is_empty() {
                        continue;
                    }
                    lines += 1;
                    match serde_json::from_slice::<Line>(&line) {
                        Ok(Line { k, d: Some(_), .. }) => {
                            entries.remove(k.as_str());
                        }
                        Ok(Line {
                            k,
                            e: Some(etag),
                            s: Some(size),
                            m: Some(mtime_ns),
                            ..
                        }) => {
                            entries.insert(
                                k.into_boxed_str(),
                                Entry {
                                    etag: Etag::new(&etag),
                                    size,
                                    mtime_ns,
                                },
                            );
                        }
                        // A torn line from a crash, or damage: those objects are compared anew.
                        Ok(_) | Err(_) => skipped += 1,
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("read", e)),
        }
        if skipped > 0 {
            tracing::warn!(path = %path.display(), skipped, "ignored unreadable lines in the sync state (those objects will be compared again)");
        }
        let log = if read_only {
            None
        } else {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_err("open", e))?;
            Some(BufWriter::new(file))
        };
        let mut store = Self {
            path,
            entries,
            log,
            lines,
        };
        if skipped > 0 && !read_only {
            // Rewrite so a torn line is not followed by new ones on the same line.
            store.compact()?;
        }
        Ok(store)
    }

    /// The state file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was recorded for `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<Recorded> {
        self.entries.get(key).map(Entry::recorded)
    }

    /// Every recorded key.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|k| &**k)
    }

    /// Number of recorded objects.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every record (for a release's record of its files).
    #[must_use]
    pub fn records(&self) -> Vec<(String, Recorded)> {
        self.entries
            .iter()
            .map(|(k, e)| (k.to_string(), e.recorded()))
            .collect()
    }

    /// Replaces every record with `records` (the files of the release now live) and rewrites
    /// the log as one durable snapshot.
    ///
    /// # Errors
    /// [`Error::Io`] if the snapshot cannot be written.
    pub fn replace_all(&mut self, records: Vec<(String, Recorded)>) -> Result<(), Error> {
        self.entries = records
            .into_iter()
            .map(|(k, r)| (k.into_boxed_str(), Entry::new(&r)))
            .collect();
        if let Some(log) = self.log.as_mut() {
            log.flush().map_err(|source| Error::Io {
                action: "flush",
                path: self.path.clone(),
                source,
            })?;
            self.compact()?;
        }
        Ok(())
    }

    /// Records that `key` was written; call after the file is in place.
    ///
    /// # Errors
    /// [`Error::Io`] if the line cannot be appended.
    pub fn record(&mut self, key: &str, rec: Recorded) -> Result<(), Error> {
        self.append(&Line::record(key, &rec))?;
        self.entries.insert(key.into(), Entry::new(&rec));
        Ok(())
    }

    /// Forgets `key` (its file was removed or replaced by something else).
    ///
    /// # Errors
    /// [`Error::Io`] if the line cannot be appended.
    pub fn forget(&mut self, key: &str) -> Result<(), Error> {
        if self.entries.remove(key).is_some() {
            self.append(&Line {
                k: key.to_owned(),
                e: None,
                s: None,
                m: None,
                d: Some(1),
            })?;
        }
        Ok(())
    }

    fn append(&mut self, line: &Line) -> Result<(), Error> {
        let mut buf = serde_json::to_vec(line).map_err(|e| Error::Io {
            action: "encode",
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        buf.push(b'\n');
        let Some(log) = self.log.as_mut() else {
            return Err(Error::Io {
                action: "append to",
                path: self.path.clone(),
                source: io::Error::other("opened read-only for a dry run"),
            });
        };
        log.write_all(&buf).map_err(|source| Error::Io {
            action: "append to",
            path: self.path.clone(),
            source,
        })?;
        self.lines += 1;
        Ok(())
    }

    /// Makes everything recorded so far durable, compacting the log if it has grown.
    ///
    /// # Errors
    /// [`Error::Io`] if flushing, syncing or compacting fails.
    pub fn commit(&mut self) -> Result<(), Error> {
        let io_err = |action, source| Error::Io {
            action,
            path: self.path.clone(),
            source,
        };
        let Some(log) = self.log.as_mut() else {
            return Ok(()); // read-only: nothing to make durable
        };
        log.flush().map_err(|e| io_err("flush", e))?;
        log.get_ref().sync_data().map_err(|e| io_err("sync", e))?;
        if self.lines > 2 * self.entries.len() + MIN_GARBAGE_LINES {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the log as a snapshot: temporary file, fsync, rename, fsync the folder.
    fn compact(&mut self) -> Result<(), Error> {
        let tmp = self.path.with_extension("compact.tmp");
        let io_err = |action, source| Error::Io {
            action,
            path: tmp.clone(),
            source,
        };
        let file = File::create(&tmp).map_err(|e| io_err("create", e))?;
        let mut w = BufWriter::new(file);
        for (k, e) in &self.entries {
            let mut buf = serde_json::to_vec(&Line::record(k, &e.recorded()))
                .map_err(|e| io_err("encode", io::Error::other(e)))?;
            buf.push(b'\n');
            w.write_all(&buf).map_err(|e| io_err("write", e))?;
        }
        let file = w
            .into_inner()
            .map_err(|e| io_err("write", e.into_error()))?;
        file.sync_all().map_err(|e| io_err("sync", e))?;
        fs::rename(&tmp, &self.path).map_err(|e| io_err("rename", e))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err("sync the folder of", e))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| io_err("reopen", e))?;
        self.log = Some(BufWriter::new(file));
        self.lines = self.entries.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(e: &str) -> Recorded {
        Recorded {
            etag: e.into(),
            size: 1,
            mtime_ns: 2,
        }
    }

    #[test]
    fn survives_reopen_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::open(dir.path(), "state.jsonl").unwrap();
        s.record("a", rec("1")).unwrap();
        s.record("b", rec("2")).unwrap();
        s.record("a", rec("3")).unwrap();
        s.forget("b").unwrap();
        s.commit().unwrap();
        drop(s);
        let s = StateStore::open(dir.path(), "state.jsonl").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.get("a"), Some(rec("3")));
    }

    #[test]
    fn torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::open(dir.path(), "state.jsonl").unwrap();
        s.record("a", rec("1")).unwrap();
        s.commit().unwrap();
        drop(s);
        let p = dir.path().join("state.jsonl");
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(br#"{"k":"b","e":"2","s"#).unwrap();
        drop(f);
        let mut s = StateStore::open(dir.path(), "state.jsonl").unwrap();
        assert_eq!(s.len(), 1);
        s.record("c", rec("4")).unwrap();
        s.commit().unwrap();
        drop(s);
        let s = StateStore::open(dir.path(), "state.jsonl").unwrap();
        assert_eq!(s.len(), 2, "the line after the torn one must survive");
    }

    #[test]
    fn etags_round_trip_compactly() {
        for e in [
            "d41d8cd98f00b204e9800998ecf8427e",
            "D41D8CD98F00B204E9800998ECF8427E",
            "abc-3",
            "lm:123",
            "",
        ] {
            assert_eq!(Etag::new(e).text(), e);
        }
        assert!(matches!(
            Etag::new("d41d8cd98f00b204e9800998ecf8427e"),
            Etag::Md5(_)
        ));
    }

    #[test]
    fn read_only_creates_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("never");
        let mut s = StateStore::open_read_only(&missing, "state.jsonl").unwrap();
        assert!(s.is_empty());
        assert!(s.record("k", rec("e")).is_err());
        s.commit().unwrap();
        assert!(!missing.exists(), "no folder created");
        // A torn line is not rewritten either.
        fs::write(
            dir.path().join("state.jsonl"),
            "{\"k\":\"a\",\"e\":\"1\",\"s\":1,\"m\":1}\n{\"k\":",
        )
        .unwrap();
        let s = StateStore::open_read_only(dir.path(), "state.jsonl").unwrap();
        assert_eq!(s.len(), 1);
        assert!(fs::read_to_string(dir.path().join("state.jsonl"))
            .unwrap()
            .ends_with("{\"k\":"));
    }

    #[test]
    fn compacts_when_grown() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::open(dir.path(), "state.jsonl").unwrap();
        for i in 0..(MIN_GARBAGE_LINES + 10) {
            s.record("same", rec(&i.to_string())).unwrap();
        }
        s.commit().unwrap();
        let text = fs::read_to_string(dir.path().join("state.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 1);
        drop(s);
        let s = StateStore::open(dir.path(), "state.jsonl").unwrap();
        assert_eq!(
            s.get("same").unwrap().etag,
            (MIN_GARBAGE_LINES + 9).to_string()
        );
    }
}
