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
//! "Nucleus" keys are read over IPC from `aws.greengrass.Nucleus` (the classic nucleus, and lite
//! after v2.6.0) or else `aws.greengrass.NucleusLite` (released lite answers only to that name).
//! `system.*` is not readable over IPC on either nucleus. The classic nucleus writes it to
//! `<root>/config/effectiveConfig.yaml`; lite keeps it in `/etc/greengrass/config.yaml` plus the
//! files of `/etc/greengrass/config.d/`, which ggconfigd merges in that order, the later file
//! winning (`modules/ggconfigd/bin/ggconfigd.c`, `config_load.c`: every regular file of the folder
//! in directory order, symlinks skipped). The `<root>/…` names are where the classic installer
//! puts the files.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// A value and the file (and key) it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The value.
    pub value: String,
    /// Where it was read, e.g. `/etc/greengrass/config.d/certs.yaml system.privateKeyPath`.
    pub source: String,
}

impl Found {
    /// A value from `source`.
    #[must_use]
    pub fn new(value: &str, source: &str) -> Self {
        Self {
            value: value.to_owned(),
            source: source.to_owned(),
        }
    }
}

/// The nucleus's `system` section (certificate paths are not readable over IPC).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemConfig {
    /// `system.certificateFilePath`.
    pub certificate_file_path: Option<Found>,
    /// `system.privateKeyPath`.
    pub private_key_path: Option<Found>,
    /// `system.rootCaPath`.
    pub root_ca_path: Option<Found>,
    /// `system.thingName`.
    pub thing_name: Option<Found>,
}

impl SystemConfig {
    /// Layers `other` over `self`: each key `other` sets wins.
    #[must_use]
    pub fn overlaid_with(self, other: Self) -> Self {
        Self {
            certificate_file_path: other.certificate_file_path.or(self.certificate_file_path),
            private_key_path: other.private_key_path.or(self.private_key_path),
            root_ca_path: other.root_ca_path.or(self.root_ca_path),
            thing_name: other.thing_name.or(self.thing_name),
        }
    }
}

