//! What to do with each listed object (pure: no I/O).
//!
//! Two decisions live here:
//! - [`map_key`]: an object key → a path relative to `localDir`, or the reason it is never
//!   written. Only keys made of plain, non-empty path segments map to a path, so no key can
//!   address anything outside `localDir` (`..`, absolute, backslashes, NUL, control characters
//!   and the component's own temporary names are all refused).
//! - [`plan`]: given the listing entry, the state recorded when the file was last written, and
//!   what is on disk now, download or leave alone. Change detection is by ETag + size, never by
//!   modification time; the local size and mtime only tell whether someone changed the file.

use std::fmt;
use std::time::SystemTime;

/// Longest file name most Linux file systems accept, in bytes.
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Prefix of the temporary files the component writes; keys using it are refused.
pub const TEMP_PREFIX: &str = ".gg-s3-sync.";
/// Marks resumable partial downloads (`.gg-s3-sync.<id>.resume.part` and `.resume.json`),
/// which the start-up sweep keeps for a while.
pub const RESUME_MARK: &str = ".resume.";
/// Suffix of the temporary files the component writes.
pub const TEMP_SUFFIX: &str = ".part";

/// A validated relative path: non-empty `/`-separated segments, none of them `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

impl RelPath {
    /// The path as `a/b/c`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The path made of the first segments of a valid path (its parent folders).
    #[must_use]
    pub fn from_segments(segments: &[&str]) -> Self {
        Self(segments.join("/"))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a key is never written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsafe {
    /// Not under the configured prefix (a misbehaving server).
    OutsidePrefix,
    /// Starts with `/`.
    Absolute,
    /// Has a `..` segment.
    ParentSegment,
    /// Has a `.` segment.
    DotSegment,
    /// Has an empty segment (`a//b`).
    EmptySegment,
    /// Contains `\`, which other systems treat as a separator.
    Backslash,
    /// Contains NUL.
    Nul,
    /// Contains a control character.
    ControlCharacter,
    /// A segment longer than [`MAX_SEGMENT_BYTES`].
    SegmentTooLong(usize),
    /// Ends in `/` but has content: it cannot be both a folder and a file.
    FolderWithContent,
    /// Looks like the component's own temporary files.
    Reserved,
    /// Contains a character that changes how the name displays without being seen: bidi
    /// controls (`invoice` + U+202E + `fdp.exe` shows as `invoiceexe.pdf`; CVE-2021-42574) or
    /// zero-width characters (two names that look identical).
    Invisible(char),
}

impl fmt::Display for Unsafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutsidePrefix => f.write_str("key is not under the configured prefix"),
            Self::Absolute => f.write_str("key is an absolute path"),
            Self::ParentSegment => f.write_str("key has a '..' segment that would escape localDir"),
            Self::DotSegment => f.write_str("key has a '.' segment"),
            Self::EmptySegment => f.write_str("key has an empty segment ('//')"),
            Self::Backslash => f.write_str("key contains a backslash"),
            Self::Nul => f.write_str("key contains a NUL character"),
            Self::ControlCharacter => f.write_str("key contains a control character"),
            Self::SegmentTooLong(n) => {
                write!(
                    f,
                    "a key segment is {n} bytes, over the {MAX_SEGMENT_BYTES}-byte file name limit"
                )
            }
            Self::FolderWithContent => {
                f.write_str("key ends in '/' but is not an empty folder marker")
            }
            Self::Reserved => {
                f.write_str("key uses the component's reserved '.gg-s3-sync.' file names")
            }
            Self::Invisible(c) => write!(
                f,
                "key contains the invisible character U+{:04X}, which makes a file name display as something else",
                u32::from(*c)
            ),
        }
    }
}

/// Where a key goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    /// Write it here, relative to `localDir`.
    Path(RelPath),
    /// A zero-byte `folder/` marker (or the prefix itself): nothing to write.
    FolderMarker,
    /// Never written.
    Unsafe(Unsafe),
}

