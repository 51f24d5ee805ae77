//! The component's configuration contract.
//!
//! Keys are camelCase, exactly as a Greengrass deployment delivers them. Deployments often send
//! numbers and booleans as strings (`"300"`, `"true"`) and numbers as floats (`300.0`), so all of
//! those forms are accepted. Unknown keys produce warnings, not errors, so a newer deployment
//! does not break an older component. Every problem is reported at once, each naming its key
//! and the form expected.
//!
//! [`Config::from_value`] is pure: it reads no files and no environment.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::endpoint::Endpoint;

/// Default `syncIntervalSeconds`.
pub const DEFAULT_SYNC_INTERVAL_SECS: u64 = 300;
/// Default `maxConcurrency`: enough to hide per-request latency, small enough for edge devices.
pub const DEFAULT_MAX_CONCURRENCY: u64 = 8;
/// Default `credentialsRefreshAheadSeconds`: the classic nucleus's token exchange service also
/// refreshes 300 s before expiry.
pub const DEFAULT_REFRESH_AHEAD_SECS: u64 = 300;
/// Upper bound of `maxConcurrency`.
pub const MAX_CONCURRENCY_LIMIT: u64 = 256;
/// Default `rangedDownloadThresholdBytes` (16 MiB).
pub const DEFAULT_RANGED_THRESHOLD: u64 = 16 * 1024 * 1024;
/// Default `maxDeletePercent`.
pub const DEFAULT_MAX_DELETE_PERCENT: u64 = 50;
/// Default `syncJitterPercent`.
pub const DEFAULT_SYNC_JITTER_PERCENT: u64 = 10;
/// Default `maxDeferSeconds`: a pass may hold a component update back for 10 minutes at most.
pub const DEFAULT_MAX_DEFER_SECS: u64 = 600;
/// Upper bound of `syncIntervalSeconds` (one week).
pub const MAX_SYNC_INTERVAL_SECS: u64 = 7 * 24 * 3600;

/// Every key the component accepts.
pub const KNOWN_KEYS: &[&str] = &[
    "roleAlias",
    "bucket",
    "prefix",
    "localDir",
    "syncIntervalSeconds",
    "maxConcurrency",
    "region",
    "s3EndpointUrl",
    "s3ForcePathStyle",
    "credentialsEndpoint",
    "thingName",
    "certificateFilePath",
    "privateKeyPath",
    "rootCaPath",
    "stateDir",
    "credentialsRefreshAheadSeconds",
    "statusTopic",
    "localStatusTopic",
    "triggerTopic",
    "keys",
    "manifestKey",
    "include",
    "exclude",
    "deleteExtraneous",
    "maxDeletePercent",
    "syncJitterPercent",
    "mqtt",
    "bandwidthLimitBytesPerSec",
    "rangedDownloadThresholdBytes",
    "maxDeferSeconds",
    "fileMode",
    "dirMode",
    "credentialsSource",
    "releases",
    "releaseTopic",
];

/// Keys a Greengrass deployment carries that are not the component's settings (the nucleus
/// reads them); accepted without a warning.
pub const NUCLEUS_KEYS: &[&str] = &["accessControl"];

/// Default `localStatusTopic`.
pub const DEFAULT_LOCAL_STATUS_TOPIC: &str = "gg-s3-sync/status";
/// Default `triggerTopic`.
pub const DEFAULT_TRIGGER_TOPIC: &str = "gg-s3-sync/sync-now";
/// Default `releaseTopic`: a "release live" document after each switch.
pub const DEFAULT_RELEASE_TOPIC: &str = "gg-s3-sync/release";
/// Default `releases.keep`.
pub const DEFAULT_RELEASES_KEEP: u64 = 3;

/// The default `statusTopic` for a thing.
#[must_use]
pub fn default_status_topic(thing_name: Option<&str>) -> String {
    match thing_name {
        Some(t) => format!("gg-s3-sync/{t}/status"),
        None => "gg-s3-sync/status".to_owned(),
    }
}

/// Errors loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid YAML/JSON.
    #[error("configuration file {} is not valid {format}: {detail}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// `YAML` or `JSON`.
        format: &'static str,
        /// The parser's message, with line and column.
        detail: String,
    },
    /// The document is not a map of keys to values.
    #[error("configuration must be a map of keys to values, found {found}")]
    NotAnObject {
        /// What was found instead.
        found: &'static str,
    },
    /// One or more keys are invalid.
    #[error("invalid configuration: {}", join(.0))]
    Invalid(Vec<FieldError>),
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One invalid key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The configuration key.
    pub key: String,
    /// What is wrong and the form expected.
    pub problem: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// Validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `roleAlias`: the AWS IoT role alias exchanged for credentials.
    pub role_alias: String,
    /// `bucket`.
    pub bucket: String,
    /// `prefix`, normalised: empty, or ending in `/`.
    pub prefix: String,
    /// `localDir`: absolute.
    pub local_dir: PathBuf,
    /// `syncIntervalSeconds`.
    pub sync_interval: Duration,
    /// `maxConcurrency`: simultaneous downloads.
    pub max_concurrency: usize,
    /// `region`: the bucket's region, used to sign requests.
    pub region: String,
    /// `s3EndpointUrl`: an S3-compatible or VPC endpoint.
    pub s3_endpoint_url: Option<String>,
    /// `s3ForcePathStyle`.
    pub s3_force_path_style: bool,
    /// `credentialsEndpoint`: the AWS IoT credentials provider.
    pub credentials_endpoint: Endpoint,
    /// `thingName`: sent as `x-amzn-iot-thingname` when set.
    pub thing_name: Option<String>,
    /// `certificateFilePath`: the device certificate (PEM).
    pub certificate_file_path: PathBuf,
    /// `privateKeyPath`: the device private key (PEM; PKCS#1, PKCS#8 or SEC1).
    pub private_key_path: PathBuf,
    /// `rootCaPath`: CA certificates that may sign the credentials endpoint's certificate.
    pub root_ca_path: PathBuf,
    /// `stateDir`: where the sync state is kept.
    pub state_dir: PathBuf,
    /// `credentialsRefreshAheadSeconds`.
    pub credentials_refresh_ahead: Duration,
    /// `statusTopic`: MQTT topic for status documents (`None` = disabled with "").
    pub status_topic: Option<String>,
    /// `localStatusTopic`: local pub/sub topic for status documents (`None` = disabled).
    pub local_status_topic: Option<String>,
    /// `triggerTopic`: local topic whose messages start a pass (`None` = disabled).
    pub trigger_topic: Option<String>,
    /// What to sync: a listed prefix, explicit keys, or a manifest object.
    pub source: SourceMode,
    /// `include`: glob patterns on the key relative to the prefix (empty = everything).
    pub include: Vec<String>,
    /// `exclude`: glob patterns; exclude wins over include.
    pub exclude: Vec<String>,
    /// `deleteExtraneous`: remove files the component wrote whose objects are gone.
    pub delete_extraneous: bool,
    /// `maxDeletePercent`: refuse a pass that would delete more than this share of the files.
    pub max_delete_percent: u8,
    /// `syncJitterPercent`: each interval is randomised by ± this share.
    pub sync_jitter_percent: u8,
    /// `mqtt`: publish status over MQTT directly (outside Greengrass).
    pub mqtt: Option<MqttSettings>,
    /// `bandwidthLimitBytesPerSec`: total download rate (0 = unlimited).
    pub bandwidth_limit: u64,
    /// `rangedDownloadThresholdBytes`: larger objects are fetched in parallel ranged parts
    /// (half this size each) and resume after interruptions; 0 disables.
    pub ranged_threshold: u64,
    /// `maxDeferSeconds`: how long a running pass may hold back a component update (Greengrass).
    pub max_defer: Duration,
    /// `credentialsSource`.
    pub credentials_source: CredentialsSource,
    /// `fileMode`: permission bits of written files (`None`: 0666 less the umask).
    pub file_mode: Option<u32>,
    /// `dirMode`: permission bits of created folders (`None`: 0777 less the umask).
    pub dir_mode: Option<u32>,
    /// `releases`: atomic content releases (`None`: files are replaced one by one).
    pub releases: Option<ReleaseSettings>,
    /// `releaseTopic` (`None`: disabled): where "release live" documents go.
    pub release_topic: Option<String>,
}