/// Parses one nucleus configuration file (YAML) with a `system` section; `origin` names the
/// file in the sources.
///
/// # Errors
/// The parser's message if the text is not YAML.
pub fn parse_system_section(text: &str, origin: &str) -> Result<SystemConfig, String> {
    let v: Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    let get = |k: &str| {
        v.get("system")
            .and_then(|s| s.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(|s| Found {
                value: s.trim().to_owned(),
                source: format!("{origin} system.{k}"),
            })
    };
    Ok(SystemConfig {
        certificate_file_path: get("certificateFilePath"),
        private_key_path: get("privateKeyPath"),
        root_ca_path: get("rootCaPath"),
        thing_name: get("thingName"),
    })
}

/// Parses the classic nucleus's `effectiveConfig.yaml`.
///
/// # Errors
/// The parser's message if the text is not YAML.
pub fn parse_effective_config(text: &str) -> Result<SystemConfig, String> {
    parse_system_section(text, "effectiveConfig.yaml")
}

/// Merges lite's configuration files, given in ggconfigd's load order (`config.yaml`, then the
/// `config.d` files in directory order): a later file's key wins. A file that is not YAML is
/// skipped with its error, as ggconfigd skips it ("Failed to parse config file").
#[must_use]
pub fn merge_lite_config(files: &[(String, String)]) -> (SystemConfig, Vec<String>) {
    let mut merged = SystemConfig::default();
    let mut problems = Vec::new();
    for (origin, text) in files {
        match parse_system_section(text, origin) {
            Ok(layer) => merged = merged.overlaid_with(layer),
            Err(e) => problems.push(format!("{origin}: {e}")),
        }
    }
    (merged, problems)
}

/// What the device tells about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Nucleus `iotCredEndpoint` (with the component that answered).
    pub nucleus_cred_endpoint: Option<Found>,
    /// Nucleus `awsRegion`.
    pub nucleus_region: Option<Found>,
    /// Nucleus `iotRoleAlias`.
    pub nucleus_role_alias: Option<Found>,
    /// `AWS_IOT_THING_NAME`.
    pub env_thing_name: Option<String>,
    /// `AWS_REGION`.
    pub env_region: Option<String>,
    /// `GG_ROOT_CA_PATH`.
    pub env_root_ca: Option<String>,
    /// From `effectiveConfig.yaml` (classic) or lite's `config.yaml` + `config.d`.
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
    let found = |f: &Option<Found>| -> Candidate {
        f.as_ref().map_or((None, String::new()), |f| {
            (Some(f.value.clone()), f.source.clone())
        })
    };
    let sys = &facts.system;
    let candidates: [(&'static str, Vec<Candidate>); 7] = [
        (
            "credentialsEndpoint",
            vec![found(&facts.nucleus_cred_endpoint)],
        ),
        (
            "region",
            vec![
                found(&facts.nucleus_region),
                (facts.env_region.clone(), "env AWS_REGION".into()),
            ],
        ),
        ("roleAlias", vec![found(&facts.nucleus_role_alias)]),
        (
            "thingName",
            vec![
                (
                    facts.env_thing_name.clone(),
                    "env AWS_IOT_THING_NAME".into(),
                ),
                found(&sys.thing_name),
            ],
        ),
        (
            "rootCaPath",
            vec![
                (facts.env_root_ca.clone(), "env GG_ROOT_CA_PATH".into()),
                found(&sys.root_ca_path),
                (root("rootCA.pem"), "installer default".into()),
            ],
        ),
        (
            "certificateFilePath",
            vec![
                found(&sys.certificate_file_path),
                (root("thingCert.crt"), "installer default".into()),
            ],
        ),
        (
            "privateKeyPath",
            vec![
                found(&sys.private_key_path),
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

    fn f(value: &str, source: &str) -> Option<Found> {
        Some(Found {
            value: value.into(),
            source: source.into(),
        })
    }

    fn facts() -> Facts {
        let nucleus = |k: &str| format!("nucleus {k} (aws.greengrass.Nucleus)");
        Facts {
            nucleus_cred_endpoint: f(
                "c.credentials.iot.eu-west-1.amazonaws.com",
                &nucleus("iotCredEndpoint"),
            ),
            nucleus_region: f("eu-west-1", &nucleus("awsRegion")),
            nucleus_role_alias: f(
                "GreengrassV2TokenExchangeRoleAlias",
                &nucleus("iotRoleAlias"),
            ),
            env_thing_name: Some("env-thing".into()),
            env_region: Some("us-east-1".into()),
            env_root_ca: None,
            system: SystemConfig {
                certificate_file_path: f(
                    "/gg/cert.pem",
                    "effectiveConfig.yaml system.certificateFilePath",
                ),
                private_key_path: None,
                root_ca_path: f("/gg/ca.pem", "effectiveConfig.yaml system.rootCaPath"),
                thing_name: f("sys-thing", "effectiveConfig.yaml system.thingName"),
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
        assert_eq!(s.certificate_file_path.unwrap().value, "/g/thingCert.crt");
        assert_eq!(s.thing_name.unwrap().value, "t1");
        assert!(parse_effective_config("system: [").is_err());
    }

    /// Lite: `config.yaml`, then `config.d` files in ggconfigd's order; the later file wins, a
    /// broken file is skipped (and named), and every value says which file it came from.
    #[test]
    fn merges_lite_config_files_in_load_order() {
        let files = vec![
            (
                "/etc/greengrass/config.yaml".to_owned(),
                "system:\n  privateKeyPath: /var/lib/greengrass/key.pem\n  certificateFilePath: /var/lib/greengrass/cert.pem\n  rootCaPath: /var/lib/greengrass/ca.pem\n  thingName: lite-thing\nservices:\n  aws.greengrass.NucleusLite:\n    configuration:\n      awsRegion: us-west-2\n".to_owned(),
            ),
            (
                "/etc/greengrass/config.d/broken.yaml".to_owned(),
                "system: [".to_owned(),
            ),
            (
                "/etc/greengrass/config.d/tpm.yaml".to_owned(),
                "system:\n  privateKeyPath: /secure/device.key\n".to_owned(),
            ),
        ];
        let (s, problems) = merge_lite_config(&files);
        let key = s.private_key_path.unwrap();
        assert_eq!(key.value, "/secure/device.key");
        assert_eq!(
            key.source,
            "/etc/greengrass/config.d/tpm.yaml system.privateKeyPath"
        );
        assert_eq!(
            s.certificate_file_path.unwrap().source,
            "/etc/greengrass/config.yaml system.certificateFilePath"
        );
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("/etc/greengrass/config.d/broken.yaml: "));
        // Resolved into the configuration with the lite file named as the source.
        let facts = Facts {
            system: merge_lite_config(&files).0,
            ..Facts::default()
        };
        let r = resolve(&json!({}), &facts);
        assert_eq!(r.document["privateKeyPath"], "/secure/device.key");
        assert_eq!(
            source(&r, "rootCaPath"),
            "/etc/greengrass/config.yaml system.rootCaPath"
        );
    }
}
