//! Credentials-provider responses → credentials or an actionable error (pure, no I/O).
//!
//! The status/message table comes from what the AWS IoT credentials provider is observed to
//! return (see `docs/design.md`): 403 `Invalid thing name passed`, 403 `Access Denied`, 403
//! `Certificate is invalid on this endpoint`, 404 `Role alias does not exist`, 400 `Unable to
//! assume the role…`, 400 `…CredentialDurationSeconds exceeds the MaxSessionDuration…`.

use std::time::SystemTime;

use aws_smithy_types::date_time::{DateTime, Format};
use serde::Deserialize;

use super::{Error, Secret};

/// Credentials as issued, before caching.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: Secret,
    pub(crate) session_token: Secret,
    pub(crate) expiration: SystemTime,
    /// The answer's HTTP `Date`: the issuer's clock when it issued them.
    pub(crate) server_date: Option<SystemTime>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    credentials: Option<RawCredentials>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCredentials {
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    expiration: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
    #[serde(rename = "Message")]
    message_upper: Option<String>,
}

/// What the request was for; used to word errors.
#[derive(Debug, Clone)]
pub(crate) struct Context<'a> {
    pub(crate) role_alias: &'a str,
    pub(crate) thing_name: Option<&'a str>,
    pub(crate) region: &'a str,
    pub(crate) endpoint: &'a str,
}

/// The `Date` of an answer (HTTP date), the server's clock that credentials are judged on.
pub(crate) fn server_date(headers: &reqwest::header::HeaderMap) -> Option<SystemTime> {
    let text = headers.get("date")?.to_str().ok()?;
    SystemTime::try_from(DateTime::from_str(text, Format::HttpDate).ok()?).ok()
}

/// Parses a 200 body. Field values never appear in errors.
pub(crate) fn parse_success(body: &[u8]) -> Result<Issued, Error> {
    let malformed = |detail: &str| Error::MalformedResponse {
        detail: detail.to_owned(),
    };
    let parsed: Body =
        serde_json::from_slice(body).map_err(|e| malformed(&format!("not JSON ({e})")))?;
    let c = parsed
        .credentials
        .ok_or_else(|| malformed("no \"credentials\" object"))?;
    let field = |v: Option<String>, name: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| malformed(&format!("\"credentials.{name}\" missing or empty")))
    };
    let access_key_id = field(c.access_key_id, "accessKeyId")?;
    let secret_access_key = Secret(field(c.secret_access_key, "secretAccessKey")?);
    let session_token = Secret(field(c.session_token, "sessionToken")?);
    let expiration_text = field(c.expiration, "expiration")?;
    let expiration = DateTime::from_str(&expiration_text, Format::DateTime)
        .ok()
        .and_then(|d| SystemTime::try_from(d).ok())
        .ok_or_else(|| {
            malformed(&format!(
                "\"credentials.expiration\" is not an ISO-8601 time: '{expiration_text}'"
            ))
        })?;
    Ok(Issued {
        server_date: None,
        access_key_id,
        secret_access_key,
        session_token,
        expiration,
    })
}

/// The `message` of an AWS error body, or the body itself when it is not the JSON form.
pub(crate) fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let msg = parsed
        .and_then(|b| b.message.or(b.message_upper))
        .unwrap_or_else(|| text.trim().to_owned());
    // Bound what lands in logs and status documents.
    msg.chars().take(300).collect()
}

