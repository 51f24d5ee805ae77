//! Greengrass mode: fill in what a stock deployment leaves out (pure; the caller gathers the
//! facts over IPC, from the environment and from the nucleus's files).
//!
//! A deployment needs only `bucket`, `localDir` and `roleAlias` (or even no alias: the nucleus's
//! `iotRoleAlias` is used). Explicit component configuration always wins; then, per key:
//!
//! | key | sources, in order |
//! |---|---|
//! | `credentialsEndpoint` | nucleus `iotCredEndpoint` |
//! | `region` | nucleus `awsRegion`, env `AWS_REGION` |
//! | `roleAlias` | nucleus `iotRoleAlias` |
//! | `thingName` | env `AWS_IOT_THING_NAME`, `system.thingName` |
//! | `rootCaPath` | env `GG_ROOT_CA_PATH`, `system.rootCaPath`, `<root>/rootCA.pem` |
//! | `certificateFilePath` | `system.certificateFilePath`, `<root>/thingCert.crt` |
//! | `privateKeyPath` | `system.privateKeyPath`, `<root>/privKey.key` |
//!
//! `system.*` comes from `<root>/config/effectiveConfig.yaml`; the `<root>/…` names are where
//! the Greengrass installer puts the files.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The nucleus's `system` section (certificate paths are not readable over IPC).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemConfig {
    /// `system.certificateFilePath`.
    pub certificate_file_path: Option<String>,
    /// `system.privateKeyPath`.
    pub private_key_path: Option<String>,
    /// `system.rootCaPath`.
    pub root_ca_path: Option<String>,
    /// `system.thingName`.
    pub thing_name: Option<String>,
}

/// Parses `effectiveConfig.yaml` (YAML).
///
/// # Errors
/// The parser's message if the text is not YAML.
pub fn parse_effective_config(text: &str) -> Result<SystemConfig, String> {
    let v: Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    let get = |k: &str| {
        v.get("system")
            .and_then(|s| s.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    Ok(SystemConfig {
        certificate_file_path: get("certificateFilePath"),
        private_key_path: get("privateKeyPath"),
        root_ca_path: get("rootCaPath"),
        thing_name: get("thingName"),
    })
}

/// What the device tells about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Nucleus `iotCredEndpoint`.
    pub nucleus_cred_endpoint: Option<String>,
    /// Nucleus `awsRegion`.
    pub nucleus_region: Option<String>,
    /// Nucleus `iotRoleAlias`.
    pub nucleus_role_alias: Option<String>,
    /// `AWS_IOT_THING_NAME`.
    pub env_thing_name: Option<String>,
    /// `AWS_REGION`.
    pub env_region: Option<String>,
    /// `GG_ROOT_CA_PATH`.
    pub env_root_ca: Option<String>,
    /// From `effectiveConfig.yaml`.
    pub system: SystemConfig,
    /// `{kernel:rootPath}`.
    pub kernel_root: Option<PathBuf>,
}

/// A configuration document with the gaps filled, and where each value came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The document to validate.
    pub document: Value,
    /// `(key, source)` for every discovery-managed key, in table order.
    pub sources: Vec<(&'static str, String)>,
}

/// A possible value and where it came from.
type Candidate = (Option<String>, String);

fn explicit(map: &Map<String, Value>, key: &str) -> bool {
    match map.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(_) => true,
    }
}

