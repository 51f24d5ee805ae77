//! A pass with `releases` on: where it reads and writes (the live release until something
//! changes, then `.staging`), and what happens at its end (switch, discard or hold). The
//! folder work is in [`release`], the decisions in `release::decide`.

use super::download::{Job, Lazy, Root};
use super::release::{self, decide, Live, Meta, Releases};
use super::summary::{ReleaseInfo, ReleaseReport};
use super::{local, Error, Summary, Syncer};
use crate::credentials::rfc3339;
use crate::lock::InstanceLock;

/// Where the current pass stands.
#[derive(Debug, Default, Clone)]
pub(super) struct ReleasePass {
    /// The live release.
    live: Option<String>,
    /// Its tree (or the real folder being adopted), to link unchanged files from.
    live_root: Option<local::Folder>,
    /// Whether `root` is the staging folder.
    staging: bool,
    /// Whether the staging folder was left by an earlier pass (it holds changes).
    reused: bool,
    /// The staging folder made on the first body of a conditional GET, if one came.
    lazy: Option<std::sync::Arc<Lazy>>,
    /// Whether the releases' file system folds case (probed once per process).
    case_insensitive: Option<bool>,
}

impl Syncer {
    fn releases(&self) -> Result<&Releases, Error> {
        self.releases.as_ref().ok_or_else(|| {
            Error::Local(local::Error::Io {
                action: "open",
                path: self.settings.local_dir.clone(),
                source: std::io::Error::other("releases are not set up"),
            })
        })
    }

    fn open_releases(&mut self) -> Result<Releases, Error> {
        if self.releases.is_none() {
            self.releases = open_for(&self.settings, true)?;
        }
        Ok(self.releases()?.clone())
    }

    /// Opens the releases, takes the instance lock (on the releases folder: `localDir` is a
    /// link that changes), and chooses the pass's root: a staging folder left by an earlier
    /// pass on the same live release, else the live release (staging starts at the first
    /// change), else a new staging folder.
    pub(super) fn prepare_release(&mut self) -> Result<InstanceLock, Error> {
        let rel = self.open_releases()?;
        let lock = InstanceLock::acquire(rel.path(), self.state.path())?;
        let live = rel.live()?;
        let live_id = match &live {
            Live::Release(id) => Some(id.clone()),
            _ => None,
        };
        let removed = rel.retain(live_id.as_deref())?;
        if !removed.is_empty() {
            tracing::info!(removed = ?removed, "removed old releases");
        }
        // Probed once per process: a pass with nothing to do creates nothing, not even a probe.
        let insensitive = match self.release_pass.case_insensitive {
            Some(known) => known,
            None => rel.is_case_insensitive()?,
        };
        if insensitive && self.case_folded.is_none() {
            tracing::info!(releases = %rel.path().display(), "the releases' file system does not tell case apart; keys that differ only in case are reported as conflicts");
        }
        self.case_folded = insensitive.then(std::collections::HashMap::new);
        self.release_pass = ReleasePass {
            live: live_id.clone(),
            case_insensitive: Some(insensitive),
            ..ReleasePass::default()
        };
        if let Some(staging) = rel.reusable_staging(live_id.as_deref())? {
            tracing::info!(
                "continuing the release staged by an earlier pass (its downloads are kept)"
            );
            self.root = Some(staging);
            self.release_pass.staging = true;
            self.release_pass.reused = true;
            self.state_release = None;
            return Ok(lock);
        }
        match live {
            Live::Release(id) => {
                let tree = rel.open_release(&id)?;
                if self.state_release.as_deref() != Some(id.as_str()) {
                    // The state follows the live release (after a rollback, after a crash
                    // between building a release and switching to it).
                    if let Some(meta) = rel.meta(&id) {
                        let records = release::records_of(&meta);
                        let same = records.len() == self.state.len()
                            && records
                                .iter()
                                .all(|(k, r)| self.state.get(k).as_ref() == Some(r));
                        // Rewritten only when it differs: a restart alone writes nothing.
                        if !same {
                            self.state.replace_all(records)?;
                        }
                    }
                    self.state_release = Some(id);
                }
                self.release_pass.live_root = Some(tree.clone());
                self.root = Some(tree);
            }
            Live::Folder => {
                // Adopted: the state of the sync without releases describes it.
                self.release_pass.live_root = rel.open_local_folder()?;
                self.ensure_staging()?;
            }
            Live::Missing => self.ensure_staging()?,
        }
        Ok(lock)
    }