/// Maps `key` (listed under `prefix`, which is empty or ends in `/`) to a local path.
#[must_use]
pub fn map_key(key: &str, prefix: &str, size: u64) -> KeyVerdict {
    let Some(rel) = key.strip_prefix(prefix) else {
        return KeyVerdict::Unsafe(Unsafe::OutsidePrefix);
    };
    if rel.is_empty() {
        return KeyVerdict::FolderMarker;
    }
    let (rel, folder) = match rel.strip_suffix('/') {
        Some(r) => (r, true),
        None => (rel, false),
    };
    if let Some(problem) = check_chars(rel) {
        return KeyVerdict::Unsafe(problem);
    }
    if rel.starts_with('/') {
        return KeyVerdict::Unsafe(Unsafe::Absolute);
    }
    for segment in rel.split('/') {
        let problem = match segment {
            "" => Some(Unsafe::EmptySegment),
            "." => Some(Unsafe::DotSegment),
            ".." => Some(Unsafe::ParentSegment),
            s if s.len() > MAX_SEGMENT_BYTES => Some(Unsafe::SegmentTooLong(s.len())),
            s if s.starts_with(TEMP_PREFIX) => Some(Unsafe::Reserved),
            _ => None,
        };
        if let Some(p) = problem {
            return KeyVerdict::Unsafe(p);
        }
    }
    if folder {
        return if size == 0 {
            KeyVerdict::FolderMarker
        } else {
            KeyVerdict::Unsafe(Unsafe::FolderWithContent)
        };
    }
    KeyVerdict::Path(RelPath(rel.to_owned()))
}

fn check_chars(s: &str) -> Option<Unsafe> {
    s.chars().find_map(|c| match c {
        '\0' => Some(Unsafe::Nul),
        '\\' => Some(Unsafe::Backslash),
        c if c.is_control() => Some(Unsafe::ControlCharacter),
        // Bidi embeddings, overrides, isolates and marks; zero-width space, joiners, word
        // joiner and BOM (Unicode TR 9 and TR 36).
        '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{061C}'
        | '\u{200B}'..='\u{200D}'
        | '\u{2060}'
        | '\u{FEFF}' => Some(Unsafe::Invisible(c)),
        _ => None,
    })
}

/// What the state store remembers about a file the component wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The object's ETag (quotes stripped) when it was downloaded.
    pub etag: String,
    /// The object's size.
    pub size: u64,
    /// The file's modification time after writing, in nanoseconds since the epoch.
    pub mtime_ns: i128,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The object key.
    pub key: String,
    /// ETag with quotes stripped; empty if the server sent none.
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
    /// `LastModified`.
    pub last_modified: Option<SystemTime>,
}

/// A regular file found at the destination path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalFile {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
}

/// Why an object is downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Never downloaded before.
    New,
    /// The object's ETag or size changed.
    Changed,
    /// The local file is gone or is not a regular file.
    LocalMissing,
    /// The local file's size or mtime differs from what was written.
    LocalModified,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::New => "new",
            Self::Changed => "changed",
            Self::LocalMissing => "missing locally",
            Self::LocalModified => "modified locally",
        })
    }
}

/// The decision for one object with a safe path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fetch it.
    Download(Reason),
    /// The local copy is current.
    Unchanged,
}

/// A stand-in ETag for servers that list none: size and `LastModified` identify the version.
#[must_use]
pub fn version_tag(remote: &Remote) -> String {
    if !remote.etag.is_empty() {
        return remote.etag.clone();
    }
    let ns = remote
        .last_modified
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("lm:{ns}")
}

/// Decides for one object.
#[must_use]
pub fn plan(remote: &Remote, recorded: Option<&Recorded>, local: Option<LocalFile>) -> Action {
    let Some(rec) = recorded else {
        return Action::Download(Reason::New);
    };
    if rec.etag != version_tag(remote) || rec.size != remote.size {
        return Action::Download(Reason::Changed);
    }
    match local {
        None => Action::Download(Reason::LocalMissing),
        Some(l) if l.size != rec.size || l.mtime_ns != rec.mtime_ns => {
            Action::Download(Reason::LocalModified)
        }
        Some(_) => Action::Unchanged,
    }
}

/// Strips the quotes S3 puts around ETags.
#[must_use]
pub fn normalize_etag(raw: &str) -> String {
    raw.trim().trim_matches('"').to_owned()
}

/// The MD5 hex digest an ETag stands for, if it is a single-part upload's ETag.
#[must_use]
pub fn md5_of_etag(etag: &str) -> Option<&str> {
    (etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())).then_some(etag)
}

/// A relative path as a case-insensitive file system compares it (Unicode lower case: at least
/// as strict as vfat's and exfat's folding, so every real collision is found).
#[must_use]
pub fn case_fold(rel: &str) -> String {
    rel.to_lowercase()
}