/// `releases: {keep, dir}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseSettings {
    /// Releases kept (the live one included).
    pub keep: usize,
    /// The releases folder (default: `.<localDir name>.releases` beside `localDir`).
    pub dir: PathBuf,
}

/// The default releases folder: a hidden sibling of `localDir`, so on its file system.
#[must_use]
pub fn default_releases_dir(local_dir: &Path) -> PathBuf {
    hidden_sibling(local_dir, "releases")
}

/// `mqtt`: status over MQTT with the device certificate, for devices without Greengrass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSettings {
    /// `mqtt.endpoint`: the AWS IoT data endpoint or any broker (port 8883 unless given).
    pub endpoint: Endpoint,
    /// `mqtt.caPath`: CAs for the broker (default: `rootCaPath`).
    pub ca_path: Option<PathBuf>,
    /// `mqtt.clientId`: default the thing name (AWS IoT policies usually require it).
    pub client_id: String,
}

/// Where the list of objects comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceMode {
    /// ListObjectsV2 under the prefix (needs `s3:ListBucket`).
    Prefix,
    /// `keys`: these object keys, nothing listed (`s3:GetObject` only).
    Keys(Vec<String>),
    /// `manifestKey`: the keys listed in this object (`s3:GetObject` only).
    Manifest(String),
}

/// The result of a successful parse: the configuration and what deserves a warning.
#[derive(Debug)]
pub struct Parsed {
    /// The configuration.
    pub config: Config,
    /// Unknown keys and normalisations, one sentence each.
    pub warnings: Vec<String>,
}