    /// The read-only root of a dry run: what a real pass would compare against.
    pub(super) fn release_dry_root(&mut self) -> Option<local::Folder> {
        // A dry run creates nothing: no releases folder yet means nothing synced yet.
        let rel = open_for(&self.settings, false).ok()??;
        let live = rel.live_id().ok()?;
        if let Ok(Some(staging)) = rel.reusable_staging_read_only(live.as_deref()) {
            return Some(staging);
        }
        match rel.live().ok()? {
            Live::Release(id) => rel.open_release(&id).ok(),
            Live::Folder => rel.open_local_folder().ok().flatten(),
            Live::Missing => None,
        }
    }

    /// Before the first write of a pass: a staging folder with every unchanged file of the live
    /// release hard-linked in (no copy, no download); a file edited since it was synced is left
    /// out, so it is downloaded again.
    pub(super) fn ensure_staging(&mut self) -> Result<(), Error> {
        if self.release_pass.staging {
            return Ok(());
        }
        // Through the pass's one cell: a download task may be making it at the same moment.
        let staging = self.staging_cell()?.get()?;
        self.use_staging(staging);
        Ok(())
    }

    fn use_staging(&mut self, staging: local::Folder) {
        self.state_release = None;
        self.root = Some(staging);
        self.release_pass.staging = true;
    }

    /// The pass's staging folder, made on first use: created on the live release with every
    /// unchanged file linked in (the records as they are when the cell is made, before any
    /// download of this pass).
    fn staging_cell(&mut self) -> Result<std::sync::Arc<Lazy>, Error> {
        if let Some(cell) = &self.release_pass.lazy {
            return Ok(cell.clone());
        }
        let rel = self.releases()?.clone();
        let live = self.release_pass.live.clone();
        let from = self.release_pass.live_root.clone();
        let entries = release::with_paths(self.state.records(), &self.settings.prefix);
        let cell = std::sync::Arc::new(Lazy::new(move || {
            let staging = rel.create_staging(live.as_deref())?;
            if let Some(from) = &from {
                let linked = Releases::link_unchanged(from, &staging, &entries)?;
                tracing::debug!(
                    linked = linked.len(),
                    of = entries.len(),
                    "staging: unchanged files linked from the live release"
                );
            }
            Ok(staging)
        }));
        self.release_pass.lazy = Some(cell.clone());
        Ok(cell)
    }

    /// Where a job of a pass with releases on writes: the staging folder, made now for a
    /// listed object (it is known to differ), or on the first body for a conditional GET (a
    /// pass of 304s creates nothing).
    pub(super) fn release_root(&mut self, job: &Job) -> Result<Root, Error> {
        let conditional = matches!(
            job,
            Job::Unlisted {
                if_none_match: Some(_),
                ..
            }
        );
        if self.release_pass.staging || !conditional {
            self.ensure_staging()?;
        }
        match (&self.root, self.release_pass.staging) {
            (Some(root), true) => Ok(Root::Ready(root.clone())),
            _ => Ok(Root::Lazy(self.staging_cell()?)),
        }
    }

    /// After the pass's downloads: a staging folder made on a body becomes the root.
    pub(super) fn adopt_lazy_staging(&mut self) {
        if let Some(made) = self.release_pass.lazy.as_ref().and_then(|l| l.made()) {
            if !self.release_pass.staging {
                self.use_staging(made);
            }
        }
    }