/// Decodes a key of a listing made with `encoding-type=url`. S3 encodes key names there the
/// way HTML forms do (botocore decodes them with `unquote_plus`): `%XX` is a byte and `+` a
/// space. `None` for a malformed escape or bytes that are not UTF-8 (S3 keys are UTF-8).
#[must_use]
pub fn url_decode_key(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = encoded.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Whether objects of this storage class cannot be read without a restore. `GLACIER` (Flexible
/// Retrieval) and `DEEP_ARCHIVE` answer GET with `InvalidObjectState`; `GLACIER_IR` and the
/// others are read like `STANDARD`.
#[must_use]
pub fn is_archived(storage_class: &str) -> bool {
    matches!(storage_class, "GLACIER" | "DEEP_ARCHIVE")
}

/// A checksum S3 keeps of the whole object, that the assembled file can be checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullObjectChecksum {
    /// `crc64nvme`, `crc32c` or `crc32` (the names `aws_smithy_checksums` parses).
    pub algorithm: &'static str,
    /// The value S3 sent (base64).
    pub base64: String,
}

/// Which of the checksums a HEAD in checksum mode returned covers the whole object. S3 keeps a
/// full-object CRC64NVME, CRC32C or CRC32 for multipart uploads made with full-object checksums
/// (CRC64NVME is the default for new uploads); a COMPOSITE checksum (`…-N`) is a checksum of the
/// parts' checksums and cannot be checked against the file without the part boundaries.
#[must_use]
pub fn full_object_checksum(
    checksum_type: Option<&str>,
    crc64nvme: Option<&str>,
    crc32c: Option<&str>,
    crc32: Option<&str>,
) -> Option<FullObjectChecksum> {
    if checksum_type.is_some_and(|t| !t.eq_ignore_ascii_case("FULL_OBJECT")) {
        return None;
    }
    [
        ("crc64nvme", crc64nvme),
        ("crc32c", crc32c),
        ("crc32", crc32),
    ]
    .into_iter()
    .find_map(|(algorithm, v)| {
        let v = v?.trim();
        // A composite value carries its part count ("…==-3").
        (!v.is_empty() && !v.contains('-')).then(|| FullObjectChecksum {
            algorithm,
            base64: v.to_owned(),
        })
    })
}

/// How S3 says an object is encrypted at rest (from any GET or HEAD response of it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Encryption {
    /// `x-amz-server-side-encryption: aws:kms` or `aws:kms:dsse`.
    pub kms: bool,
    /// `x-amz-server-side-encryption-customer-algorithm` present (SSE-C).
    pub customer_key: bool,
}

impl Encryption {
    /// From the response headers.
    #[must_use]
    pub fn from_headers(
        server_side_encryption: Option<&str>,
        customer_algorithm: Option<&str>,
    ) -> Self {
        Self {
            kms: server_side_encryption.is_some_and(|s| s.starts_with("aws:kms")),
            customer_key: customer_algorithm.is_some(),
        }
    }

    /// What two responses of one object say together (a ranged download has one per part).
    #[must_use]
    pub fn or(self, other: Self) -> Self {
        Self {
            kms: self.kms || other.kms,
            customer_key: self.customer_key || other.customer_key,
        }
    }
}