/// Maps a non-200 response to the error that names the fix.
pub(crate) fn classify_failure(status: u16, body: &[u8], cx: &Context<'_>) -> Error {
    let message = error_message(body);
    let lower = message.to_ascii_lowercase();
    let role_alias = cx.role_alias.to_owned();
    match status {
        403 if lower.contains("invalid thing name") => Error::InvalidThingName {
            thing_name: cx.thing_name.unwrap_or("").to_owned(),
            message,
        },
        403 if lower.contains("certificate is invalid") => Error::CertificateNotValid {
            endpoint: cx.endpoint.to_owned(),
            message,
        },
        403 if lower.contains("access denied") || lower.contains("not authorized") => {
            Error::AccessDenied {
                arn: format!(
                    "arn:aws:iot:{}:<account-id>:rolealias/{}",
                    cx.region, cx.role_alias
                ),
                role_alias,
                message,
            }
        }
        404 => Error::RoleAliasNotFound {
            role_alias,
            region: cx.region.to_owned(),
            message,
        },
        400 if lower.contains("credentialdurationseconds")
            || lower.contains("maxsessionduration") =>
        {
            Error::DurationTooLong {
                role_alias,
                message,
            }
        }
        400 if lower.contains("assume the role") || lower.contains("role to assume") => {
            Error::CannotAssumeRole {
                role_alias,
                message,
            }
        }
        429 => Error::Throttled { message },
        500..=599 => Error::ServerError { status, message },
        _ => Error::Rejected { status, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CX: Context<'static> = Context {
        role_alias: "SyncAlias",
        thing_name: Some("thing-1"),
        region: "eu-west-1",
        endpoint: "x.credentials.iot.eu-west-1.amazonaws.com:443",
    };

    #[test]
    fn parses_success() {
        let body = br#"{"credentials":{"accessKeyId":"ASIAX","secretAccessKey":"s3cr3t","sessionToken":"t0k","expiration":"2018-01-18T09:18:06Z"}}"#;
        let c = parse_success(body).unwrap();
        assert_eq!(c.access_key_id, "ASIAX");
        assert_eq!(
            c.expiration,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_516_267_086)
        );
        // Debug never shows the secrets.
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t") && !dbg.contains("t0k"), "{dbg}");
    }

    #[test]
    fn malformed_success_never_echoes_values() {
        let body = br#"{"credentials":{"accessKeyId":"A","secretAccessKey":"s3cr3t","sessionToken":"t0k","expiration":"tomorrow"}}"#;
        let e = parse_success(body).unwrap_err().to_string();
        assert!(e.contains("not an ISO-8601 time"), "{e}");
        assert!(!e.contains("s3cr3t") && !e.contains("t0k"), "{e}");
        let e = parse_success(br#"{"credentials":{"accessKeyId":"A"}}"#).unwrap_err();
        assert!(e.to_string().contains("secretAccessKey"), "{e}");
        assert!(parse_success(b"<html>").is_err());
    }

    #[test]
    fn maps_the_aws_error_table() {
        let c = |s, b: &str| classify_failure(s, b.as_bytes(), &CX);
        let e = c(403, r#"{"message":"Invalid thing name passed"}"#);
        assert!(matches!(e, Error::InvalidThingName { .. }), "{e:?}");
        assert!(e.to_string().contains("'thing-1'"), "{e}");

        let e = c(403, r#"{"message":"Access Denied"}"#);
        let s = e.to_string();
        assert!(s.contains("iot:AssumeRoleWithCertificate"), "{s}");
        assert!(
            s.contains("arn:aws:iot:eu-west-1:<account-id>:rolealias/SyncAlias"),
            "{s}"
        );

        let e = c(404, r#"{"message":"Role alias does not exist"}"#);
        assert!(matches!(e, Error::RoleAliasNotFound { .. }));
        assert!(e.to_string().contains("eu-west-1"), "{e}");

        let e = c(
            400,
            r#"{"message":"Unable to assume the role, or the role to assume does not exist"}"#,
        );
        assert!(
            e.to_string().contains("credentials.iot.amazonaws.com"),
            "{e}"
        );

        let e = c(
            400,
            r#"{"message":"The requested CredentialDurationSeconds exceeds the MaxSessionDuration set for the role"}"#,
        );
        assert!(matches!(e, Error::DurationTooLong { .. }), "{e:?}");

        let e = c(
            403,
            r#"{"message":"Certificate is invalid on this endpoint"}"#,
        );
        assert!(matches!(e, Error::CertificateNotValid { .. }), "{e:?}");

        assert!(c(429, "{}").is_retryable());
        assert!(c(503, "oops").is_retryable());
        assert!(!c(403, r#"{"message":"Access Denied"}"#).is_retryable());
        assert!(!c(400, "{}").is_retryable());
    }

    #[test]
    fn error_message_forms() {
        assert_eq!(error_message(br#"{"message":"m"}"#), "m");
        assert_eq!(error_message(br#"{"Message":"M"}"#), "M");
        assert_eq!(error_message(b"  plain text "), "plain text");
        assert_eq!(error_message(&[b'x'; 1000]).len(), 300);
    }
}
