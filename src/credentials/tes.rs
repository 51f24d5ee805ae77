//! The nucleus's token exchange service (TES), for devices whose key is in an HSM or a TPM.
//!
//! Both nuclei offer it to components that depend on `aws.greengrass.TokenExchangeService`:
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI` (the classic nucleus:
//! `http://localhost:<port>/2016-11-01/credentialprovider/`) and
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN`, sent as the `Authorization` header. The answer is the AWS
//! SDK's container format. The two nuclei answer failures differently (`classify`):
//!
//! - classic (`tes/CredentialRequestHandler.java`): a missing or wrong token is 403 with an
//!   empty body; the credentials provider's errors are passed on with their status and
//!   `TES responded with status code: <n>. Caching response.`;
//! - lite (`modules/tes-serverd/src/http_server.c`): a missing token or one not 16 characters
//!   long is 400, an unknown one (a stale SVCUID) 404 `No such svcuid present.`, a failed
//!   SVCUID check 503 `Failed to fetch SVCUID. Try again.`; when its `tesd` cannot get
//!   credentials it still answers **200, with the body `null`**.

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
    let server_date = super::response::server_date(resp.headers());
    let body = resp.bytes().await.map_err(|e| Error::TesUnavailable {
        uri: tes.uri.clone(),
        detail: crate::errtext::root_cause(&e),
    })?;
    classify(&tes.uri, status, &body, server_date)
}

/// What an answer of the classic or the lite TES means (pure).
///
/// # Errors
/// [`Error::TesRefused`] (the token), [`Error::TesUnavailable`] (lite could not check it yet),
/// [`Error::TesFailed`] (the nucleus's own exchange), [`Error::MalformedResponse`].
pub(crate) fn classify(
    uri: &str,
    status: u16,
    body: &[u8],
    server_date: Option<SystemTime>,
) -> Result<Issued, Error> {
    let text: String = String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(300)
        .collect();
    let answer = || {
        if text.is_empty() {
            status.to_string()
        } else {
            format!("{status} {text}")
        }
    };
    match status {
        200 if text == "null" => Err(Error::TesFailed {
            uri: uri.to_owned(),
            status,
            message: "no credentials (nucleus lite answers null when its tesd could not get \
                      them; its log says why)"
                .into(),
        }),
        200 => parse(body, server_date),
        // Classic: an empty 401/403. Lite: 400 for a missing or malformed token, 404 for one
        // it does not know.
        401 | 403 if text.is_empty() => Err(Error::TesRefused {
            uri: uri.to_owned(),
            answer: answer(),
        }),
        400 | 404 if !text.starts_with("Only ") => Err(Error::TesRefused {
            uri: uri.to_owned(),
            answer: answer(),
        }),
        503 if text.contains("SVCUID") => Err(Error::TesUnavailable {
            uri: uri.to_owned(),
            detail: answer(),
        }),
        _ => Err(Error::TesFailed {
            uri: uri.to_owned(),
            status,
            message: text,
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

    /// Each answer the classic nucleus and nucleus lite give, as their sources write them.
    #[test]
    fn classifies_both_nuclei() {
        let u = "http://localhost:1/2016-11-01/credentialprovider/";
        let code = |status: u16, body: &str| match classify(u, status, body.as_bytes(), None) {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!(
                "{}{}",
                e.code(),
                if e.is_retryable() { "+retry" } else { "" }
            ),
        };
        // Classic (CredentialRequestHandler.java).
        assert_eq!(code(403, ""), "TokenExchangeRefused");
        assert_eq!(
            code(403, "TES responded with status code: 403. Caching response. {\"message\":\"Access Denied\"}"),
            "TokenExchangeFailed"
        );
        assert_eq!(
            code(
                500,
                "TES responded with status code: 500. Caching response. {}"
            ),
            "TokenExchangeFailed+retry"
        );
        // Lite (tes-serverd http_server.c).
        assert_eq!(
            code(
                400,
                "Authorization header is needed to process the request."
            ),
            "TokenExchangeRefused"
        );
        assert_eq!(
            code(400, "SVCUID length must be exactly 16."),
            "TokenExchangeRefused"
        );
        assert_eq!(code(404, "No such svcuid present."), "TokenExchangeRefused");
        assert_eq!(
            code(503, "Failed to fetch SVCUID. Try again."),
            "TokenExchangeUnavailable+retry"
        );
        assert_eq!(code(200, "null"), "TokenExchangeFailed");
        assert_eq!(
            code(
                400,
                "Only /2016-11-01/credentialprovider/ uri is supported."
            ),
            "TokenExchangeFailed"
        );
        let e = classify(u, 404, b"No such svcuid present.", None).unwrap_err();
        assert!(e.to_string().contains("404 No such svcuid present."), "{e}");
        let e = classify(u, 200, b"null", None).unwrap_err();
        assert!(e.to_string().contains("tesd"), "{e}");
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