/// The MD5 a downloaded body must have, if its ETag tells it: the one verification policy of
/// every download path. S3's ETag is the MD5 of the data only for a single-part upload stored
/// unencrypted or with SSE-S3; multipart ETags (`…-N`) and the ETags of SSE-KMS, DSSE-KMS and
/// SSE-C objects are not (S3 User Guide, "Checking object integrity").
#[must_use]
pub fn expected_md5(etag: &str, encryption: Encryption) -> Option<String> {
    if encryption.kms || encryption.customer_key {
        return None;
    }
    md5_of_etag(etag).map(str::to_ascii_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The form encoding the devstack's S3 applies with `encoding-type=url` (space as `+`).
    use devstack::s3::form_encode;

    #[test]
    fn url_encoded_listing_keys_decode() {
        assert_eq!(
            url_decode_key("a%01b+c%2Bd").as_deref(),
            Some("a\u{1}b c+d")
        );
        assert_eq!(url_decode_key("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(url_decode_key("bad%2"), None);
        assert_eq!(url_decode_key("bad%zz"), None);
        assert_eq!(url_decode_key("%FF"), None, "not UTF-8");
    }

    proptest! {
        #[test]
        fn url_decoding_inverts_s3_s_encoding(key in "\\PC{0,40}|[\\x00-\\x1f +%]{0,20}") {
            prop_assert_eq!(url_decode_key(&form_encode(&key)), Some(key));
        }
    }

    #[test]
    fn only_full_object_checksums_are_used() {
        let c = full_object_checksum(
            Some("FULL_OBJECT"),
            Some("AAAAAAAAAAA="),
            None,
            Some("AAAAAA=="),
        );
        assert_eq!(c.unwrap().algorithm, "crc64nvme", "the strongest first");
        assert_eq!(
            full_object_checksum(Some("COMPOSITE"), None, None, Some("AAAAAA==")),
            None
        );
        assert_eq!(
            full_object_checksum(None, None, None, Some("AAAAAA==-3")),
            None
        );
        assert_eq!(
            full_object_checksum(None, None, Some("AAAAAA=="), None)
                .unwrap()
                .algorithm,
            "crc32c"
        );
        assert_eq!(full_object_checksum(None, None, None, None), None);
    }

    #[test]
    fn only_plain_single_part_etags_are_md5s() {
        let md5 = "9E107D9D372BB6826BD81D3542A419D6";
        let plain = Encryption::from_headers(Some("AES256"), None);
        assert_eq!(
            expected_md5(md5, plain).as_deref(),
            Some("9e107d9d372bb6826bd81d3542a419d6")
        );
        assert_eq!(
            expected_md5(md5, Encryption::default()).as_deref(),
            Some(&md5.to_ascii_lowercase()[..])
        );
        for enc in [
            Encryption::from_headers(Some("aws:kms"), None),
            Encryption::from_headers(Some("aws:kms:dsse"), None),
            Encryption::from_headers(None, Some("AES256")),
            plain.or(Encryption::from_headers(Some("aws:kms"), None)),
        ] {
            assert_eq!(expected_md5(md5, enc), None, "{enc:?}");
        }
        assert_eq!(
            expected_md5("9e107d9d372bb6826bd81d3542a419d6-3", plain),
            None
        );
    }

    fn path(key: &str, prefix: &str) -> String {
        match map_key(key, prefix, 1) {
            KeyVerdict::Path(p) => p.0,
            other => panic!("{key:?}: {other:?}"),
        }
    }

    fn unsafe_(key: &str) -> Unsafe {
        match map_key(key, "p/", 1) {
            KeyVerdict::Unsafe(u) => u,
            other => panic!("{key:?}: {other:?}"),
        }
    }

    #[test]
    fn safe_keys_map_under_the_prefix() {
        assert_eq!(path("p/a/b.txt", "p/"), "a/b.txt");
        assert_eq!(path("a", ""), "a");
        assert_eq!(path("p/..a/b..", "p/"), "..a/b..");
        assert_eq!(path("p/ünï cødé/ファイル", "p/"), "ünï cødé/ファイル");
    }

    #[test]
    fn hostile_keys_are_refused() {
        assert_eq!(unsafe_("p/../x"), Unsafe::ParentSegment);
        assert_eq!(unsafe_("p/a/../../x"), Unsafe::ParentSegment);
        assert_eq!(unsafe_("p/.."), Unsafe::ParentSegment);
        assert_eq!(unsafe_("p//abs"), Unsafe::Absolute);
        assert_eq!(unsafe_("p/a//b"), Unsafe::EmptySegment);
        assert_eq!(unsafe_("p/./a"), Unsafe::DotSegment);
        assert_eq!(unsafe_("p/a/./b"), Unsafe::DotSegment);
        assert_eq!(unsafe_("p/a\\..\\..\\x"), Unsafe::Backslash);
        assert_eq!(unsafe_("p/a\0b"), Unsafe::Nul);
        assert_eq!(unsafe_("p/a\nb"), Unsafe::ControlCharacter);
        assert_eq!(unsafe_("x/a"), Unsafe::OutsidePrefix);
        assert_eq!(
            unsafe_(&format!("p/{}", "x".repeat(256))),
            Unsafe::SegmentTooLong(256)
        );
        assert_eq!(unsafe_("p/d/.gg-s3-sync.0123.part"), Unsafe::Reserved);
        assert_eq!(
            unsafe_("p/invoice\u{202E}fdp.exe"),
            Unsafe::Invisible('\u{202E}')
        );
        assert_eq!(
            unsafe_("p/pay\u{200B}roll.csv"),
            Unsafe::Invisible('\u{200B}')
        );
        assert!(
            matches!(map_key("p/نص/ملف.txt", "p/", 1), KeyVerdict::Path(_)),
            "right-to-left text itself is fine"
        );
        assert_eq!(unsafe_("p/.gg-s3-sync.abc.resume.json"), Unsafe::Reserved);
    }

    #[test]
    fn folder_markers() {
        assert_eq!(map_key("p/", "p/", 0), KeyVerdict::FolderMarker);
        assert_eq!(map_key("p/dir/", "p/", 0), KeyVerdict::FolderMarker);
        assert_eq!(
            map_key("p/dir/", "p/", 5),
            KeyVerdict::Unsafe(Unsafe::FolderWithContent)
        );
        assert_eq!(
            map_key("p/../", "p/", 0),
            KeyVerdict::Unsafe(Unsafe::ParentSegment)
        );
    }

    proptest! {
        /// No key, whatever its bytes, maps to a path that could leave localDir.
        #[test]
        fn mapped_paths_stay_inside(key in "(p/)?([a-z./\\\\]|\\.\\.|/|\u{0}|\u{e9}){0,24}") {
            if let KeyVerdict::Path(p) = map_key(&key, "p/", 1) {
                prop_assert!(!p.as_str().starts_with('/'));
                for seg in p.segments() {
                    prop_assert!(!seg.is_empty() && seg != "." && seg != "..");
                    prop_assert!(!seg.contains('\\') && !seg.contains('\0'));
                }
                let joined = std::path::Path::new("/root").join(p.as_str());
                prop_assert!(joined.starts_with("/root"));
                prop_assert!(joined.components().all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_))));
            }
        }
    }

    fn remote(etag: &str, size: u64) -> Remote {
        Remote {
            key: "k".into(),
            etag: etag.into(),
            size,
            last_modified: None,
        }
    }

    fn rec(etag: &str, size: u64, mtime_ns: i128) -> Recorded {
        Recorded {
            etag: etag.into(),
            size,
            mtime_ns,
        }
    }

    #[test]
    fn plan_decisions() {
        let local = Some(LocalFile {
            size: 3,
            mtime_ns: 7,
        });
        assert_eq!(
            plan(&remote("e1", 3), None, local),
            Action::Download(Reason::New)
        );
        assert_eq!(
            plan(&remote("e1", 3), Some(&rec("e1", 3, 7)), local),
            Action::Unchanged
        );
        // Same size, new content: aws-cli misses this; ETag catches it.
        assert_eq!(
            plan(&remote("e2", 3), Some(&rec("e1", 3, 7)), local),
            Action::Download(Reason::Changed)
        );
        assert_eq!(
            plan(&remote("e1", 4), Some(&rec("e1", 3, 7)), local),
            Action::Download(Reason::Changed)
        );
        assert_eq!(
            plan(&remote("e1", 3), Some(&rec("e1", 3, 7)), None),
            Action::Download(Reason::LocalMissing)
        );
        let touched = Some(LocalFile {
            size: 3,
            mtime_ns: 8,
        });
        assert_eq!(
            plan(&remote("e1", 3), Some(&rec("e1", 3, 7)), touched),
            Action::Download(Reason::LocalModified)
        );
    }

    proptest! {
        /// Whatever the inputs, an object whose recorded version and local file both match is
        /// left alone, and anything else is downloaded.
        #[test]
        fn plan_is_unchanged_only_when_everything_matches(
            re in "[ab]", rs in 0u64..3, ce in "[ab]", cs in 0u64..3, cm in 0i128..3,
            local in proptest::option::of((0u64..3, 0i128..3)),
        ) {
            let r = remote(&re, rs);
            let c = rec(&ce, cs, cm);
            let l = local.map(|(size, mtime_ns)| LocalFile { size, mtime_ns });
            let same = re == ce && rs == cs && l == Some(LocalFile { size: cs, mtime_ns: cm });
            prop_assert_eq!(plan(&r, Some(&c), l) == Action::Unchanged, same);
        }
    }

    #[test]
    fn etags() {
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(
            md5_of_etag("d41d8cd98f00b204e9800998ecf8427e"),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(md5_of_etag("d41d8cd98f00b204e9800998ecf8427e-2"), None);
        assert_eq!(version_tag(&remote("", 1)), "lm:0");
    }
}

/// Which recorded files to delete because their objects are gone (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionPlan {
    /// Keys whose files go.
    pub delete: Vec<String>,
    /// `(would delete, recorded)` when the `maxDeletePercent` guard refused the deletions.
    pub refused: Option<(usize, usize)>,
}

