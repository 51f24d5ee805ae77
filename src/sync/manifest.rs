//! The manifest (`manifestKey`): fetched with a conditional GET against a cached copy of its
//! entries (in `stateDir`), and parsed ([`parse_manifest`], pure). An entry is a key, or, in a
//! JSON manifest, `{"key", "versionId", "sha256", "size"}`: that exact version, verified.

use serde::{Deserialize, Serialize};

use super::plan;
use super::release::decide;
use super::{chain, Error, Syncer};

/// One object a manifest (or `keys`) names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The object key.
    pub key: String,
    /// The exact version to fetch (GetObject `versionId`, needs `s3:GetObjectVersion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// The body's SHA-256 (lower-case hex), verified before the file is committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The body's size, verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl Entry {
    /// A key with nothing pinned.
    #[must_use]
    pub fn plain(key: String) -> Self {
        Self {
            key,
            version_id: None,
            sha256: None,
            size: None,
        }
    }

    /// Version and digest both given: the bytes are fixed, and a file recorded with
    /// [`Entry::pin_tag`] needs no request at all.
    #[must_use]
    pub fn pin_tag(&self) -> Option<String> {
        Some(decide::pin_tag(
            self.version_id.as_deref()?,
            self.sha256.as_deref()?,
        ))
    }
}

#[derive(Serialize, Deserialize)]
struct ManifestCache {
    etag: String,
    entries: Vec<Entry>,
    /// SHA-256 of the manifest's bytes.
    digest: String,
}

impl Syncer {
    /// The manifest's entries: a conditional GET against the cached copy. Sets
    /// `pinned_manifest` to the manifest's digest when every entry is pinned.
    pub(super) async fn fetch_manifest(
        &mut self,
        key: &str,
        dry_run: bool,
    ) -> Result<Vec<Entry>, Error> {
        let (entries, digest) = self.fetch_manifest_entries(key, dry_run).await?;
        let pinned = !entries.is_empty() && entries.iter().all(|e| e.pin_tag().is_some());
        self.pinned_manifest = pinned.then_some(digest);
        Ok(entries)
    }

    async fn fetch_manifest_entries(
        &mut self,
        key: &str,
        dry_run: bool,
    ) -> Result<(Vec<Entry>, String), Error> {
        let cache_path = self.settings.state_dir.join(
            self.settings
                .state_file_name()
                .replace(".jsonl", ".manifest.json"),
        );
        let cached: Option<ManifestCache> = std::fs::read(&cache_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let bad = |detail: String| Error::Manifest {
            bucket: self.settings.s3.bucket.clone(),
            key: key.to_owned(),
            detail,
        };
        let out = match self
            .source
            .get_conditional(key, cached.as_ref().map(|c| c.etag.as_str()))
            .await
        {
            Ok(Some(out)) => out,
            Ok(None) => return Ok(cached.map(|c| (c.entries, c.digest)).unwrap_or_default()),
            Err(Error::Vanished { .. }) => return Err(bad("it does not exist (NoSuchKey)".into())),
            Err(e) => return Err(e),
        };
        let etag = out.e_tag().map(plan::normalize_etag).unwrap_or_default();
        let mut body = out.body;
        let mut bytes = Vec::new();
        while let Some(chunk) = body.try_next().await.map_err(|e| Error::Network {
            op: "GetObject",
            target: key.to_owned(),
            detail: chain(&e),
        })? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_MANIFEST_BYTES {
                return Err(bad(format!("larger than {} bytes", MAX_MANIFEST_BYTES)));
            }
        }
        let entries = parse_manifest(&bytes).map_err(bad)?;
        let digest = decide::sha256_hex(&bytes);
        if !dry_run && !etag.is_empty() {
            let text = serde_json::to_vec(&ManifestCache {
                etag,
                entries: entries.clone(),
                digest: digest.clone(),
            })
            .unwrap_or_default();
            let tmp = cache_path.with_extension("tmp");
            if let Err(e) =
                std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &cache_path))
            {
                tracing::warn!(path = %cache_path.display(), error = %e, "cannot cache the manifest; it is fetched whole next pass");
            }
        }
        Ok((entries, digest))
    }
}

/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

/// Parses a manifest: a JSON array of keys and `{"key", "versionId", "sha256", "size"}`
/// objects, or one key per line (blank lines and lines starting with `#` ignored). A key listed
/// twice the same way is kept once, order kept; twice with different pins is an error.
///
/// # Errors
/// What is wrong with the manifest.
pub fn parse_manifest(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(format!(
            "manifest is {} bytes, over the {MAX_MANIFEST_BYTES}-byte limit",
            bytes.len()
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| format!("manifest is not UTF-8 ({e})"))?;
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    // An HTML error page (a proxy's, a console's) or a JSON object is not a list of keys; as
    // lines it would name keys like "<html>" and delete everything else.
    if let Some(first) = trimmed.chars().next().filter(|c| matches!(c, '{' | '<')) {
        let what = if first == '{' {
            "a JSON object, not a JSON array of keys"
        } else {
            "markup (an HTML or XML page?), not a list of keys"
        };
        return Err(format!(
            "manifest starts with '{first}': it is {what}; use a JSON array [\"a\", \"b\"] or one key per line"
        ));
    }
    let entries: Vec<Entry> = if trimmed.starts_with('[') {
        let v: Vec<serde_json::Value> = serde_json::from_str(trimmed)
            .map_err(|e| format!("manifest looks like JSON but is not a JSON array ({e})"))?;
        v.into_iter()
            .enumerate()
            .map(|(i, item)| entry(i, item))
            .collect::<Result<_, _>>()?
    } else {
        trimmed
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|l| Entry::plain(l.to_owned()))
            .collect()
    };
    let mut seen: std::collections::HashMap<String, Entry> = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        match seen.get(&e.key) {
            Some(first) if *first == e => {}
            Some(_) => {
                return Err(format!(
                    "manifest lists '{}' twice with different versions or digests; one file cannot hold both",
                    e.key
                ))
            }
            None => {
                seen.insert(e.key.clone(), e.clone());
                out.push(e);
            }
        }
    }
    Ok(out)
}

