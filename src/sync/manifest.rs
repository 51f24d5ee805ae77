//! The manifest (`manifestKey`): fetched with a conditional GET against a cached copy of its
//! keys (in `stateDir`), and parsed ([`parse_manifest`], pure).

use serde::{Deserialize, Serialize};

use super::plan;
use super::{chain, Error, Syncer};

#[derive(Serialize, Deserialize)]
struct ManifestCache {
    etag: String,
    keys: Vec<String>,
}

impl Syncer {
    /// The manifest's keys: a conditional GET against the cached copy.
    pub(super) async fn fetch_manifest(
        &mut self,
        key: &str,
        dry_run: bool,
    ) -> Result<Vec<String>, Error> {
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
            Ok(None) => return Ok(cached.map(|c| c.keys).unwrap_or_default()),
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
        let keys = parse_manifest(&bytes).map_err(bad)?;
        if !dry_run && !etag.is_empty() {
            let text = serde_json::to_vec(&ManifestCache {
                etag,
                keys: keys.clone(),
            })
            .unwrap_or_default();
            let tmp = cache_path.with_extension("tmp");
            if let Err(e) =
                std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &cache_path))
            {
                tracing::warn!(path = %cache_path.display(), error = %e, "cannot cache the manifest; it is fetched whole next pass");
            }
        }
        Ok(keys)
    }
}

/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

/// Parses a manifest: a JSON array of keys, or one key per line (blank lines and lines
/// starting with `#` ignored). Duplicates are dropped, order kept.
///
/// # Errors
/// What is wrong with the manifest.
pub fn parse_manifest(bytes: &[u8]) -> Result<Vec<String>, String> {
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
    let keys: Vec<String> = if trimmed.starts_with('[') {
        let v: Vec<serde_json::Value> = serde_json::from_str(trimmed)
            .map_err(|e| format!("manifest looks like JSON but is not a JSON array ({e})"))?;
        v.into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                serde_json::Value::String(s) if !s.is_empty() => Ok(s),
                other => Err(format!(
                    "manifest item {i} is not a non-empty string: {other}"
                )),
            })
            .collect::<Result<_, _>>()?
    } else {
        trimmed
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    let mut seen = std::collections::HashSet::new();
    Ok(keys
        .into_iter()
        .filter(|k| seen.insert(k.clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests() {
        assert_eq!(
            parse_manifest(br#"["a", "b/c", "a"]"#).unwrap(),
            ["a", "b/c"]
        );
        assert_eq!(
            parse_manifest(b"# models\r\na\n\n  \nb/c\r\n").unwrap(),
            ["a", "b/c"]
        );
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
}
