//! The status document published after every pass and on every error (pure).
//!
//! Schema: `docs/status.schema.json`, described in `docs/status.md`. Never contains
//! credentials: only their expiry time.

use serde::Serialize;

use crate::sync::summary::{shorten, ReleaseInfo, ReleaseReport};
use crate::sync::Summary;

/// Version of the document's shape; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// The most bytes an encoded status document takes, whatever the sink.
///
/// The tightest sink is nucleus lite: ggipcd accepts an IPC frame of at most 10,000 bytes after
/// its prelude (`GGL_IPC_MAX_MSG_LEN`, modules/ggipcd/src/ipc_server.h) and closes the connection
/// on a larger one, and `PublishToIoTCore` carries the document in base64 (4/3 of its size)
/// beside a topic of up to 256 bytes and about 300 bytes of headers and JSON: 6,500 × 4/3 +
/// 256 + 300 ≈ 9,230. Local pub/sub and MQTT (IoT Core takes 128 KiB) have more room.
pub const MAX_DOCUMENT_BYTES: usize = 6_500;
/// `error.message` is shortened to this many characters.
pub const MAX_ERROR_CHARS: usize = 1_000;

/// The component's overall condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// The last pass put every object in place.
    Synced,
    /// The last pass finished, but some objects failed.
    Partial,
    /// A pass could not run or finish, or the configuration is invalid.
    Error,
    /// The component stopped, or lost its connection (MQTT last will).
    Offline,
}

/// An error in a status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorInfo {
    /// Stable short code (e.g. `ListBucketDenied`, `ConfigInvalid`).
    pub code: String,
    /// What happened and the fix.
    pub message: String,
}

/// One status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDocument {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Always `gg-s3-sync`.
    pub component: &'static str,
    /// This build's version.
    pub component_version: &'static str,
    /// The device.
    pub thing_name: Option<String>,
    /// Overall condition.
    pub state: State,
    /// When the document was made (RFC 3339).
    pub timestamp: String,
    /// Bucket being synced (`null` before any valid configuration).
    pub bucket: Option<String>,
    /// Prefix being synced.
    pub prefix: Option<String>,
    /// Destination folder.
    pub local_dir: Option<String>,
    /// The most recent completed pass.
    pub last_pass: Option<Summary>,
    /// What is wrong, if anything.
    pub error: Option<ErrorInfo>,
    /// When the cached credentials expire (RFC 3339); never the credentials themselves.
    pub credentials_expiration: Option<String>,
    /// This device's clock minus the AWS IoT credentials provider's, in seconds, as measured
    /// from its last answer (`null` until then). Credentials are judged on the provider's
    /// clock; a large value means the device needs time synchronisation.
    pub clock_skew_seconds: Option<i64>,
    /// Where the credentials in use came from: `iot` (this component's role alias) or `tes`
    /// (the nucleus's token exchange service); `null` before any.
    pub credentials_source: Option<&'static str>,
    /// The role alias whose role the credentials carry: `roleAlias` for `iot`, the nucleus's
    /// `iotRoleAlias` for `tes` (`null` when the nucleus does not say, or before any).
    pub role_alias: Option<String>,
    /// Whether something was left out to stay within [`MAX_DOCUMENT_BYTES`]: list entries
    /// (`lastPass.failed` and `lastPass.skipped` keep the totals) or the end of a long text.
    pub truncated: bool,
}

/// What a document is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The device.
    pub thing_name: Option<String>,
    /// Bucket.
    pub bucket: Option<String>,
    /// Prefix.
    pub prefix: Option<String>,
    /// Destination.
    pub local_dir: Option<String>,
    /// Credentials expiry (RFC 3339).
    pub credentials_expiration: Option<String>,
    /// This device's clock minus the credentials provider's (seconds).
    pub clock_skew_seconds: Option<i64>,
    /// `iot` or `tes`.
    pub credentials_source: Option<&'static str>,
    /// The role alias behind the credentials in use.
    pub role_alias: Option<String>,
}

impl Context {
    /// The context of `config` (if any is valid yet); `thing_name` is used when the
    /// configuration has none.
    #[must_use]
    pub fn new(
        config: Option<&crate::config::Config>,
        thing_name: Option<String>,
        credentials_expiration: Option<String>,
    ) -> Self {
        Self {
            thing_name: config.and_then(|c| c.thing_name.clone()).or(thing_name),
            bucket: config.map(|c| c.bucket.clone()),
            prefix: config.map(|c| c.prefix.clone()),
            local_dir: config.map(|c| c.local_dir.display().to_string()),
            credentials_expiration,
            clock_skew_seconds: None,
            credentials_source: None,
            role_alias: None,
        }
    }

    /// With the source of the credentials in use and the role alias behind them.
    #[must_use]
    pub fn with_source(
        self,
        credentials_source: Option<&'static str>,
        role_alias: Option<String>,
    ) -> Self {
        Self {
            credentials_source,
            role_alias,
            ..self
        }
    }

    /// With the measured clock skew.
    #[must_use]
    pub fn with_clock_skew(self, clock_skew_seconds: Option<i64>) -> Self {
        Self {
            clock_skew_seconds,
            ..self
        }
    }
}