/// Item `i` of a JSON manifest.
fn entry(i: usize, item: serde_json::Value) -> Result<Entry, String> {
    let map = match item {
        serde_json::Value::String(s) if !s.is_empty() => return Ok(Entry::plain(s)),
        serde_json::Value::Object(m) => m,
        other => {
            return Err(format!(
                "manifest item {i} is not a non-empty string nor an object {{\"key\", \"versionId\", \"sha256\", \"size\"}}: {other}"
            ))
        }
    };
    if let Some(k) = map
        .keys()
        .find(|k| !["key", "versionId", "sha256", "size"].contains(&k.as_str()))
    {
        return Err(format!(
            "manifest item {i}: unknown field '{k}' (expected key, versionId, sha256, size)"
        ));
    }
    let text = |name: &str| match map.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Some(other) => Err(format!(
            "manifest item {i}: {name} must be a non-empty string, got {other}"
        )),
    };
    let key = text("key")?.ok_or_else(|| format!("manifest item {i}: key is missing"))?;
    let version_id = text("versionId")?;
    let sha256 = text("sha256")?
        .map(|s| s.to_ascii_lowercase())
        .map(|s| {
            if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(s)
            } else {
                Err(format!(
                    "manifest item {i} ({key}): sha256 must be 64 hex digits (sha256sum's output), got '{s}'"
                ))
            }
        })
        .transpose()?;
    let size = match map.get("size") {
        None | Some(serde_json::Value::Null) => None,
        Some(n) => Some(n.as_u64().ok_or_else(|| {
            format!("manifest item {i} ({key}): size must be a whole number of bytes, got {n}")
        })?),
    };
    Ok(Entry {
        key,
        version_id,
        sha256,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests() {
        let keys = |b: &[u8]| -> Vec<String> {
            parse_manifest(b)
                .unwrap()
                .into_iter()
                .map(|e| e.key)
                .collect()
        };
        assert_eq!(keys(br#"["a", "b/c", "a"]"#), ["a", "b/c"]);
        assert_eq!(keys(b"# models\r\na\n\n  \nb/c\r\n"), ["a", "b/c"]);
        assert!(parse_manifest(br#"["a", 3]"#)
            .unwrap_err()
            .contains("item 1"));
        assert!(parse_manifest(b"[not json").is_err());
        let html = parse_manifest(b"<!DOCTYPE html>\n<html><body>502 Bad Gateway</body></html>\n");
        assert!(
            html.unwrap_err().contains("markup"),
            "an error page is not a key list"
        );
        let object = parse_manifest(br#"{"keys": ["a"]}"#);
        assert!(object.unwrap_err().contains("JSON object"));
        assert!(parse_manifest(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn pinned_entries() {
        let sha = "AB".repeat(32);
        let text = format!(
            r#"["plain", {{"key": "m.bin", "versionId": "v1", "sha256": "{sha}", "size": 3}}, {{"key": "only-sha", "sha256": "{sha}"}}]"#
        );
        let e = parse_manifest(text.as_bytes()).unwrap();
        assert_eq!(e[0], Entry::plain("plain".into()));
        assert_eq!(e[1].version_id.as_deref(), Some("v1"));
        assert_eq!(
            e[1].sha256.as_deref(),
            Some(sha.to_ascii_lowercase().as_str())
        );
        assert_eq!(e[1].size, Some(3));
        assert!(e[1].pin_tag().unwrap().starts_with("pin:v1:"));
        assert_eq!(
            e[2].pin_tag(),
            None,
            "a digest without a version is verified, not pinned"
        );
        for (bad, names) in [
            (r#"[{"versionId": "v"}]"#, "key is missing"),
            (r#"[{"key": "a", "sha256": "abc"}]"#, "64 hex digits"),
            (r#"[{"key": "a", "size": -1}]"#, "whole number"),
            (
                r#"[{"key": "a", "version": "v"}]"#,
                "unknown field 'version'",
            ),
            (r#"[{"key": "a", "versionId": 7}]"#, "versionId must be"),
            (
                r#"[{"key": "a", "versionId": "1"}, {"key": "a", "versionId": "2"}]"#,
                "twice",
            ),
        ] {
            let err = parse_manifest(bad.as_bytes()).unwrap_err();
            assert!(err.contains(names), "{bad}: {err}");
        }
    }
}