    /// After a pass that ran to its end: switch to the staged release if it is complete and
    /// changed, drop it if nothing changed, keep it if objects failed or a rollback holds.
    pub(super) fn finish_release(&mut self, summary: &Summary) -> Result<ReleaseReport, Error> {
        let rel = self.releases()?.clone();
        let mut report = ReleaseReport::default();
        if self.release_pass.staging {
            let live = self.release_pass.live.clone();
            if !summary.is_success() {
                report.pending = Some(format!(
                    "{} object(s) failed and {} deletion(s) were refused: the staged release is not switched to ({} stays live); the next pass continues it",
                    summary.failed,
                    summary.deletions_refused,
                    live.as_deref().unwrap_or("no release")
                ));
            } else {
                let records = self.state.records();
                let digest = decide::tree_digest(records.iter().map(|(k, r)| (k.as_str(), r)));
                let changed =
                    self.release_pass.reused || summary.downloaded > 0 || summary.deleted > 0;
                let hold = rel.hold();
                let verdict = decide::verdict(
                    &digest,
                    changed,
                    live.as_deref(),
                    hold.as_ref().map(|h| (h.digest.as_str(), h.to.as_str())),
                );
                match verdict {
                    decide::Verdict::Discard => {
                        rel.remove_staging()?;
                        self.root = self.release_pass.live_root.clone();
                        self.release_pass.staging = false;
                        self.state_release = live;
                    }
                    decide::Verdict::Held { live } => {
                        report.pending = Some(format!(
                            "rolled back to {live}: the source still has the content rolled back from, so it is not switched to again until the source changes"
                        ));
                    }
                    decide::Verdict::Switch => {
                        let now = rfc3339(self.clock.now());
                        let id = decide::release_id(
                            rel.next_seq(),
                            &digest,
                            self.pinned_manifest.as_deref(),
                        );
                        let meta = Meta {
                            id: id.clone(),
                            tree_digest: digest,
                            files: records.len() as u64,
                            bytes: records.iter().map(|(_, r)| r.size).sum(),
                            created_at: now.clone(),
                            manifest_digest: self.pinned_manifest.clone(),
                            records: records
                                .into_iter()
                                .map(|(k, r)| release::MetaRecord {
                                    k,
                                    e: r.etag,
                                    s: r.size,
                                    m: r.mtime_ns,
                                })
                                .collect(),
                        };
                        // The records are durable before the release that they describe.
                        self.state.commit()?;
                        let staging = self.root.clone().ok_or_else(|| {
                            Error::Local(local::Error::Io {
                                action: "open",
                                path: rel.path().join(release::STAGING),
                                source: std::io::Error::other("no staging folder"),
                            })
                        })?;
                        rel.finalize(&staging, &meta)?;
                        rel.switch(&id, &now, None)?;
                        tracing::info!(release = %id, files = meta.files, bytes = meta.bytes, previous = ?live, "release live");
                        let tree = rel.open_release(&id)?;
                        self.root = Some(tree.clone());
                        self.release_pass = ReleasePass {
                            live: Some(id.clone()),
                            live_root: Some(tree),
                            staging: false,
                            reused: false,
                            lazy: None,
                            case_insensitive: self.release_pass.case_insensitive,
                        };
                        report.switched = true;
                        let removed = rel.retain(Some(&id))?;
                        self.state_release = Some(id);
                        if !removed.is_empty() {
                            tracing::info!(removed = ?removed, "removed old releases");
                        }
                    }
                }
            }
        }
        let (live, previous) = describe(&rel)?;
        report.live = live;
        report.previous = previous;
        Ok(report)
    }
}

/// The live release and the one before it, for status documents.
fn describe(rel: &Releases) -> Result<(Option<ReleaseInfo>, Option<ReleaseInfo>), Error> {
    let switches = rel.switches();
    let info = |id: &str| {
        let meta = rel.meta(id)?;
        let live_at = switches
            .iter()
            .rev()
            .find(|s| s.id == id)
            .map_or_else(|| meta.created_at.clone(), |s| s.at.clone());
        Some(ReleaseInfo {
            id: meta.id,
            tree_digest: meta.tree_digest,
            files: meta.files,
            bytes: meta.bytes,
            live_at,
        })
    };
    let live = rel.live_id()?;
    let kept = rel.ids();
    let previous = switches
        .iter()
        .rev()
        .map(|s| s.id.as_str())
        .filter(|id| Some(*id) != live.as_deref())
        .find(|id| kept.iter().any(|k| k == id))
        .and_then(info);
    Ok((live.as_deref().and_then(info), previous))
}

/// A kept release, as `gg-s3-sync releases` lists it.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeptRelease {
    /// Release id.
    pub id: String,
    /// Whether `localDir` points at it.
    pub live: bool,
    /// Its tree digest (empty if its record is missing).
    pub tree_digest: String,
    /// Files.
    pub files: u64,
    /// Bytes.
    pub bytes: u64,
    /// When it was built.
    pub created_at: String,
}

/// What a rollback did.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct RolledBack {
    /// The release live before.
    pub from: String,
    /// The release live now.
    pub to: String,
}

