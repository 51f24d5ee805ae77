//! A token exchange service (TES) as the classic nucleus serves it to components
//! (aws-greengrass-nucleus `tes/CredentialRequestHandler.java`, `HttpServerImpl.java`):
//!
//! - `GET http://localhost:<port>/2016-11-01/credentialprovider/` only: another method is 405,
//!   another path 400, both with an empty body;
//! - the `Authorization` header carries the component's token
//!   (`AWS_CONTAINER_AUTHORIZATION_TOKEN`, not `Bearer …`); missing or wrong is 403, empty body;
//! - it exchanges the *nucleus's* device certificate for its own role alias (`iotRoleAlias`)
//!   at the AWS IoT credentials provider, and answers in the AWS SDK's container format
//!   `{"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}`;
//! - an error from the credentials provider is passed on with its status and the text
//!   `TES responded with status code: <n>. Caching response. <body>`.
//!
//! [`Flavor::Lite`] answers as nucleus lite's `tes-serverd` does
//! (`modules/tes-serverd/src/http_server.c`, the same in v2.6.0 and main): any method; another
//! path is 400 `Only /2016-11-01/credentialprovider/ uri is supported.`; the token is the
//! component's 16-character SVCUID: missing or another length is 400 with a text, unknown is 404
//! `No such svcuid present.`; when `tesd`'s exchange fails the answer is still **200, body
//! `null`** (`fetch_creds` returns a null object, which is JSON-encoded and sent).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::account::Account;
use crate::listener::Listener;

/// The path the nucleus serves (`HttpServerImpl.URL`).
pub const PATH: &str = "/2016-11-01/credentialprovider/";

/// TES failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address cannot be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What the TES exchanges: the nucleus's device and role alias.
#[derive(Debug, Clone)]
pub struct Nucleus {
    /// The nucleus's device certificate (DER).
    pub cert_der: Vec<u8>,
    /// Its thing name.
    pub thing: String,
    /// Its `iotRoleAlias`.
    pub role_alias: String,
}

/// Which nucleus's TES to behave as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// The classic (Java) nucleus.
    Classic,
    /// Nucleus lite's `tes-serverd`.
    Lite,
}

/// The running TES.
#[derive(Debug)]
pub struct TokenExchangeService {
    listener: Listener,
    token: String,
}

fn empty(status: u16) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// The AWS SDK's container credentials format, which both nuclei answer with.
fn container_format(c: &crate::account::Issued) -> String {
    serde_json::json!({
        "AccessKeyId": c.access_key_id,
        "SecretAccessKey": c.secret_access_key,
        "Token": c.session_token,
        "Expiration": humantime::format_rfc3339_seconds(c.expiration).to_string(),
    })
    .to_string()
}

fn text(status: u16, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

fn handle_lite(
    account: &Account,
    nucleus: &Nucleus,
    token: &str,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return text(
            400,
            "Only /2016-11-01/credentialprovider/ uri is supported.",
        );
    }
    let Some(given) = req.headers().get("authorization") else {
        return text(
            400,
            "Authorization header is needed to process the request.",
        );
    };
    if given.len() != 16 {
        return text(400, "SVCUID length must be exactly 16.");
    }
    if given.as_bytes() != token.as_bytes() {
        return text(404, "No such svcuid present.");
    }
    match account.exchange(&nucleus.cert_der, Some(&nucleus.thing), &nucleus.role_alias) {
        Ok(c) => text(200, &container_format(&c)),
        Err(_) => text(200, "null"),
    }
}

fn handle(
    account: &Account,
    nucleus: &Nucleus,
    token: &str,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET {
        return empty(405);
    }
    if req.uri().path() != PATH {
        return empty(400);
    }
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if given != Some(token) {
        return empty(403);
    }
    let (status, body) =
        match account.exchange(&nucleus.cert_der, Some(&nucleus.thing), &nucleus.role_alias) {
            Ok(c) => (200, container_format(&c)),
            Err(r) => (
                r.status,
                format!(
                    "TES responded with status code: {}. Caching response. {}",
                    r.status,
                    serde_json::json!({ "message": r.message })
                ),
            ),
        };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp
}

impl TokenExchangeService {
    /// Listens on `bind` (port 0 for any) for components holding `token`, answering as
    /// `flavor`'s TES.
    ///
    /// # Errors
    /// [`Error::Bind`].
    pub async fn start_as(
        flavor: Flavor,
        account: Account,
        bind: SocketAddr,
        nucleus: Nucleus,
        token: &str,
    ) -> Result<Self, Error> {
        let secret = token.to_owned();
        let listener = Listener::start(bind, move |sock| {
            let (account, nucleus, secret) = (account.clone(), nucleus.clone(), secret.clone());
            async move {
                let svc = hyper::service::service_fn(move |req| {
                    let resp = match flavor {
                        Flavor::Classic => handle(&account, &nucleus, &secret, &req),
                        Flavor::Lite => handle_lite(&account, &nucleus, &secret, &req),
                    };
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            }
        })
        .await
        .map_err(|source| Error::Bind { addr: bind, source })?;
        Ok(Self {
            listener,
            token: token.to_owned(),
        })
    }

    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
    #[must_use]
    pub fn uri(&self) -> String {
        format!("http://localhost:{}{PATH}", self.listener.addr().port())
    }

    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    #[must_use]
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Stops serving.
    pub async fn stop(&self) {
        self.listener.stop().await;
    }
}