impl Config {
    /// Loads a YAML or JSON file (JSON is valid YAML; `.json` files are parsed as JSON for
    /// better error positions). Relative paths inside are resolved against the file's folder.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or the invalid keys.
    pub fn load_file(path: &Path, working_dir: &Path) -> Result<Parsed, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let value: Value = if is_json {
            serde_json::from_str(&text).map_err(|e| ConfigError::Syntax {
                path: path.to_owned(),
                format: "JSON",
                detail: e.to_string(),
            })?
        } else {
            serde_norway::from_str(&text).map_err(|e| ConfigError::Syntax {
                path: path.to_owned(),
                format: "YAML",
                detail: e.to_string(),
            })?
        };
        let file_dir = path.parent().unwrap_or(Path::new(""));
        let base = working_dir.join(file_dir);
        // No working-folder default in file mode: where the command happens to run must not
        // decide where the state lives (see `default_state_dir`).
        Self::from_value_with(&value, &base, None)
    }

    /// Validates a configuration document.
    ///
    /// `base_dir` resolves relative paths (the config file's folder); `working_dir` is the
    /// default `stateDir` (under Greengrass, the component's work folder).
    ///
    /// # Errors
    /// [`ConfigError::NotAnObject`] or [`ConfigError::Invalid`] listing every bad key.
    pub fn from_value(
        value: &Value,
        base_dir: &Path,
        working_dir: &Path,
    ) -> Result<Parsed, ConfigError> {
        Self::from_value_with(value, base_dir, Some(working_dir))
    }

    /// As [`Config::from_value`]; without `working_dir`, `stateDir` defaults to
    /// [`default_state_dir`] of `localDir`.
    ///
    /// # Errors
    /// As [`Config::from_value`].
    pub fn from_value_with(
        value: &Value,
        base_dir: &Path,
        working_dir: Option<&Path>,
    ) -> Result<Parsed, ConfigError> {
        let map = match value {
            Value::Object(m) => m,
            Value::Null => return Err(ConfigError::NotAnObject { found: "nothing" }),
            Value::Array(_) => return Err(ConfigError::NotAnObject { found: "a list" }),
            _ => return Err(ConfigError::NotAnObject { found: "a scalar" }),
        };
        let mut r = Reader {
            map,
            errors: Vec::new(),
            base_dir,
        };
        let mut warnings = unknown_key_warnings(map);

        let role_alias = r.required_str("roleAlias").and_then(|s| r.role_alias(&s));
        let bucket = r.required_str("bucket").and_then(|s| r.bucket(&s));
        let prefix = r.prefix(&mut warnings);
        let local_dir = r.required_path("localDir");
        let sync_interval = r.number(
            "syncIntervalSeconds",
            DEFAULT_SYNC_INTERVAL_SECS,
            1,
            MAX_SYNC_INTERVAL_SECS,
        );
        let max_concurrency = r.number(
            "maxConcurrency",
            DEFAULT_MAX_CONCURRENCY,
            1,
            MAX_CONCURRENCY_LIMIT,
        );
        let region = r.required_str("region").and_then(|s| r.region(&s));
        let s3_endpoint_url = r.optional_str("s3EndpointUrl").and_then(|s| r.url(&s));
        let s3_force_path_style = r.boolean("s3ForcePathStyle", false);
        let credentials_endpoint = r.required_str("credentialsEndpoint").and_then(|s| {
            Endpoint::parse(&s)
                .map_err(|p| r.fail::<()>("credentialsEndpoint", p))
                .ok()
        });
        let thing_name = r.optional_str("thingName");
        let certificate_file_path = r.required_path("certificateFilePath");
        let private_key_path = r.required_path("privateKeyPath");
        let root_ca_path = r.required_path("rootCaPath");
        let state_dir = match (r.optional_str("stateDir"), working_dir, &local_dir) {
            (Some(s), _, _) => Some(base_dir.join(s)),
            (None, Some(w), _) => Some(w.to_owned()),
            (None, None, Some(l)) => Some(default_state_dir(l)),
            (None, None, None) => None,
        };
        if let (Some(state), Some(local)) = (&state_dir, &local_dir) {
            if lexically_inside(state, local) {
                r.fail::<()>(
                    "stateDir",
                    format!(
                        "'{}' is inside localDir '{}': an object could overwrite the sync state; choose a folder outside localDir (default: {})",
                        state.display(),
                        local.display(),
                        default_state_dir(local).display()
                    ),
                );
            }
        }
        let status_topic = r
            .topic(
                "statusTopic",
                true,
                &default_status_topic(thing_name.as_deref()),
            )
            .and_then(|t| r.with_thing_name("statusTopic", t, thing_name.as_deref()));
        let local_status_topic = r.topic("localStatusTopic", true, DEFAULT_LOCAL_STATUS_TOPIC);
        let trigger_topic = r.topic("triggerTopic", false, DEFAULT_TRIGGER_TOPIC);
        let release_topic = r.topic("releaseTopic", true, DEFAULT_RELEASE_TOPIC);
        let releases = r.releases(local_dir.as_deref(), state_dir.as_deref(), &mut warnings);
        // "Release live" documents are only published with releases on.
        let published_release_topic = match &releases {
            Some(Some(_)) => release_topic.as_ref(),
            _ => None,
        };

        let keys = r.string_list("keys");
        let manifest_key = r.optional_str("manifestKey");
        let include = r
            .string_list("include")
            .map(|v| r.patterns("include", v))
            .unwrap_or_default();
        let exclude = r
            .string_list("exclude")
            .map(|v| r.patterns("exclude", v))
            .unwrap_or_default();
        let delete_extraneous = r.boolean("deleteExtraneous", false);
        let max_delete_percent = r.number("maxDeletePercent", DEFAULT_MAX_DELETE_PERCENT, 0, 100);
        let sync_jitter_percent = r.number("syncJitterPercent", DEFAULT_SYNC_JITTER_PERCENT, 0, 50);
        let source = r.source(keys, manifest_key, prefix.as_deref(), &mut warnings);
        let mqtt = r.mqtt(thing_name.as_deref());
        // Local status always shares the trigger's bus; statusTopic only in MQTT mode.
        let mqtt_status = match &mqtt {
            Some(Some(_)) => status_topic.as_ref(),
            _ => None,
        };
        r.trigger_not_own_status(
            trigger_topic.as_ref(),
            &[
                local_status_topic.as_ref(),
                mqtt_status,
                published_release_topic,
            ],
        );
        let bandwidth_limit = r.number("bandwidthLimitBytesPerSec", 0, 0, 10_000_000_000);
        let ranged_threshold = r
            .number(
                "rangedDownloadThresholdBytes",
                DEFAULT_RANGED_THRESHOLD,
                0,
                1 << 40,
            )
            .and_then(|t| {
                if t == 0 || t >= 64 * 1024 {
                    Some(t)
                } else {
                    r.fail(
                        "rangedDownloadThresholdBytes",
                        format!("expected 0 (off) or at least 65536, got {t}"),
                    )
                }
            });
        let max_defer = r.number("maxDeferSeconds", DEFAULT_MAX_DEFER_SECS, 0, 86_400);
        let credentials_source = match r.optional_str("credentialsSource").as_deref() {
            None | Some("auto") => Some(CredentialsSource::Auto),
            Some("iot") => Some(CredentialsSource::Iot),
            Some("tes") => Some(CredentialsSource::Tes),
            Some(other) => r.fail(
                "credentialsSource",
                format!("expected \"auto\", \"iot\" or \"tes\", got '{other}'"),
            ),
        };
        let file_mode = r.mode("fileMode", 0o400);
        let dir_mode = r.mode("dirMode", 0o700);
        let refresh_ahead = r.number(
            "credentialsRefreshAheadSeconds",
            DEFAULT_REFRESH_AHEAD_SECS,
            0,
            43_200,
        );

        if !r.errors.is_empty() {
            return Err(ConfigError::Invalid(r.errors));
        }
        // Every `None` above recorded an error, so all are present here.
        let config = (|| {
            Some(Config {
                role_alias: role_alias?,
                bucket: bucket?,
                prefix: prefix?,
                local_dir: local_dir?,
                sync_interval: Duration::from_secs(sync_interval?),
                max_concurrency: usize::try_from(max_concurrency?).ok()?,
                region: region?,
                s3_endpoint_url,
                s3_force_path_style: s3_force_path_style?,
                credentials_endpoint: credentials_endpoint?,
                thing_name,
                certificate_file_path: certificate_file_path?,
                private_key_path: private_key_path?,
                root_ca_path: root_ca_path?,
                state_dir: state_dir?,
                credentials_refresh_ahead: Duration::from_secs(refresh_ahead?),
                status_topic: status_topic?,
                local_status_topic: local_status_topic?,
                trigger_topic: trigger_topic?,
                source: source?,
                include,
                exclude,
                delete_extraneous: delete_extraneous?,
                max_delete_percent: u8::try_from(max_delete_percent?).ok()?,
                sync_jitter_percent: u8::try_from(sync_jitter_percent?).ok()?,
                mqtt: mqtt?,
                bandwidth_limit: bandwidth_limit?,
                ranged_threshold: ranged_threshold?,
                max_defer: Duration::from_secs(max_defer?),
                credentials_source: credentials_source?,
                file_mode: file_mode?,
                dir_mode: dir_mode?,
                releases: releases?,
                release_topic: release_topic?,
            })
        })();
        config
            .map(|config| Parsed { config, warnings })
            .ok_or_else(|| {
                ConfigError::Invalid(vec![FieldError {
                    key: "(configuration)".into(),
                    problem: "internal validation error".into(),
                }])
            })
    }
}

fn unknown_key_warnings(map: &Map<String, Value>) -> Vec<String> {
    let known: BTreeSet<&str> = KNOWN_KEYS.iter().chain(NUCLEUS_KEYS).copied().collect();
    map.keys()
        .filter(|k| !known.contains(k.as_str()))
        .map(|k| {
            match KNOWN_KEYS.iter().find(|known| known.eq_ignore_ascii_case(k)) {
                Some(close) => format!(
                    "unknown configuration key '{k}' ignored; did you mean '{close}'? (keys are case-sensitive)"
                ),
                None => format!("unknown configuration key '{k}' ignored"),
            }
        })
        .collect()
}

/// Reads typed values out of the map, recording every problem.
struct Reader<'a> {
    map: &'a Map<String, Value>,
    errors: Vec<FieldError>,
    base_dir: &'a Path,
}