impl StatusDocument {
    fn new(cx: &Context, timestamp: String, state: State) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            component: "gg-s3-sync",
            component_version: env!("CARGO_PKG_VERSION"),
            thing_name: cx.thing_name.clone(),
            state,
            timestamp,
            bucket: cx.bucket.clone(),
            prefix: cx.prefix.clone(),
            local_dir: cx.local_dir.clone(),
            last_pass: None,
            error: None,
            credentials_expiration: cx.credentials_expiration.clone(),
            clock_skew_seconds: cx.clock_skew_seconds,
            credentials_source: cx.credentials_source,
            role_alias: cx.role_alias.clone(),
            truncated: false,
        }
    }

    /// The document as sent to every sink: JSON of at most [`MAX_DOCUMENT_BYTES`] bytes.
    /// Texts are shortened and list entries dropped (from the end) until it fits; `truncated`
    /// says so.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut doc = self.clone();
        if let Some(e) = &mut doc.error {
            let (message, cut) = shorten(&e.message, MAX_ERROR_CHARS);
            e.message = message;
            doc.truncated |= cut;
        }
        // The bytes left for the summary once the rest of the document is written.
        if let Some(pass) = doc.last_pass.take() {
            let rest = serde_json::to_vec(&doc).map_or(0, |v| v.len());
            let mut pass = pass;
            pass.planned = None;
            pass.shrink_to(MAX_DOCUMENT_BYTES.saturating_sub(rest + "lastPass".len()));
            doc.truncated |= pass.truncated;
            doc.last_pass = Some(pass);
        }
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// After a pass that ran to the end.
    #[must_use]
    pub fn after_pass(cx: &Context, timestamp: String, summary: Summary) -> Self {
        let state = if summary.is_success() {
            State::Synced
        } else {
            State::Partial
        };
        let error = if summary.deletions_refused > 0 {
            Some(ErrorInfo {
                code: "DeleteLimitExceeded".into(),
                message: summary
                    .failures
                    .iter()
                    .find(|f| f.code == "DeleteLimitExceeded")
                    .map_or_else(
                        || {
                            format!(
                                "{} deletions refused by maxDeletePercent",
                                summary.deletions_refused
                            )
                        },
                        |f| f.message.clone(),
                    ),
            })
        } else {
            (summary.failed > 0).then(|| ErrorInfo {
                code: "ObjectsFailed".into(),
                message: format!(
                    "{} object(s) could not be synced; see lastPass.failures",
                    summary.failed
                ),
            })
        };
        Self {
            last_pass: Some(summary),
            error,
            ..Self::new(cx, timestamp, state)
        }
    }

    /// The component is going (or has gone) away: the MQTT last will and the clean-stop notice.
    #[must_use]
    pub fn offline(cx: &Context, timestamp: String, last_pass: Option<Summary>) -> Self {
        Self {
            last_pass,
            ..Self::new(cx, timestamp, State::Offline)
        }
    }

    /// After an error; `last_pass` is the most recent completed pass, if any.
    #[must_use]
    pub fn error(
        cx: &Context,
        timestamp: String,
        code: &str,
        message: String,
        last_pass: Option<Summary>,
    ) -> Self {
        Self {
            last_pass,
            error: Some(ErrorInfo {
                code: code.to_owned(),
                message,
            }),
            ..Self::new(cx, timestamp, State::Error)
        }
    }
}

/// What made a release live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseCause {
    /// A pass switched to a new release.
    Sync,
    /// A rollback (command or trigger message) switched back.
    Rollback,
}

/// The "release live" document, published on `releaseTopic` after each switch so other
/// components reload at the right moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseLive {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Always `releaseLive`.
    pub event: &'static str,
    /// The device.
    pub thing_name: Option<String>,
    /// The link readers open.
    pub local_dir: Option<String>,
    /// The release now live.
    pub release: ReleaseInfo,
    /// The one live before it, if kept.
    pub previous: Option<ReleaseInfo>,
    /// Why it switched.
    pub cause: ReleaseCause,
    /// When (RFC 3339).
    pub timestamp: String,
}

impl ReleaseLive {
    /// The document for `report`, if a release is live.
    #[must_use]
    pub fn new(
        cx: &Context,
        timestamp: String,
        report: &ReleaseReport,
        cause: ReleaseCause,
    ) -> Option<Self> {
        Some(Self {
            schema_version: SCHEMA_VERSION,
            event: "releaseLive",
            thing_name: cx.thing_name.clone(),
            local_dir: cx.local_dir.clone(),
            release: report.live.clone()?,
            previous: report.previous.clone(),
            cause,
            timestamp,
        })
    }

    /// JSON bytes (a few hundred: every sink takes them).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(failed: u64) -> Summary {
        Summary {
            listed: 3,
            downloaded: 2,
            unchanged: 1 - failed.min(1),
            skipped: 0,
            excluded: 0,
            folder_markers: 0,
            failed,
            deleted: 0,
            deletions_refused: 0,
            bytes: 10,
            duration_ms: 5,
            started_at: "2026-11-29T00:00:00Z".into(),
            finished_at: "2026-11-29T00:00:01Z".into(),
            failures: Vec::new(),
            skipped_keys: Vec::new(),
            truncated: false,
            planned: None,
            release: None,
        }
    }

    #[test]
    fn states_follow_the_pass() {
        let cx = Context {
            thing_name: Some("t".into()),
            ..Context::default()
        };
        let d = StatusDocument::after_pass(&cx, "now".into(), summary(0));
        assert_eq!((d.state, d.error.is_none()), (State::Synced, true));
        let d = StatusDocument::after_pass(&cx, "now".into(), summary(1));
        assert_eq!(d.state, State::Partial);
        assert_eq!(d.error.unwrap().code, "ObjectsFailed");
        let d = StatusDocument::error(&cx, "now".into(), "ConfigInvalid", "bad".into(), None);
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["state"], "ERROR");
        assert_eq!(v["schemaVersion"], 1);
        assert_eq!(v["error"]["code"], "ConfigInvalid");
    }
}
