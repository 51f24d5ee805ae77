//! The nucleus's token exchange service (TES), for devices whose key is in an HSM or a TPM.
//!
//! Both nuclei offer it to components that depend on `aws.greengrass.TokenExchangeService`:
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI` (the classic nucleus:
//! `http://localhost:<port>/2016-11-01/credentialprovider/`) and
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN`, sent as the `Authorization` header. The answer is the AWS
//! SDK's container format. The classic nucleus (`tes/CredentialRequestHandler.java`) answers a
//! missing or wrong token with 403 and an empty body, and passes the credentials provider's
//! errors on with their status and `TES responded with status code: <n>. Caching response.`.

use std::time::SystemTime;

use serde::Deserialize;

use super::response::Issued;
use super::{Error, Secret};

/// `AWS_CONTAINER_CREDENTIALS_FULL_URI` and `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TesEndpoint {
    /// The URI.
    pub uri: String,
    /// The token (redacted in `Debug`).
    pub token: Secret,
}

impl TesEndpoint {
    /// From the environment the nucleus gives the component; `None` if it offers no TES.
    #[must_use]
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let uri = get("AWS_CONTAINER_CREDENTIALS_FULL_URI").filter(|v| !v.is_empty())?;
        let token = get("AWS_CONTAINER_AUTHORIZATION_TOKEN").unwrap_or_default();
        Some(Self {
            uri,
            token: Secret(token),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Body {
    access_key_id: String,
    secret_access_key: String,
    token: String,
    expiration: String,
}

/// Parses a 200 answer (pure).
///
/// # Errors
/// [`Error::MalformedResponse`], naming what is missing (never the values).
pub(crate) fn parse(body: &[u8], server_date: Option<SystemTime>) -> Result<Issued, Error> {
    let b: Body = serde_json::from_slice(body).map_err(|e| Error::MalformedResponse {
        detail: format!("token exchange service answer: {}", e.classify_detail()),
    })?;
    let expiration = aws_smithy_types::DateTime::from_str(
        &b.expiration,
        aws_smithy_types::date_time::Format::DateTime,
    )
    .ok()
    .and_then(|d| SystemTime::try_from(d).ok())
    .ok_or_else(|| Error::MalformedResponse {
        detail: format!(
            "token exchange service Expiration '{}' is not RFC 3339",
            b.expiration
        ),
    })?;
    Ok(Issued {
        access_key_id: b.access_key_id,
        secret_access_key: Secret(b.secret_access_key),
        session_token: Secret(b.token),
        expiration,
        server_date,
    })
}

trait ClassifyDetail {
    fn classify_detail(&self) -> String;
}

impl ClassifyDetail for serde_json::Error {
    /// The JSON error without echoing values (serde_json quotes none, but keep it short).
    fn classify_detail(&self) -> String {
        format!(
            "{:?} at line {} column {}",
            self.classify(),
            self.line(),
            self.column()
        )
    }
}

/// One request to the TES.
///
/// # Errors
/// [`Error::TesUnavailable`] (not up yet: retried), [`Error::TesRefused`], [`Error::TesFailed`].
pub(crate) async fn fetch(client: &reqwest::Client, tes: &TesEndpoint) -> Result<Issued, Error> {
    let resp = client
        .get(&tes.uri)
        .header("authorization", &tes.token.0)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| Error::TesUnavailable {
            uri: tes.uri.clone(),
            detail: crate::errtext::root_cause(&e),
        })?;
    let status = resp.status().as_u16();
    let server_date = resp
        .headers()
        .get("date")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            aws_smithy_types::DateTime::from_str(v, aws_smithy_types::date_time::Format::HttpDate)
                .ok()
        })
        .and_then(|d| SystemTime::try_from(d).ok());
    let body = resp.bytes().await.map_err(|e| Error::TesUnavailable {
        uri: tes.uri.clone(),
        detail: crate::errtext::root_cause(&e),
    })?;
    match status {
        200 => parse(&body, server_date),
        401 | 403 if body.is_empty() => Err(Error::TesRefused {
            uri: tes.uri.clone(),
        }),
        _ => Err(Error::TesFailed {
            uri: tes.uri.clone(),
            status,
            message: String::from_utf8_lossy(&body).chars().take(300).collect(),
        }),
    }
}

/// An HTTP client for the TES: local, plain HTTP, never through a proxy.
///
/// # Errors
/// [`Error::TlsSetup`] if the client cannot be built.
pub(crate) fn client() -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(35))
        .build()
        .map_err(|e| Error::TlsSetup {
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_container_format_and_names_what_is_missing() {
        let ok = br#"{"AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t","Expiration":"2026-12-01T13:00:00Z"}"#;
        let i = parse(ok, None).unwrap();
        assert_eq!(i.access_key_id, "ASIA1");
        assert!(parse(br#"{"AccessKeyId":"A"}"#, None).is_err());
        let e = parse(br#"{"AccessKeyId":"A","SecretAccessKey":"SECRETVALUE","Token":"t","Expiration":"soon"}"#, None)
            .unwrap_err();
        assert!(e.to_string().contains("not RFC 3339") && !e.to_string().contains("SECRETVALUE"));
    }

    #[test]
    fn offered_only_with_the_uri() {
        let vars = |k: &str| match k {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI" => Some("http://localhost:1/x".to_owned()),
            "AWS_CONTAINER_AUTHORIZATION_TOKEN" => Some("SVC-TOKEN-VALUE".to_owned()),
            _ => None,
        };
        let t = TesEndpoint::from_vars(vars).unwrap();
        assert_eq!(t.uri, "http://localhost:1/x");
        assert!(!format!("{t:?}").contains("SVC-TOKEN-VALUE"));
        assert!(TesEndpoint::from_vars(|_| None).is_none());
    }
}