impl Reader<'_> {
    fn fail<T>(&mut self, key: &str, problem: impl Into<String>) -> Option<T> {
        self.errors.push(FieldError {
            key: key.to_owned(),
            problem: problem.into(),
        });
        None
    }

    /// A string value; `null` and absent are `None`, other types are errors.
    fn raw_str(&mut self, key: &str) -> Result<Option<String>, ()> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(Value::Number(n)) => Ok(Some(number_text(n))),
            Some(other) => {
                self.fail::<()>(key, format!("expected a string, got {}", kind(other)));
                Err(())
            }
        }
    }

    fn optional_str(&mut self, key: &str) -> Option<String> {
        self.raw_str(key).ok().flatten().filter(|s| !s.is_empty())
    }

    fn required_str(&mut self, key: &str) -> Option<String> {
        match self.raw_str(key) {
            Ok(Some(s)) if !s.is_empty() => Some(s),
            Ok(_) => {
                // `localdir` for `localDir`: name the key that was given instead.
                let near = self
                    .map
                    .keys()
                    .find(|k| k.as_str() != key && k.eq_ignore_ascii_case(key));
                match near {
                    Some(k) => self.fail(
                        key,
                        format!("required, but missing or empty; the configuration has '{k}' (keys are case-sensitive: rename it to '{key}')"),
                    ),
                    None => self.fail(key, "required, but missing or empty"),
                }
            }
            Err(()) => None,
        }
    }

    fn required_path(&mut self, key: &str) -> Option<PathBuf> {
        let s = self.required_str(key)?;
        if s.contains('\0') {
            return self.fail(key, "a path cannot contain a NUL character");
        }
        // A key in an HSM or a TPM (`pkcs11:…`, `handle:…`) is a URI, not a file to resolve.
        if is_key_uri(&s) {
            return Some(PathBuf::from(s));
        }
        Some(self.base_dir.join(s))
    }

    /// The `mqtt` map; absent, `null` or without `endpoint` = disabled.
    fn mqtt(&mut self, thing_name: Option<&str>) -> Option<Option<MqttSettings>> {
        let map = match self.map.get("mqtt") {
            None | Some(Value::Null) => return Some(None),
            Some(Value::String(s)) if s.trim().is_empty() => return Some(None),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return self.fail(
                    "mqtt",
                    format!("expected a map such as {{\"endpoint\": \"abc-ats.iot.us-east-1.amazonaws.com\"}}, got {}", kind(other)),
                )
            }
        };
        let text = |k: &str| {
            map.get(k)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        for k in map
            .keys()
            .filter(|k| !["endpoint", "caPath", "clientId"].contains(&k.as_str()))
        {
            self.fail::<()>(
                "mqtt",
                format!("unknown key '{k}' (expected endpoint, caPath, clientId)"),
            );
        }
        let Some(endpoint) = text("endpoint") else {
            return Some(None);
        };
        let endpoint = match Endpoint::parse(&endpoint) {
            Ok(mut e) => {
                // A bare host means the MQTT-over-TLS port, not HTTPS's.
                if endpoint
                    .trim_end_matches('/')
                    .rsplit_once(':')
                    .is_none_or(|(_, p)| p.parse::<u16>().is_err())
                {
                    e.port = 8883;
                }
                e
            }
            Err(p) => return self.fail("mqtt.endpoint", p),
        };
        let Some(client_id) = text("clientId").or_else(|| thing_name.map(str::to_owned)) else {
            return self.fail("mqtt.clientId", "required when thingName is not set");
        };
        Some(Some(MqttSettings {
            endpoint,
            ca_path: text("caPath").map(|p| self.base_dir.join(p)),
            client_id,
        }))
    }

    /// Substitutes `{thingName}` in a topic (the recipe's default uses it; nucleus lite cannot
    /// interpolate configuration).
    fn with_thing_name(
        &mut self,
        key: &str,
        topic: Option<String>,
        thing: Option<&str>,
    ) -> Option<Option<String>> {
        match (topic, thing) {
            (Some(t), Some(thing)) => Some(Some(t.replace("{thingName}", thing))),
            (Some(t), None) if t.contains("{thingName}") => self.fail(
                key,
                format!("'{t}' uses {{thingName}}, but thingName is not set"),
            ),
            (t, _) => Some(t),
        }
    }

    /// A list of strings: absent, `null` or `""` = empty.
    fn string_list(&mut self, key: &str) -> Option<Vec<String>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::String(s)) if s.trim().is_empty() => Some(Vec::new()),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) if !s.is_empty() => out.push(s.clone()),
                        Value::Number(n) => out.push(number_text(n)),
                        other => {
                            return self.fail(
                                key,
                                format!(
                                    "item {i}: expected a non-empty string, got {}",
                                    kind(other)
                                ),
                            );
                        }
                    }
                }
                Some(out)
            }
            Some(other) => self.fail(
                key,
                format!(
                    "expected a list of strings such as [\"a.txt\", \"b/c.txt\"], got {}",
                    kind(other)
                ),
            ),
        }
    }

    fn patterns(&mut self, key: &str, patterns: Vec<String>) -> Vec<String> {
        for p in &patterns {
            if let Err(problem) = crate::glob::Glob::new(p) {
                self.fail::<()>(key, format!("'{p}': {problem}"));
            }
        }
        patterns
    }

    fn source(
        &mut self,
        keys: Option<Vec<String>>,
        manifest: Option<String>,
        prefix: Option<&str>,
        warnings: &mut Vec<String>,
    ) -> Option<SourceMode> {
        let mut keys = keys?;
        // A key listed twice would be fetched twice into one file by two tasks.
        let mut seen = BTreeSet::new();
        let mut repeated = BTreeSet::new();
        keys.retain(|k| {
            let first = seen.insert(k.clone());
            if !first {
                repeated.insert(k.clone());
            }
            first
        });
        for k in &repeated {
            warnings.push(format!(
                "keys: '{k}' is listed more than once; it is synced once"
            ));
        }
        let prefix = prefix.unwrap_or("");
        match (keys.is_empty(), manifest) {
            (true, None) => Some(SourceMode::Prefix),
            (false, Some(_)) => {
                self.fail("manifestKey", "set either keys or manifestKey, not both")
            }
            (true, Some(m)) => Some(SourceMode::Manifest(m)),
            (false, None) => {
                let outside: Vec<&String> =
                    keys.iter().filter(|k| !k.starts_with(prefix)).collect();
                if let Some(k) = outside.first() {
                    return self.fail(
                        "keys",
                        format!("'{k}' is not under prefix '{prefix}'; keys are full object keys, synced relative to the prefix"),
                    );
                }
                Some(SourceMode::Keys(keys))
            }
        }
    }

    /// `releases`: absent, `null` or `false` = off; a map `{keep, dir}` = on.
    fn releases(
        &mut self,
        local_dir: Option<&Path>,
        state_dir: Option<&Path>,
        warnings: &mut Vec<String>,
    ) -> Option<Option<ReleaseSettings>> {
        let map = match self.map.get("releases") {
            None | Some(Value::Null | Value::Bool(false)) => return Some(None),
            Some(Value::String(s)) if s.trim().is_empty() => return Some(None),
            Some(Value::Object(m)) => m.clone(),
            Some(Value::Bool(true)) => Map::new(),
            Some(other) => {
                return self.fail(
                    "releases",
                    format!(
                        "expected a map such as {{\"keep\": 3}}, got {}",
                        kind(other)
                    ),
                )
            }
        };
        for k in map
            .keys()
            .filter(|k| !["keep", "dir"].contains(&k.as_str()))
        {
            self.fail::<()>(
                "releases",
                format!("unknown key '{k}' (expected keep, dir)"),
            );
        }
        let keep = match map.get("keep") {
            None | Some(Value::Null) => Some(DEFAULT_RELEASES_KEEP),
            Some(Value::Number(n)) => number_value(n),
            Some(Value::String(s)) => s.trim().parse().ok(),
            Some(_) => None,
        };
        let keep = match keep {
            // `{keep: 0}`: off (the recipe's default, so a deployment merges a number in).
            Some(0) => return Some(None),
            Some(k @ 1..=100) => k,
            _ => {
                return self.fail(
                    "releases.keep",
                    format!(
                        "expected a whole number from 1 to 100 (releases kept, the live one included; 0 = off), got {}",
                        map.get("keep").map_or_else(|| "nothing".into(), ToString::to_string)
                    ),
                )
            }
        };
        let local_dir = local_dir?;
        if local_dir.file_name().is_none() {
            return self.fail(
                "localDir",
                "with releases on, localDir must name a folder (it becomes a link), not a root such as /",
            );
        }
        let dir = match map.get("dir") {
            None | Some(Value::Null) => default_releases_dir(local_dir),
            Some(Value::String(s)) if s.trim().is_empty() => default_releases_dir(local_dir),
            Some(Value::String(s)) => self.base_dir.join(s.trim()),
            Some(other) => {
                return self.fail(
                    "releases.dir",
                    format!("expected a path, got {}", kind(other)),
                )
            }
        };
        if lexically_inside(&dir, local_dir) || lexically_inside(local_dir, &dir) {
            return self.fail(
                "releases.dir",
                format!(
                    "'{}' overlaps localDir '{}': the releases must be beside localDir, which becomes a link to one of them (default: {})",
                    dir.display(),
                    local_dir.display(),
                    default_releases_dir(local_dir).display()
                ),
            );
        }
        if let Some(state) = state_dir.filter(|s| lexically_inside(s, &dir)) {
            return self.fail(
                "stateDir",
                format!(
                    "'{}' is inside releases.dir '{}', whose folders are removed as releases age; choose a folder outside it",
                    state.display(),
                    dir.display()
                ),
            );
        }
        if matches!(self.map.get("deleteExtraneous"), Some(Value::Bool(false)))
            || matches!(self.map.get("deleteExtraneous"), Some(Value::String(s)) if s.trim() == "false")
        {
            warnings.push(
                "deleteExtraneous: false is ignored with releases on: a release holds exactly the objects of its pass"
                    .into(),
            );
        }
        Some(Some(ReleaseSettings {
            keep: usize::try_from(keep).ok()?,
            dir,
        }))
    }

    /// A topic: absent = `default`, "" = disabled (`Some(None)`), else validated.
    fn topic(&mut self, key: &str, publish: bool, default: &str) -> Option<Option<String>> {
        let raw = match self.map.get(key) {
            None | Some(Value::Null) => return Some(Some(default.to_owned())),
            Some(Value::String(s)) => s.trim().to_owned(),
            Some(Value::Number(n)) => number_text(n),
            Some(other) => {
                return self.fail(key, format!("expected a topic string, got {}", kind(other)))
            }
        };
        if raw.is_empty() {
            return Some(None);
        }
        let wildcard = raw.contains(['#', '+', '*']);
        if publish && wildcard {
            return self.fail(
                key,
                format!("a topic to publish on cannot contain wildcards, got '{raw}'"),
            );
        }
        if raw.len() > 256 || raw.starts_with("$aws") && publish && !raw.starts_with("$aws/rules/")
        {
            return self.fail(key, format!("'{raw}' is not a topic this component may publish on (reserved or over 256 characters)"));
        }
        Some(Some(raw))
    }

    /// Permission bits as an octal string (`"0640"`, `"640"`); absent or `""` = the umask's.
    /// `needed` bits the component itself needs (to read back files, to work in folders).
    fn mode(&mut self, key: &str, needed: u32) -> Option<Option<u32>> {
        let raw = match self.map.get(key) {
            None | Some(Value::Null) => return Some(None),
            Some(Value::String(s)) if s.trim().is_empty() => return Some(None),
            Some(Value::String(s)) => s.trim().to_owned(),
            Some(other) => {
                return self.fail(
                    key,
                    format!(
                        "expected an octal string such as \"0640\", got {}",
                        kind(other)
                    ),
                )
            }
        };
        let digits = raw.strip_prefix("0o").unwrap_or(&raw);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o777 && m & needed == needed => Some(Some(m)),
            Ok(m) if m <= 0o777 => self.fail(
                key,
                format!("{raw} leaves out {needed:o}, which the component needs itself (e.g. \"0{:o}\")", m | needed),
            ),
            _ => self.fail(
                key,
                format!("expected permission bits in octal from 0000 to 0777 such as \"0640\", got '{raw}'"),
            ),
        }
    }

    /// A trigger filter that matches a topic the component publishes its status on would
    /// start a pass with every status document: nucleus lite delivers a component's own
    /// messages (it has no receive mode), and so does MQTT.
    fn trigger_not_own_status(
        &mut self,
        trigger: Option<&Option<String>>,
        status: &[Option<&Option<String>>],
    ) {
        let Some(Some(filter)) = trigger else {
            return;
        };
        for topic in status.iter().flatten().copied().flatten() {
            if crate::topic::matches(filter, topic) {
                self.fail::<()>(
                    "triggerTopic",
                    format!("'{filter}' matches the status topic '{topic}' (a topic this component publishes on), so every document it publishes would start another pass; use a topic of its own (default '{DEFAULT_TRIGGER_TOPIC}')"),
                );
                return;
            }
        }
    }

    fn number(&mut self, key: &str, default: u64, min: u64, max: u64) -> Option<u64> {
        let expected = format!("expected a whole number from {min} to {max}");
        let n = match self.map.get(key) {
            None | Some(Value::Null) => return Some(default),
            Some(Value::Number(n)) => number_value(n),
            Some(Value::String(s)) if s.trim().is_empty() => return Some(default),
            Some(Value::String(s)) => s
                .trim()
                .parse::<serde_json::Number>()
                .ok()
                .and_then(|n| number_value(&n)),
            Some(other) => return self.fail(key, format!("{expected}, got {}", kind(other))),
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                let shown = self.map.get(key).map(Value::to_string).unwrap_or_default();
                self.fail(key, format!("{expected}, got {shown}"))
            }
        }
    }

    fn boolean(&mut self, key: &str, default: bool) -> Option<bool> {
        match self.map.get(key) {
            None | Some(Value::Null) => Some(default),
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) if s.trim().is_empty() => Some(default),
            Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("true") => Some(true),
            Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("false") => Some(false),
            Some(other) => self.fail(
                key,
                format!("expected true or false, got {}", other.to_string().trim()),
            ),
        }
    }

    fn role_alias(&mut self, s: &str) -> Option<String> {
        let ok = (1..=128).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '=' | ',' | '@' | '-' | '_'));
        if ok {
            Some(s.to_owned())
        } else {
            self.fail(
                "roleAlias",
                format!(
                    "expected an AWS IoT role alias name (1-128 characters: letters, digits, \
                     '=', ',', '@', '-', '_'), got '{s}'; use the alias name, not its ARN"
                ),
            )
        }
    }

    fn bucket(&mut self, s: &str) -> Option<String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (b, p) = rest.split_once('/').unwrap_or((rest, ""));
            return self.fail(
                "bucket",
                format!("expected a bucket name, got the URL '{s}'; set bucket: '{b}' and prefix: '{p}'"),
            );
        }
        if let Some((b, p)) = s.split_once('/') {
            return self.fail(
                "bucket",
                format!("a bucket name cannot contain '/', got '{s}'; set bucket: '{b}' and prefix: '{p}'"),
            );
        }
        let valid = (3..=63).contains(&s.len())
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric();
        if valid {
            Some(s.to_owned())
        } else {
            self.fail(
                "bucket",
                format!(
                    "expected an S3 bucket name (3-63 characters: lowercase letters, digits, \
                     '.', '-'; starting and ending with a letter or digit), got '{s}'"
                ),
            )
        }
    }

    fn prefix(&mut self, warnings: &mut Vec<String>) -> Option<String> {
        let key = "prefix";
        let s = match self.raw_str(key) {
            Ok(s) => s.unwrap_or_default(),
            Err(()) => return None,
        };
        if s.starts_with('/') {
            let suggestion = s.trim_start_matches('/');
            return self.fail(
                key,
                format!("S3 keys do not start with '/', got '{s}'; use '{suggestion}'"),
            );
        }
        if s.contains('\0') {
            return self.fail(key, "a prefix cannot contain a NUL character");
        }
        if s.is_empty() || s.ends_with('/') {
            return Some(s);
        }
        warnings.push(format!(
            "prefix '{s}' is treated as the folder '{s}/' (objects such as '{s}-other' are not synced)"
        ));
        Some(format!("{s}/"))
    }

    fn region(&mut self, s: &str) -> Option<String> {
        let ok = s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && s.len() <= 32;
        if ok {
            Some(s.to_owned())
        } else {
            self.fail(
                "region",
                format!("expected an AWS region such as 'us-east-1', got '{s}'"),
            )
        }
    }

    fn url(&mut self, s: &str) -> Option<String> {
        let rest = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"));
        match rest {
            Some(r) if !r.is_empty() && !r.contains(char::is_whitespace) => {
                Some(s.trim_end_matches('/').to_owned())
            }
            _ => self.fail(
                "s3EndpointUrl",
                format!("expected an http:// or https:// URL such as 'https://s3.us-east-1.amazonaws.com', got '{s}'"),
            ),
        }
    }
}