/// Decides deletions after a complete listing: recorded keys not listed any more, except those
/// `keep` protects (excluded by filters). Refuses all of them if they exceed `max_percent` of
/// the recorded files.
pub fn plan_deletions<'a>(
    recorded: impl Iterator<Item = &'a str>,
    listed: &std::collections::HashSet<String>,
    keep: impl Fn(&str) -> bool,
    max_percent: u8,
) -> DeletionPlan {
    let mut total = 0usize;
    let mut delete = Vec::new();
    for key in recorded {
        total += 1;
        if !listed.contains(key) && !keep(key) {
            delete.push(key.to_owned());
        }
    }
    delete.sort();
    if delete.len() * 100 > usize::from(max_percent) * total {
        return DeletionPlan {
            refused: Some((delete.len(), total)),
            delete: Vec::new(),
        };
    }
    DeletionPlan {
        delete,
        refused: None,
    }
}

#[cfg(test)]
mod deletion_tests {
    use super::*;
    use std::collections::HashSet;

    fn set(v: &[&str]) -> HashSet<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn deletes_only_unlisted_unprotected_keys_within_the_guard() {
        let rec = ["a", "b", "c", "d"];
        let p = plan_deletions(rec.iter().copied(), &set(&["a", "b", "c"]), |_| false, 50);
        assert_eq!(
            p,
            DeletionPlan {
                delete: vec!["d".into()],
                refused: None
            }
        );
        let p = plan_deletions(rec.iter().copied(), &set(&["a"]), |k| k == "d", 50);
        assert_eq!(p.delete, ["b", "c"], "50% is allowed; protected keys stay");
        let p = plan_deletions(rec.iter().copied(), &set(&[]), |_| false, 50);
        assert_eq!(
            p,
            DeletionPlan {
                delete: vec![],
                refused: Some((4, 4))
            }
        );
        let p = plan_deletions(rec.iter().copied(), &set(&[]), |_| false, 100);
        assert_eq!(p.delete.len(), 4);
    }

