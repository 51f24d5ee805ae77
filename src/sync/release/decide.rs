//! Release decisions (pure): the tree digest, release ids, which releases to keep, whether a
//! staged tree goes live, and where the link points.

use sha2::{Digest as _, Sha256};

use crate::sync::hex;
use crate::sync::plan::Recorded;

/// Prefix of the entries `{key, versionId, sha256}` of a pinned manifest record in the state
/// (in place of an ETag): `pin:<versionId>:<sha256>`.
pub const PIN_PREFIX: &str = "pin:";

/// The record's content id for a pinned entry.
#[must_use]
pub fn pin_tag(version_id: &str, sha256: &str) -> String {
    format!("{PIN_PREFIX}{version_id}:{sha256}")
}

/// The SHA-256 (hex) a pinned record promises, if it is one.
#[must_use]
pub fn pinned_sha256(tag: &str) -> Option<&str> {
    tag.strip_prefix(PIN_PREFIX)?
        .rsplit_once(':')
        .map(|(_, s)| s)
}

/// Lower-case hex SHA-256 of `bytes`.
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The digest of a release's tree: SHA-256 over its objects sorted by key, one line each of
/// key, content id (the pinned SHA-256 when the manifest gives one, else the ETag) and size,
/// separated by NUL. Two releases with the same digest hold the same objects' same versions.
#[must_use]
pub fn tree_digest<'a>(records: impl IntoIterator<Item = (&'a str, &'a Recorded)>) -> String {
    let mut sorted: Vec<(&str, &Recorded)> = records.into_iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (key, r) in sorted {
        let content = pinned_sha256(&r.etag).unwrap_or(&r.etag);
        h.update(key.as_bytes());
        h.update([0]);
        h.update(content.as_bytes());
        h.update([0]);
        h.update(r.size.to_string().as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize())
}

/// A release id: a sequence number (so ids sort by age and each build is a new folder, even
/// when it repairs a live release with the same digest), then where the content comes from:
/// `m` and the manifest's digest for a fully pinned manifest, `t` and the tree digest otherwise.
#[must_use]
pub fn release_id(seq: u64, tree_digest: &str, pinned_manifest_digest: Option<&str>) -> String {
    match pinned_manifest_digest {
        Some(m) => format!("{seq:06}-m{}", &m[..m.len().min(12)]),
        None => format!("{seq:06}-t{}", &tree_digest[..tree_digest.len().min(12)]),
    }
}

