//! What a pass did, and the caps that keep it small enough for every sink (pure).
//!
//! A summary travels in status documents (IPC to the nucleus, MQTT) and in `once --json`. A
//! bucket full of hostile keys or failing objects must not make it grow without bound: lists
//! keep the first [`MAX_LISTED_PROBLEMS`] (the counts keep the totals), keys and messages are
//! shortened in the middle, and [`Summary::shrink_to`] drops list entries from the end until the
//! serialised summary fits a byte budget. Anything cut sets `truncated`.

use serde::Serialize;

/// At most this many failures and skipped keys are kept in a summary (all are logged).
pub const MAX_LISTED_PROBLEMS: usize = 20;
/// A key in a summary is shortened to this many characters (S3 keys reach 1,024 bytes).
pub const MAX_KEY_CHARS: usize = 200;
/// A message in a summary is shortened to this many characters.
pub const MAX_MESSAGE_CHARS: usize = 300;

/// `text` with at most `max` characters: the middle is replaced by `…`, so both the start (the
/// folder) and the end (the file name, the fix) stay readable. Returns whether it was cut.
#[must_use]
pub fn shorten(text: &str, max: usize) -> (String, bool) {
    let count = text.chars().count();
    if count <= max {
        return (text.to_owned(), false);
    }
    let keep = max.saturating_sub(1);
    let head = keep - keep / 2;
    let tail = keep / 2;
    let mut out: String = text.chars().take(head).collect();
    out.push('…');
    out.extend(text.chars().skip(count - tail));
    (out, true)
}

/// A problem with one key.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyProblem {
    /// The object key (shortened to [`MAX_KEY_CHARS`]).
    pub key: String,
    /// Short code.
    pub code: String,
    /// What happened (shortened to [`MAX_MESSAGE_CHARS`]).
    pub message: String,
}

/// One step of a dry run's plan.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PlannedAction {
    /// `download`, `delete`, `keep`, `skip` or `error`.
    pub action: &'static str,
    /// The object key.
    pub key: String,
    /// The local path (relative to localDir), if the key has one.
    pub path: Option<String>,
    /// Why.
    pub reason: String,
}

/// One release, as status documents show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseInfo {
    /// Release id (its folder's name).
    pub id: String,
    /// SHA-256 over its objects (key, content id, size).
    pub tree_digest: String,
    /// Files.
    pub files: u64,
    /// Bytes.
    pub bytes: u64,
    /// When it went live (RFC 3339); when it was built, if the switch was not recorded.
    pub live_at: String,
}

/// Releases after a pass.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseReport {
    /// The release `localDir` points at.
    pub live: Option<ReleaseInfo>,
    /// The one live before it, if kept.
    pub previous: Option<ReleaseInfo>,
    /// Whether this pass switched to a new release.
    pub switched: bool,
    /// Why staged changes did not go live (failures, a rollback's hold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

/// What a pass did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Objects listed (or named by `keys`/the manifest), including skipped and excluded ones.
    pub listed: u64,
    /// Objects downloaded.
    pub downloaded: u64,
    /// Objects whose local copy was current.
    pub unchanged: u64,
    /// Keys never written because they are unsafe.
    pub skipped: u64,
    /// Keys left out by `include`/`exclude`.
    pub excluded: u64,
    /// Zero-byte `folder/` markers (nothing to write).
    pub folder_markers: u64,
    /// Objects that failed.
    pub failed: u64,
    /// Local files removed because their objects are gone (`deleteExtraneous`).
    pub deleted: u64,
    /// Deletions refused by the `maxDeletePercent` guard.
    pub deletions_refused: u64,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Wall time, milliseconds.
    pub duration_ms: u64,
    /// Start (RFC 3339).
    pub started_at: String,
    /// End (RFC 3339).
    pub finished_at: String,
    /// The first failures (`failed` is the total).
    pub failures: Vec<KeyProblem>,
    /// The first skipped keys (`skipped` is the total).
    pub skipped_keys: Vec<KeyProblem>,
    /// Whether a list holds fewer entries than its total, or a key or message was shortened.
    pub truncated: bool,
    /// With `releases` on: the live release, the previous one, and whether this pass switched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseReport>,
    /// Dry runs only: what a real pass would do. `None` in real passes, so nothing is recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned: Option<Vec<PlannedAction>>,
}

impl Summary {
    /// An empty summary; `dry_run` makes it record the plan.
    #[must_use]
    pub fn new(started_at: String, dry_run: bool) -> Self {
        Self {
            listed: 0,
            downloaded: 0,
            unchanged: 0,
            skipped: 0,
            excluded: 0,
            folder_markers: 0,
            failed: 0,
            deleted: 0,
            deletions_refused: 0,
            bytes: 0,
            duration_ms: 0,
            started_at,
            finished_at: String::new(),
            failures: Vec::new(),
            skipped_keys: Vec::new(),
            truncated: false,
            planned: dry_run.then(Vec::new),
            release: None,
        }
    }

    /// Whether every object is in place and nothing was refused.
    #[must_use]
    pub fn is_success(&self) -> bool {
        self.failed == 0 && self.deletions_refused == 0
    }

    /// Counts a failed object and lists it if there is room.
    pub fn fail(&mut self, key: &str, code: &str, message: String) {
        self.failed += 1;
        let p = self.problem(key, code, &message);
        self.truncated |= !push_capped(&mut self.failures, p);
    }

