//! Carrying out deletions (`deleteExtraneous`): `plan::plan_deletions` decides (pure); this
//! removes the files through `localDir`'s folder descriptor, records each failure against its
//! key, and prunes the folders left empty.

use std::collections::HashSet;

use super::plan::{self, KeyVerdict, RelPath};
use super::{chain, planned, Error, Summary, Syncer};

impl Syncer {
    /// After a complete pass: remove files the component wrote whose objects are gone, unless
    /// excluded, edited since, or over the `maxDeletePercent` guard.
    pub(super) fn delete_extraneous(
        &mut self,
        seen: &HashSet<String>,
        dry_run: bool,
        summary: &mut Summary,
    ) -> Result<(), Error> {
        let prefix = self.settings.prefix.clone();
        let filter = self.settings.filter.clone();
        // With releases, a release holds what the filters admit now: nothing is protected.
        let releases = self.settings.releases.is_some();
        let protected = |key: &str| {
            !releases
                && key
                    .strip_prefix(prefix.as_str())
                    .is_none_or(|rel| !filter.allows(rel))
        };
        let decision = plan::plan_deletions(
            self.state.keys(),
            seen,
            protected,
            self.settings.max_delete_percent,
        );
        if let Some((would, total)) = decision.refused {
            let message = format!(
                "refusing to delete {would} of {total} synced files ({}% > maxDeletePercent {}); if the objects were \
                 really removed, raise maxDeletePercent for one pass",
                would * 100 / total.max(1),
                self.settings.max_delete_percent
            );
            tracing::error!("{message}");
            summary.refuse_deletions(would as u64, message);
            return Ok(());
        }
        if releases && !dry_run && !decision.delete.is_empty() {
            self.ensure_staging()?;
        }
        for key in decision.delete {
            let Some(recorded) = self.state.get(&key) else {
                continue;
            };
            let KeyVerdict::Path(rel) = plan::map_key(&key, &prefix, recorded.size.max(1)) else {
                self.state.forget(&key)?;
                continue;
            };
            let dest = self.settings.local_dir.join(rel.as_str());
            match self.observe(&rel) {
                Some(l) if l.size == recorded.size && l.mtime_ns == recorded.mtime_ns => {
                    if dry_run {
                        planned(summary, "delete", &key, Some(&rel), "object is gone".into());
                        continue;
                    }
                    // One failure is that file's, not the pass's: the others are still
                    // deleted and the state committed.
                    match self.delete_file(&rel) {
                        Ok(()) => {
                            self.state.forget(&key)?;
                            summary.deleted += 1;
                            tracing::info!(key = %key, path = %dest.display(), "deleted: the object is gone");
                        }
                        Err(e) => {
                            let message = chain(&e);
                            tracing::warn!(key = %key, error = %message, "cannot delete a file whose object is gone");
                            summary.fail(&key, "DeleteFailed", message);
                        }
                    }
                }
                Some(_) => {
                    planned(
                        summary,
                        "keep",
                        &key,
                        Some(&rel),
                        "object is gone but the file was edited locally".into(),
                    );
                    tracing::warn!(path = %dest.display(), "object is gone but the local file was edited since it was synced; kept");
                }
                None if !dry_run => self.state.forget(&key)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Deletes the file at `rel` and then every folder above it that this left empty, up to
    /// (not including) `localDir`, so an object `a` can later replace a deleted `a/b`.
    fn delete_file(&self, rel: &RelPath) -> Result<(), Error> {
        let Some(root) = &self.root else {
            return Ok(());
        };
        let Some((folder, name)) = root.parent_of(rel, false)? else {
            return Ok(()); // already gone with its folder
        };
        folder.remove(name)?;
        folder.sync()?;
        let segments: Vec<&str> = rel.segments().collect();
        for depth in (1..segments.len()).rev() {
            let parent_rel = plan::RelPath::from_segments(&segments[..depth]);
            let Some((parent, dir_name)) = root.parent_of(&parent_rel, false)? else {
                break;
            };
            if !parent.remove_empty_folder(dir_name)? {
                break;
            }
        }
        Ok(())
    }
}