/// Whether a key "path" names a key in an HSM (PKCS#11 URI) or a TPM (`handle:`), as both
/// nuclei accept in `privateKeyPath`; such a key has no file the component could present.
#[must_use]
pub fn is_key_uri(path: &str) -> bool {
    path.starts_with("pkcs11:") || path.starts_with("handle:")
}

/// Where AWS credentials come from (`credentialsSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CredentialsSource {
    /// `iot` when the device key is a readable file, `tes` when it is an HSM/TPM URI or
    /// unreadable and the nucleus's token exchange service is offered.
    #[default]
    Auto,
    /// This component's own exchange at the AWS IoT credentials provider (`roleAlias`).
    Iot,
    /// The nucleus's token exchange service (its own role alias).
    Tes,
}

/// Where the state lives when `stateDir` is not set outside Greengrass: a hidden sibling of
/// `localDir` (`/var/lib/site` → `/var/lib/.site.gg-s3-sync`), so it is on the same file system,
/// never inside the synced folder, and the same wherever the command is started.
#[must_use]
pub fn default_state_dir(local_dir: &Path) -> PathBuf {
    hidden_sibling(local_dir, "gg-s3-sync")
}

/// `.<localDir name>.<suffix>` in `localDir`'s folder.
fn hidden_sibling(local_dir: &Path, suffix: &str) -> PathBuf {
    let name = local_dir
        .file_name()
        .map_or_else(|| "root".into(), |n| n.to_string_lossy().into_owned());
    local_dir
        .parent()
        .unwrap_or(Path::new("/"))
        .join(format!(".{name}.{suffix}"))
}