    /// Counts a skipped key and lists it if there is room.
    pub fn skip(&mut self, key: &str, code: &str, message: &str) {
        self.skipped += 1;
        let p = self.problem(key, code, message);
        self.truncated |= !push_capped(&mut self.skipped_keys, p);
    }

    fn problem(&mut self, key: &str, code: &str, message: &str) -> KeyProblem {
        let (key, cut_key) = shorten(key, MAX_KEY_CHARS);
        let (message, cut_message) = shorten(message, MAX_MESSAGE_CHARS);
        self.truncated |= cut_key || cut_message;
        KeyProblem {
            key,
            code: code.to_owned(),
            message,
        }
    }

    /// Records that the deletion guard refused `count` deletions, with the fix (code-made text,
    /// listed first so it survives every cap).
    pub fn refuse_deletions(&mut self, count: u64, message: String) {
        self.deletions_refused = count;
        self.failures.insert(
            0,
            KeyProblem {
                key: String::new(),
                code: "DeleteLimitExceeded".into(),
                message,
            },
        );
        self.failures.truncate(MAX_LISTED_PROBLEMS);
    }

    /// Records a dry run's step (nothing in a real pass).
    pub fn plan(&mut self, action: &'static str, key: &str, path: Option<String>, reason: String) {
        if let Some(planned) = &mut self.planned {
            planned.push(PlannedAction {
                action,
                key: key.to_owned(),
                path,
                reason,
            });
        }
    }

    /// The serialised size in bytes.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        serde_json::to_vec(self).map_or(usize::MAX, |v| v.len())
    }

    /// Drops listed problems from the end (the longer list first) until the serialised summary
    /// takes at most `budget` bytes. The counts are untouched. Dry-run plans are not cut: they
    /// go to the terminal only.
    pub fn shrink_to(&mut self, budget: usize) {
        while self.encoded_len() > budget {
            let list = if self.skipped_keys.len() >= self.failures.len() {
                &mut self.skipped_keys
            } else {
                &mut self.failures
            };
            if list.pop().is_none() {
                return;
            }
            self.truncated = true;
        }
    }
}

/// Appends `p` unless the list is full; returns whether it was kept.
fn push_capped(list: &mut Vec<KeyProblem>, p: KeyProblem) -> bool {
    if list.len() < MAX_LISTED_PROBLEMS {
        list.push(p);
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lists_keep_the_first_entries_and_the_totals() {
        let mut s = Summary::new("t".into(), false);
        for i in 0..300 {
            s.skip(&format!("bad/{i}\u{1}"), "UnsafeKey", "control character");
            s.fail(&format!("k{i}"), "AccessDenied", "denied".into());
        }
        assert_eq!((s.skipped, s.failed), (300, 300));
        assert_eq!(s.skipped_keys.len(), MAX_LISTED_PROBLEMS);
        assert_eq!(s.failures.len(), MAX_LISTED_PROBLEMS);
        assert!(s.truncated);
        assert_eq!(s.failures[0].key, "k0", "the first ones are kept");
    }

    #[test]
    fn real_passes_record_no_plan() {
        let mut s = Summary::new("t".into(), false);
        s.plan("skip", "k", None, "why".into());
        assert!(s.planned.is_none());
        let v = serde_json::to_value(&s).unwrap();
        assert!(v.get("planned").is_none(), "{v}");
        let mut d = Summary::new("t".into(), true);
        d.plan("skip", "k", None, "why".into());
        assert_eq!(d.planned.unwrap().len(), 1);
    }

    #[test]
    fn long_keys_and_messages_are_shortened_in_the_middle() {
        let mut s = Summary::new("t".into(), false);
        let key = format!("folder/{}/file.bin", "x".repeat(1000));
        s.fail(&key, "Code", "m".repeat(5000));
        let p = &s.failures[0];
        assert_eq!(p.key.chars().count(), MAX_KEY_CHARS);
        assert!(p.key.starts_with("folder/") && p.key.ends_with("/file.bin"));
        assert!(p.key.contains('…'));
        assert_eq!(p.message.chars().count(), MAX_MESSAGE_CHARS);
        assert!(s.truncated);
    }

    #[test]
    fn shrink_drops_entries_until_it_fits() {
        let mut s = Summary::new("2026-12-01T00:00:00Z".into(), false);
        for i in 0..40 {
            s.skip(
                &format!("{i}{}", "k".repeat(190)),
                "UnsafeKey",
                &"m".repeat(290),
            );
            s.fail(&format!("{i}{}", "f".repeat(190)), "Code", "n".repeat(290));
        }
        assert!(s.encoded_len() > 4_000);
        s.shrink_to(4_000);
        assert!(s.encoded_len() <= 4_000);
        assert!(s.truncated);
        assert_eq!((s.skipped, s.failed), (40, 40), "totals stay");
        assert!(!s.failures.is_empty() || !s.skipped_keys.is_empty());
    }

    proptest! {
        #[test]
        fn shorten_never_exceeds_and_keeps_short_text(text in "\\PC{0,400}", max in 1usize..300) {
            let (out, cut) = shorten(&text, max);
            prop_assert!(out.chars().count() <= max);
            prop_assert_eq!(cut, text.chars().count() > max);
            if !cut {
                prop_assert_eq!(out, text);
            }
        }
    }
}