/// Whether `name` (an entry of the releases folder) is a release id this component made.
#[must_use]
pub fn is_release_id(name: &str) -> bool {
    let Some((seq, rest)) = name.split_once('-') else {
        return false;
    };
    seq.len() >= 6
        && seq.bytes().all(|b| b.is_ascii_digit())
        && rest.len() > 1
        && matches!(rest.as_bytes()[0], b'm' | b't')
        && rest[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The sequence number of a release id.
#[must_use]
pub fn seq_of(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

/// Which releases to remove: all but the newest `keep` (by id, which sorts by age), never the
/// live one nor `protect` (a rollback target being switched to).
#[must_use]
pub fn to_remove(ids: &[String], live: Option<&str>, keep: usize) -> Vec<String> {
    let mut sorted: Vec<&String> = ids.iter().filter(|i| is_release_id(i)).collect();
    sorted.sort_unstable_by_key(|i| (seq_of(i), (*i).clone()));
    sorted.reverse();
    let mut kept = usize::from(live.is_some_and(|l| sorted.iter().any(|i| *i == l)));
    let mut out = Vec::new();
    for id in sorted {
        if Some(id.as_str()) == live {
            continue;
        }
        if kept < keep {
            kept += 1;
        } else {
            out.push(id.clone());
        }
    }
    out
}

/// What to do with a complete staged tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Make it the live release.
    Switch,
    /// Nothing changed against the live release: drop the staging folder.
    Discard,
    /// A rollback holds the live release while the source still has this content.
    Held {
        /// The release rolled back to.
        live: String,
    },
}

/// Whether a staged tree with `digest` goes live. `changed`: something was downloaded or
/// deleted while building it (or it was left by an earlier pass); `hold`: the digest of the
/// content a rollback turned away from, with the release rolled back to.
#[must_use]
pub fn verdict(
    digest: &str,
    changed: bool,
    live: Option<&str>,
    hold: Option<(&str, &str)>,
) -> Verdict {
    if live.is_some() && !changed {
        return Verdict::Discard;
    }
    match hold {
        Some((held, to)) if held == digest && live == Some(to) => Verdict::Held { live: to.into() },
        _ => Verdict::Switch,
    }
}

/// Where the link `localDir` points for release `id`: relative when the releases folder is
/// beside `localDir` (the pair can be moved together), absolute otherwise.
#[must_use]
pub fn link_target(
    local_parent: &std::path::Path,
    releases_dir: &std::path::Path,
    id: &str,
) -> std::path::PathBuf {
    match releases_dir.parent() {
        Some(p) if p == local_parent => releases_dir.file_name().map_or_else(
            || releases_dir.join(id),
            |n| std::path::Path::new(n).join(id),
        ),
        _ => releases_dir.join(id),
    }
}

/// The release id a link target names, if it is in `releases_dir`.
#[must_use]
pub fn id_of_target(
    target: &std::path::Path,
    local_parent: &std::path::Path,
    releases_dir: &std::path::Path,
) -> Option<String> {
    let absolute = if target.is_absolute() {
        target.to_owned()
    } else {
        local_parent.join(target)
    };
    let id = absolute.file_name()?.to_str()?;
    (absolute.parent() == Some(releases_dir) && is_release_id(id)).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn rec(etag: &str, size: u64) -> Recorded {
        Recorded {
            etag: etag.into(),
            size,
            mtime_ns: 0,
        }
    }

    #[test]
    fn the_tree_digest_ignores_order_and_mtime_and_sees_content() {
        let (a, b) = (rec("e1", 1), rec("e2", 2));
        let d1 = tree_digest([("a", &a), ("b", &b)]);
        let d2 = tree_digest([("b", &b), ("a", &a)]);
        assert_eq!(d1, d2);
        let mut a2 = a.clone();
        a2.mtime_ns = 5;
        assert_eq!(d1, tree_digest([("a", &a2), ("b", &b)]));
        assert_ne!(d1, tree_digest([("a", &rec("e3", 1)), ("b", &b)]));
        assert_ne!(d1, tree_digest([("a", &a)]));
        // Key and content cannot run into each other.
        assert_ne!(
            tree_digest([("ab", &rec("c", 1))]),
            tree_digest([("a", &rec("bc", 1))])
        );
        // A pinned record counts by its SHA-256, whatever its version id.
        let pin = |v: &str| rec(&pin_tag(v, "abc"), 1);
        assert_eq!(
            tree_digest([("a", &pin("v1"))]),
            tree_digest([("a", &pin("v2"))])
        );
        assert_eq!(
            tree_digest([("a", &pin("v1"))]),
            tree_digest([("a", &rec("abc", 1))])
        );
    }

    #[test]
    fn release_ids_sort_by_age_and_name_their_source() {
        let t = "0123456789abcdef0123";
        assert_eq!(release_id(7, t, None), "000007-t0123456789ab");
        assert_eq!(
            release_id(7, t, Some("fedcba9876543210")),
            "000007-mfedcba987654"
        );
        assert!(is_release_id("000007-t0123456789ab"));
        assert!(is_release_id("1000000-mab"));
        for bad in [
            ".staging",
            "000007",
            "7-t00",
            "000007-x00",
            "000007-t",
            "000007-tzz",
            "current.json",
        ] {
            assert!(!is_release_id(bad), "{bad}");
        }
        assert_eq!(seq_of("000042-tab"), Some(42));
    }

    #[test]
    fn retention_keeps_the_newest_and_always_the_live_one() {
        let ids: Vec<String> = (1..=5).map(|i| format!("00000{i}-tab")).collect();
        assert_eq!(
            to_remove(&ids, Some("000005-tab"), 2),
            ["000003-tab", "000002-tab", "000001-tab"]
        );
        // A live release that is old (rolled back to) counts toward keep and is never removed.
        assert_eq!(
            to_remove(&ids, Some("000001-tab"), 2),
            ["000004-tab", "000003-tab", "000002-tab"]
        );
        assert_eq!(
            to_remove(&ids, Some("000001-tab"), 1),
            ["000005-tab", "000004-tab", "000003-tab", "000002-tab"]
        );
        assert!(to_remove(&ids, Some("000005-tab"), 10).is_empty());
        // Not ours: never touched.
        let mixed = vec![
            "adopted-1".to_owned(),
            "000001-tab".to_owned(),
            "000002-tab".to_owned(),
        ];
        assert_eq!(to_remove(&mixed, Some("000002-tab"), 1), ["000001-tab"]);
        // Sequence beyond six digits still sorts by number.
        let big = vec!["999999-tab".to_owned(), "1000000-tab".to_owned()];
        assert_eq!(to_remove(&big, Some("1000000-tab"), 1), ["999999-tab"]);
    }

    #[test]
    fn a_staged_tree_goes_live_unless_unchanged_or_held() {
        assert_eq!(verdict("d", false, Some("1"), None), Verdict::Discard);
        assert_eq!(verdict("d", true, Some("1"), None), Verdict::Switch);
        // The first release goes live even when empty.
        assert_eq!(verdict("d", false, None, None), Verdict::Switch);
        assert_eq!(
            verdict("d", true, Some("1"), Some(("d", "1"))),
            Verdict::Held { live: "1".into() }
        );
        // New content, or a live release other than the one rolled back to: the hold is over.
        assert_eq!(
            verdict("e", true, Some("1"), Some(("d", "1"))),
            Verdict::Switch
        );
        assert_eq!(
            verdict("d", true, Some("2"), Some(("d", "1"))),
            Verdict::Switch
        );
    }

    #[test]
    fn link_targets_are_relative_beside_localdir() {
        let parent = Path::new("/data");
        let beside = Path::new("/data/.models.releases");
        let elsewhere = Path::new("/other/rel");
        assert_eq!(
            link_target(parent, beside, "000001-tab"),
            Path::new(".models.releases/000001-tab")
        );
        assert_eq!(
            link_target(parent, elsewhere, "000001-tab"),
            Path::new("/other/rel/000001-tab")
        );
        assert_eq!(
            id_of_target(Path::new(".models.releases/000001-tab"), parent, beside).as_deref(),
            Some("000001-tab")
        );
        assert_eq!(
            id_of_target(Path::new("/other/rel/000001-tab"), parent, elsewhere).as_deref(),
            Some("000001-tab")
        );
        assert_eq!(
            id_of_target(Path::new("/somewhere/else"), parent, beside),
            None
        );
        assert_eq!(
            id_of_target(Path::new(".models.releases/.staging"), parent, beside),
            None
        );
    }

    #[test]
    fn pinned_tags_round_trip() {
        let t = pin_tag("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY", "ab12");
        assert_eq!(pinned_sha256(&t), Some("ab12"));
        assert_eq!(pinned_sha256("d41d8cd98f00b204e9800998ecf8427e"), None);
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