/// The releases of `settings`, created if `create`; `None` if there are none yet and not
/// `create` (a command or a dry run creates nothing).
fn open_for(settings: &super::SyncSettings, create: bool) -> Result<Option<Releases>, Error> {
    let cfg = settings
        .releases
        .as_ref()
        .ok_or(Error::Release(release::Error::Off))?;
    Ok(Releases::open(
        &settings.local_dir,
        &cfg.dir,
        cfg.keep,
        settings.modes,
        create,
    )?)
}

/// The kept releases, oldest first.
///
/// # Errors
/// Releases off, or I/O.
pub fn list(settings: &super::SyncSettings) -> Result<Vec<KeptRelease>, Error> {
    let Some(rel) = open_for(settings, false)? else {
        return Ok(Vec::new());
    };
    let live = rel.live_id()?;
    Ok(rel
        .ids()
        .into_iter()
        .map(|id| {
            let meta = rel.meta(&id);
            KeptRelease {
                live: live.as_deref() == Some(id.as_str()),
                tree_digest: meta
                    .as_ref()
                    .map(|m| m.tree_digest.clone())
                    .unwrap_or_default(),
                files: meta.as_ref().map_or(0, |m| m.files),
                bytes: meta.as_ref().map_or(0, |m| m.bytes),
                created_at: meta.map(|m| m.created_at).unwrap_or_default(),
                id,
            }
        })
        .collect())
}

/// Points `localDir` at a kept release (`to`, or the one live before the current one) with one
/// rename, and records a hold: passes do not switch back to the content rolled back from until
/// the source changes. A staging folder is dropped. Takes the instance lock, so it waits for
/// no pass: a running pass makes it fail with the holder's PID.
///
/// # Errors
/// Releases off, [`release::Error::UnknownRelease`], the lock, or I/O.
pub fn rollback(
    settings: &super::SyncSettings,
    to: Option<&str>,
    now: &str,
) -> Result<RolledBack, Error> {
    let no_release = |releases: &std::path::Path| {
        Error::Release(release::Error::NoPrevious {
            live: "none (no release is live yet)".into(),
            releases: releases.to_owned(),
        })
    };
    let Some(rel) = open_for(settings, false)? else {
        let dir = settings
            .releases
            .as_ref()
            .map(|r| r.dir.clone())
            .unwrap_or_default();
        return Err(no_release(&dir));
    };
    let state_path = settings.state_dir.join(settings.state_file_name());
    let _lock = InstanceLock::acquire(rel.path(), &state_path)?;
    let live = rel.live_id()?.ok_or_else(|| no_release(rel.path()))?;
    let kept = rel.ids();
    let target = match to {
        Some(id) => id.to_owned(),
        None => {
            // The release live before this one, else the newest older one.
            let switches = rel.switches();
            switches
                .iter()
                .rev()
                .map(|s| s.id.clone())
                .find(|id| *id != live && kept.contains(id))
                .or_else(|| {
                    kept.iter()
                        .rev()
                        .find(|id| decide::seq_of(id) < decide::seq_of(&live))
                        .cloned()
                })
                .ok_or_else(|| {
                    Error::Release(release::Error::NoPrevious {
                        live: live.clone(),
                        releases: rel.path().to_owned(),
                    })
                })?
        }
    };
    if target == live {
        return Ok(RolledBack {
            from: live,
            to: target,
        });
    }
    rel.open_release(&target)?;
    if rel.meta(&target).is_none() {
        return Err(Error::Release(release::Error::UnknownRelease {
            id: format!("{target} (its record {target}.json is missing)"),
            releases: rel.path().to_owned(),
            kept,
        }));
    }
    let hold = rel.meta(&live).map(|m| release::Hold {
        digest: m.tree_digest,
        to: target.clone(),
    });
    rel.remove_staging()?;
    rel.switch(&target, now, hold)?;
    tracing::info!(from = %live, to = %target, "rolled back");
    Ok(RolledBack {
        from: live,
        to: target,
    })
}

/// The live and previous releases now (after a rollback), as a pass reports them.
///
/// # Errors
/// Releases off, or I/O.
pub fn report(settings: &super::SyncSettings) -> Result<ReleaseReport, Error> {
    let Some(rel) = open_for(settings, false)? else {
        return Ok(ReleaseReport::default());
    };
    let (live, previous) = describe(&rel)?;
    Ok(ReleaseReport {
        live,
        previous,
        switched: true,
        pending: None,
    })
}