    proptest::proptest! {
        #[test]
        fn never_deletes_listed_or_protected(rec in proptest::collection::hash_set("[a-e]", 0..5), listed in proptest::collection::hash_set("[a-e]", 0..5), pct in 0u8..=100) {
            let p = plan_deletions(rec.iter().map(String::as_str), &listed, |k| k == "e", pct);
            for k in &p.delete {
                proptest::prop_assert!(!listed.contains(k) && k != "e" && rec.contains(k));
            }
            proptest::prop_assert!(p.delete.len() * 100 <= usize::from(pct) * rec.len());
        }
    }
}

/// The byte ranges (inclusive ends, as in HTTP `Range`) of an object split into parts.
#[must_use]
pub fn parts(size: u64, part_size: u64) -> Vec<(u64, u64)> {
    let part_size = part_size.max(1);
    (0..size.div_ceil(part_size))
        .map(|i| {
            let start = i * part_size;
            (start, (start + part_size).min(size) - 1)
        })
        .collect()
}

#[cfg(test)]
mod parts_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits() {
        assert_eq!(parts(10, 4), [(0, 3), (4, 7), (8, 9)]);
        assert_eq!(parts(8, 4), [(0, 3), (4, 7)]);
        assert!(parts(0, 4).is_empty());
    }

    proptest! {
        #[test]
        fn parts_tile_the_object(size in 1u64..10_000, part in 1u64..3_000) {
            let p = parts(size, part);
            prop_assert_eq!(p[0].0, 0);
            prop_assert_eq!(p.last().unwrap().1, size - 1);
            for w in p.windows(2) {
                prop_assert_eq!(w[0].1 + 1, w[1].0);
            }
            prop_assert!(p.iter().all(|(a, b)| b - a < part));
        }
    }
}