/// Whether `inner` is `outer` or below it, comparing normalised components (`.` and `..`
/// resolved without touching the file system).
fn lexically_inside(inner: &Path, outer: &Path) -> bool {
    fn normal(p: &Path) -> Vec<std::ffi::OsString> {
        let mut out = Vec::new();
        for c in p.components() {
            match c {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                other => out.push(other.as_os_str().to_owned()),
            }
        }
        out
    }
    normal(inner).starts_with(&normal(outer))
}

/// A number given where text is expected, as the user wrote it. The classic nucleus parses
/// cloud deployments with Gson, which turns every JSON number into a double: a prefix deployed
/// as `2024` arrives as `2024.0` (and `007` cannot survive any JSON parser). A whole double is
/// rendered without its `.0`; other numbers as JSON prints them.
fn number_text(n: &serde_json::Number) -> String {
    if let (None, None, Some(f)) = (n.as_u64(), n.as_i64(), n.as_f64()) {
        // 2^53: beyond it a double no longer holds every whole number exactly.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        if f.fract() == 0.0 && f.abs() <= EXACT {
            #[allow(clippy::cast_possible_truncation)]
            return (f as i64).to_string();
        }
    }
    n.to_string()
}

fn number_value(n: &serde_json::Number) -> Option<u64> {
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    let f = n.as_f64()?;
    // Greengrass may deliver 300 as 300.0; accept integral floats only.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ok = (f.fract() == 0.0 && (0.0..=9.0e15).contains(&f)).then_some(f as u64);
    ok
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "roleAlias": "S3SyncRoleAlias",
            "bucket": "my-bucket",
            "localDir": "/var/lib/sync",
            "region": "us-east-1",
            "credentialsEndpoint": "abc.credentials.iot.us-east-1.amazonaws.com",
            "thingName": "thing-1",
            "certificateFilePath": "/greengrass/v2/thingCert.crt",
            "privateKeyPath": "/greengrass/v2/privKey.key",
            "rootCaPath": "/greengrass/v2/rootCA.pem",
        })
    }

    fn with(key: &str, v: Value) -> Value {
        let mut b = base();
        b.as_object_mut().unwrap().insert(key.into(), v);
        b
    }

    fn ok(v: &Value) -> Parsed {
        Config::from_value(v, Path::new("/etc/gg"), Path::new("/work")).unwrap()
    }

    fn err(v: &Value) -> Vec<FieldError> {
        match Config::from_value(v, Path::new("/etc/gg"), Path::new("/work")) {
            Err(ConfigError::Invalid(e)) => e,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply() {
        let c = ok(&base()).config;
        assert_eq!(c.prefix, "");
        assert_eq!(c.sync_interval, Duration::from_secs(300));
        assert_eq!(c.max_concurrency, 8);
        assert!(!c.s3_force_path_style);
        assert_eq!(c.s3_endpoint_url, None);
        assert_eq!(c.state_dir, PathBuf::from("/work"));
        assert_eq!(c.credentials_refresh_ahead, Duration::from_secs(300));
        assert_eq!(c.credentials_endpoint.port, 443);
    }

    #[test]
    fn numbers_and_booleans_as_strings_and_floats() {
        let mut v = base();
        let m = v.as_object_mut().unwrap();
        m.insert("syncIntervalSeconds".into(), json!("60"));
        m.insert("maxConcurrency".into(), json!(4.0));
        m.insert("s3ForcePathStyle".into(), json!("TRUE"));
        let c = ok(&v).config;
        assert_eq!(c.sync_interval, Duration::from_secs(60));
        assert_eq!(c.max_concurrency, 4);
        assert!(c.s3_force_path_style);
    }

    /// The classic nucleus parses cloud deployments with Gson: every number is a double.
    #[test]
    fn gson_doubles_in_text_keys_keep_their_written_form() {
        let mut v = base();
        let m = v.as_object_mut().unwrap();
        m.insert("prefix".into(), json!(2024.0));
        m.insert("bucket".into(), json!(123_456.0));
        m.insert("syncIntervalSeconds".into(), json!(600.0));
        m.insert("triggerTopic".into(), json!(42.0));
        let c = ok(&v).config;
        assert_eq!(c.prefix, "2024/", "not 2024.0/");
        assert_eq!(c.bucket, "123456");
        assert_eq!(c.sync_interval, Duration::from_secs(600));
        assert_eq!(c.trigger_topic.as_deref(), Some("42"));
        let c = ok(&with("keys", json!([2024.0, "a.txt", 7.5]))).config;
        assert_eq!(
            c.source,
            SourceMode::Keys(vec!["2024".into(), "a.txt".into(), "7.5".into()])
        );
        assert_eq!(number_text(&serde_json::Number::from(-3)), "-3");
        let huge = serde_json::Number::from_f64(1.0e20).unwrap();
        assert_eq!(
            number_text(&huge),
            "1e+20",
            "not exact: left as JSON prints it"
        );
    }

    #[test]
    fn bad_values_name_the_key_and_form() {
        let mut v = base();
        let m = v.as_object_mut().unwrap();
        m.insert("syncIntervalSeconds".into(), json!("5m"));
        m.insert("maxConcurrency".into(), json!(0));
        m.insert("s3ForcePathStyle".into(), json!("yes"));
        m.remove("localDir");
        let e = err(&v);
        let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "localDir",
                "syncIntervalSeconds",
                "maxConcurrency",
                "s3ForcePathStyle"
            ]
        );
        assert!(
            e[1].problem.contains("whole number from 1 to 604800"),
            "{}",
            e[1]
        );
        assert!(e[1].problem.contains("\"5m\""), "{}", e[1]);
        assert!(e[3].problem.contains("true or false"), "{}", e[3]);
    }

    #[test]
    fn bucket_urls_and_paths_are_explained() {
        let e = err(&with("bucket", json!("s3://b-1/data/x")));
        assert!(
            e[0].problem.contains("bucket: 'b-1' and prefix: 'data/x'"),
            "{}",
            e[0]
        );
        let e = err(&with("bucket", json!("b-1/data")));
        assert!(e[0].problem.contains("cannot contain '/'"), "{}", e[0]);
        let e = err(&with("bucket", json!("My_Bucket")));
        assert!(e[0].problem.contains("lowercase"), "{}", e[0]);
    }

    #[test]
    fn prefix_is_a_folder() {
        let p = ok(&with("prefix", json!("data")));
        assert_eq!(p.config.prefix, "data/");
        assert!(p.warnings[0].contains("folder 'data/'"));
        assert_eq!(ok(&with("prefix", json!("data/"))).config.prefix, "data/");
        let e = err(&with("prefix", json!("/data/")));
        assert!(e[0].problem.contains("use 'data/'"), "{}", e[0]);
    }

    #[test]
    fn file_and_dir_modes_are_octal_and_keep_what_the_component_needs() {
        let c = ok(&with("fileMode", json!("0640"))).config;
        assert_eq!(c.file_mode, Some(0o640));
        assert_eq!(
            ok(&with("dirMode", json!("750"))).config.dir_mode,
            Some(0o750)
        );
        assert_eq!(ok(&base()).config.file_mode, None);
        assert!(err(&with("fileMode", json!("0040")))[0]
            .problem
            .contains("0440"));
        assert!(err(&with("dirMode", json!("0500")))[0]
            .problem
            .contains("0700"));
        assert!(err(&with("fileMode", json!("0999")))[0]
            .problem
            .contains("octal"));
        assert!(err(&with("fileMode", json!(640)))[0]
            .problem
            .contains("octal string"));
    }

    #[test]
    fn duplicate_keys_are_synced_once_with_a_warning() {
        let p = ok(&with("keys", json!(["a.txt", "b.txt", "a.txt", "a.txt"])));
        assert_eq!(
            p.config.source,
            SourceMode::Keys(vec!["a.txt".into(), "b.txt".into()])
        );
        assert_eq!(
            p.warnings,
            ["keys: 'a.txt' is listed more than once; it is synced once"]
        );
    }

    #[test]
    fn a_required_key_in_the_wrong_case_is_named_in_the_error() {
        let mut v = base();
        let m = v.as_object_mut().unwrap();
        let dir = m.remove("localDir").unwrap();
        m.insert("localdir".into(), dir);
        let e = err(&v);
        assert_eq!(e[0].key, "localDir");
        assert!(
            e[0].problem.contains("'localdir'") && e[0].problem.contains("rename it to 'localDir'"),
            "{}",
            e[0].problem
        );
    }

    #[test]
    fn state_dir_is_never_inside_local_dir_nor_the_working_folder() {
        let v = base();
        let c = Config::from_value_with(&v, Path::new("/etc/gg"), None)
            .unwrap()
            .config;
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/.sync.gg-s3-sync"));
        for inside in [
            "/var/lib/sync",
            "/var/lib/sync/state",
            "/var/lib/sync/a/../state",
        ] {
            let e = err(&with("stateDir", json!(inside)));
            assert_eq!(e[0].key, "stateDir", "{inside}");
            assert!(e[0].problem.contains("inside localDir"), "{}", e[0].problem);
        }
        let c = ok(&with("stateDir", json!("/var/lib/sync-state"))).config;
        assert_eq!(
            c.state_dir,
            PathBuf::from("/var/lib/sync-state"),
            "a sibling with a common prefix is fine"
        );
    }

    #[test]
    fn releases_are_opt_in_beside_local_dir_and_checked() {
        let c = ok(&base()).config;
        assert_eq!(c.releases, None);
        let c = ok(&with("releases", json!({"keep": 2}))).config;
        assert_eq!(
            c.releases,
            Some(ReleaseSettings {
                keep: 2,
                dir: PathBuf::from("/var/lib/.sync.releases")
            })
        );
        assert_eq!(c.release_topic.as_deref(), Some(DEFAULT_RELEASE_TOPIC));
        assert_eq!(
            ok(&with("releases", json!({})))
                .config
                .releases
                .unwrap()
                .keep,
            3
        );
        assert_eq!(
            ok(&with("releases", json!({"keep": "5"})))
                .config
                .releases
                .unwrap()
                .keep,
            5
        );
        assert_eq!(ok(&with("releases", json!(false))).config.releases, None);
        // The recipe's default: off, ready for a deployment to merge a number in.
        assert_eq!(
            ok(&with("releases", json!({"keep": "0", "dir": ""})))
                .config
                .releases,
            None
        );
        for bad in [
            json!({"keep": -1}),
            json!({"keep": 101}),
            json!({"keep": "x"}),
            json!({"keep": 1.5}),
        ] {
            assert_eq!(
                err(&with("releases", bad.clone()))[0].key,
                "releases.keep",
                "{bad}"
            );
        }
        assert_eq!(
            err(&with("releases", json!({"kept": 2})))[0].key,
            "releases"
        );
        assert_eq!(err(&with("releases", json!(3)))[0].key, "releases");
        for inside in ["/var/lib/sync/r", "/var/lib/sync", "/var"] {
            let e = err(&with("releases", json!({"dir": inside})));
            assert_eq!(e[0].key, "releases.dir", "{inside}");
            assert!(
                e[0].problem.contains("overlaps localDir"),
                "{}",
                e[0].problem
            );
        }
        let mut v = with("releases", json!({"dir": "/data/rel"}));
        v["stateDir"] = json!("/data/rel/state");
        assert_eq!(err(&v)[0].key, "stateDir");
        let mut v = with("releases", json!({}));
        v["deleteExtraneous"] = json!(false);
        let p = ok(&v);
        assert!(
            p.warnings.iter().any(|w| w.contains("deleteExtraneous")),
            "{:?}",
            p.warnings
        );
        // The release topic only matters to the trigger when releases are on.
        let mut v = with("triggerTopic", json!("gg-s3-sync/release"));
        assert!(Config::from_value(&v, Path::new("/"), Path::new("/")).is_ok());
        v["releases"] = json!({});
        assert_eq!(err(&v)[0].key, "triggerTopic");
        v["releaseTopic"] = json!("");
        assert_eq!(ok(&v).config.release_topic, None);
    }

    #[test]
    fn a_trigger_that_matches_the_status_topic_is_refused() {
        let mut v = with("triggerTopic", json!("gg-s3-sync/#"));
        let e = err(&v);
        assert_eq!(e[0].key, "triggerTopic");
        assert!(
            e[0].problem.contains("'gg-s3-sync/status'"),
            "{}",
            e[0].problem
        );
        // With local status off, and outside MQTT mode, the IoT Core statusTopic is another bus.
        v["localStatusTopic"] = json!("");
        let r = Config::from_value(&v, Path::new("/"), Path::new("/"));
        assert!(r.is_ok(), "{r:?}");
        v["mqtt"] = json!({"endpoint": "broker.example.com"});
        assert_eq!(err(&v)[0].key, "triggerTopic");
    }

    #[test]
    fn status_and_trigger_topics() {
        let c = ok(&base()).config;
        assert_eq!(c.status_topic.as_deref(), Some("gg-s3-sync/thing-1/status"));
        assert_eq!(c.local_status_topic.as_deref(), Some("gg-s3-sync/status"));
        assert_eq!(c.trigger_topic.as_deref(), Some("gg-s3-sync/sync-now"));
        let c = ok(&with("statusTopic", json!("fleet/{thingName}/sync"))).config;
        assert_eq!(c.status_topic.as_deref(), Some("fleet/thing-1/sync"));
        let mut no_thing = with("statusTopic", json!("x/{thingName}"));
        no_thing.as_object_mut().unwrap().remove("thingName");
        assert!(err(&no_thing)[0].problem.contains("thingName is not set"));
        let c = ok(&with("statusTopic", json!(""))).config;
        assert_eq!(c.status_topic, None, "empty disables");
        let e = err(&with("localStatusTopic", json!("a/#")));
        assert!(e[0].problem.contains("wildcards"), "{}", e[0]);
        let c = ok(&with("triggerTopic", json!("fleet/+/sync"))).config;
        assert_eq!(
            c.trigger_topic.as_deref(),
            Some("fleet/+/sync"),
            "subscriptions may use wildcards"
        );
        assert!(
            ok(&with("accessControl", json!({}))).warnings.is_empty(),
            "accessControl is the nucleus's"
        );
    }

    #[test]
    fn mqtt_settings() {
        assert_eq!(ok(&base()).config.mqtt, None);
        let c = ok(&with(
            "mqtt",
            json!({"endpoint": "abc-ats.iot.eu-west-1.amazonaws.com"}),
        ))
        .config;
        let m = c.mqtt.unwrap();
        assert_eq!((m.endpoint.port, m.client_id.as_str()), (8883, "thing-1"));
        let c = ok(&with(
            "mqtt",
            json!({"endpoint": "localhost:1883", "caPath": "ca.pem", "clientId": "c1"}),
        ))
        .config;
        let m = c.mqtt.unwrap();
        assert_eq!(
            (m.endpoint.port, m.ca_path.unwrap()),
            (1883, PathBuf::from("/etc/gg/ca.pem"))
        );
        let e = err(&with("mqtt", json!({"endpoint": "h", "qos": 2})));
        assert!(e[0].problem.contains("unknown key 'qos'"), "{}", e[0]);
        let mut v = with("mqtt", json!({"endpoint": "h"}));
        v.as_object_mut().unwrap().remove("thingName");
        assert_eq!(err(&v)[0].key, "mqtt.clientId");
    }

    #[test]
    fn unknown_keys_warn_with_suggestion() {
        let p = ok(&with("localdir", json!("/x")));
        assert_eq!(p.warnings.len(), 1);
        assert!(
            p.warnings[0].contains("did you mean 'localDir'"),
            "{}",
            p.warnings[0]
        );
    }

    #[test]
    fn relative_paths_resolve_against_base() {
        let c = ok(&with("certificateFilePath", json!("certs/device.pem"))).config;
        assert_eq!(
            c.certificate_file_path,
            PathBuf::from("/etc/gg/certs/device.pem")
        );
    }

    #[test]
    fn wrong_types_are_named() {
        let e = err(&with("bucket", json!(["a"])));
        assert_eq!(e[0].to_string(), "bucket: expected a string, got a list");
        let e = err(&with(
            "roleAlias",
            json!("arn:aws:iot:us-east-1:1:rolealias/x"),
        ));
        assert!(e[0].problem.contains("not its ARN"), "{}", e[0]);
    }

    #[test]
    fn not_an_object() {
        assert!(matches!(
            Config::from_value(&json!([1]), Path::new("/"), Path::new("/")),
            Err(ConfigError::NotAnObject { found: "a list" })
        ));
    }
}