/// Fills the gaps of the component's configuration from `facts`.
#[must_use]
pub fn resolve(component: &Value, facts: &Facts) -> Resolved {
    let mut map = component.as_object().cloned().unwrap_or_default();
    let root = |name: &str| {
        facts
            .kernel_root
            .as_deref()
            .map(|r| path_string(&r.join(name)))
    };
    let candidates: [(&'static str, Vec<Candidate>); 7] = [
        (
            "credentialsEndpoint",
            vec![(
                facts.nucleus_cred_endpoint.clone(),
                "nucleus iotCredEndpoint".into(),
            )],
        ),
        (
            "region",
            vec![
                (facts.nucleus_region.clone(), "nucleus awsRegion".into()),
                (facts.env_region.clone(), "env AWS_REGION".into()),
            ],
        ),
        (
            "roleAlias",
            vec![(
                facts.nucleus_role_alias.clone(),
                "nucleus iotRoleAlias".into(),
            )],
        ),
        (
            "thingName",
            vec![
                (
                    facts.env_thing_name.clone(),
                    "env AWS_IOT_THING_NAME".into(),
                ),
                (
                    facts.system.thing_name.clone(),
                    "effectiveConfig.yaml system.thingName".into(),
                ),
            ],
        ),
        (
            "rootCaPath",
            vec![
                (facts.env_root_ca.clone(), "env GG_ROOT_CA_PATH".into()),
                (
                    facts.system.root_ca_path.clone(),
                    "effectiveConfig.yaml system.rootCaPath".into(),
                ),
                (root("rootCA.pem"), "installer default".into()),
            ],
        ),
        (
            "certificateFilePath",
            vec![
                (
                    facts.system.certificate_file_path.clone(),
                    "effectiveConfig.yaml system.certificateFilePath".into(),
                ),
                (root("thingCert.crt"), "installer default".into()),
            ],
        ),
        (
            "privateKeyPath",
            vec![
                (
                    facts.system.private_key_path.clone(),
                    "effectiveConfig.yaml system.privateKeyPath".into(),
                ),
                (root("privKey.key"), "installer default".into()),
            ],
        ),
    ];
    let mut sources = Vec::new();
    for (key, options) in candidates {
        if explicit(&map, key) {
            sources.push((key, "component configuration".to_owned()));
            continue;
        }
        match options
            .into_iter()
            .find_map(|(v, src)| v.filter(|v| !v.is_empty()).map(|v| (v, src)))
        {
            Some((value, src)) => {
                map.insert(key.to_owned(), Value::String(value));
                sources.push((key, src));
            }
            None => sources.push((
                key,
                "not found (set it in the component configuration)".to_owned(),
            )),
        }
    }
    Resolved {
        document: Value::Object(map),
        sources,
    }
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts() -> Facts {
        Facts {
            nucleus_cred_endpoint: Some("c.credentials.iot.eu-west-1.amazonaws.com".into()),
            nucleus_region: Some("eu-west-1".into()),
            nucleus_role_alias: Some("GreengrassV2TokenExchangeRoleAlias".into()),
            env_thing_name: Some("env-thing".into()),
            env_region: Some("us-east-1".into()),
            env_root_ca: None,
            system: SystemConfig {
                certificate_file_path: Some("/gg/cert.pem".into()),
                private_key_path: None,
                root_ca_path: Some("/gg/ca.pem".into()),
                thing_name: Some("sys-thing".into()),
            },
            kernel_root: Some("/greengrass/v2".into()),
        }
    }

    fn source(r: &Resolved, key: &str) -> String {
        r.sources.iter().find(|(k, _)| *k == key).unwrap().1.clone()
    }

    #[test]
    fn fills_gaps_in_order_and_says_where_from() {
        let r = resolve(
            &json!({"bucket": "b", "localDir": "/d", "roleAlias": ""}),
            &facts(),
        );
        let d = &r.document;
        assert_eq!(
            d["credentialsEndpoint"],
            "c.credentials.iot.eu-west-1.amazonaws.com"
        );
        assert_eq!(d["region"], "eu-west-1");
        assert_eq!(
            d["roleAlias"], "GreengrassV2TokenExchangeRoleAlias",
            "empty alias means the nucleus's"
        );
        assert_eq!(d["thingName"], "env-thing");
        assert_eq!(d["rootCaPath"], "/gg/ca.pem");
        assert_eq!(d["certificateFilePath"], "/gg/cert.pem");
        assert_eq!(d["privateKeyPath"], "/greengrass/v2/privKey.key");
        assert_eq!(source(&r, "privateKeyPath"), "installer default");
        assert_eq!(
            source(&r, "rootCaPath"),
            "effectiveConfig.yaml system.rootCaPath"
        );
        assert_eq!(d["bucket"], "b", "other keys untouched");
    }

    #[test]
    fn explicit_configuration_wins() {
        let r = resolve(
            &json!({"region": "ap-south-1", "privateKeyPath": "/mine.key"}),
            &facts(),
        );
        assert_eq!(r.document["region"], "ap-south-1");
        assert_eq!(r.document["privateKeyPath"], "/mine.key");
        assert_eq!(source(&r, "region"), "component configuration");
    }

    #[test]
    fn missing_everywhere_is_reported() {
        let r = resolve(&json!({}), &Facts::default());
        assert!(r.document.get("credentialsEndpoint").is_none());
        assert!(source(&r, "credentialsEndpoint").starts_with("not found"));
    }

    #[test]
    fn parses_effective_config() {
        let text = "system:\n  certificateFilePath: /g/thingCert.crt\n  privateKeyPath: \"/g/privKey.key\"\n  rootCaPath: /g/rootCA.pem\n  thingName: t1\n  rootpath: /g\nservices:\n  aws.greengrass.Nucleus:\n    configuration: {}\n";
        let s = parse_effective_config(text).unwrap();
        assert_eq!(s.certificate_file_path.as_deref(), Some("/g/thingCert.crt"));
        assert_eq!(s.thing_name.as_deref(), Some("t1"));
        assert!(parse_effective_config("system: [").is_err());
    }
}
