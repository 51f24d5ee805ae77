//! A fake AWS IoT credentials provider: HTTPS with a **required** client certificate, serving
//! `GET /role-aliases/<alias>/credentials` like AWS (status codes, `{"message":…}` bodies,
//! `x-amzn-ErrorType`), backed by [`Account`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;

use crate::account::{Account, Refusal};
use crate::listener::Listener;

/// Server start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad PEM or TLS configuration.
    #[error("cannot configure TLS for the credentials provider: {0}")]
    Tls(String),
    /// Cannot listen.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running credentials provider.
#[derive(Debug)]
pub struct CredentialsProvider {
    listener: Listener,
}

impl CredentialsProvider {
    /// Listens on `bind` (port 0 for any), trusting client certificates signed by `client_ca_pem`.
    ///
    /// # Errors
    /// [`Error`] if TLS cannot be configured or the address cannot be bound.
    pub async fn start(
        account: Account,
        bind: SocketAddr,
        client_ca_pem: &str,
        server_cert_pem: &str,
        server_key_pem: &str,
    ) -> Result<Self, Error> {
        let config = tls_config(client_ca_pem, server_cert_pem, server_key_pem)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = Listener::start(bind, move |sock| {
            let (acceptor, account) = (acceptor.clone(), account.clone());
            async move {
                let tls = match acceptor.accept(sock).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        tracing::debug!(error = %e, "credentials provider TLS handshake failed");
                        return;
                    }
                };
                // AWS requires SNI naming the endpoint; so does this fake (its certificate
                // names localhost), which proves clients send it.
                if tls.get_ref().1.server_name() != Some("localhost") {
                    tracing::debug!(sni = ?tls.get_ref().1.server_name(), "credentials provider: connection without SNI 'localhost' refused");
                    return;
                }
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec())
                    .unwrap_or_default();
                let svc = hyper::service::service_fn(move |req| {
                    let account = account.clone();
                    let peer = peer.clone();
                    async move {
                        let delay = account.credential_delay();
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        Ok::<_, Infallible>(handle(&account, &peer, &req))
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "credentials provider connection ended");
                }
            }
        })
        .await
        .map_err(|source| Error::Bind { addr: bind, source })?;
        Ok(Self { listener })
    }

    /// The bound address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.listener.addr()
    }

    /// Stops accepting and closes connections.
    pub async fn stop(&self) {
        self.listener.stop().await;
    }
}

fn tls_config(
    client_ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ServerConfig, Error> {
    let e = |x: &dyn std::fmt::Display| Error::Tls(x.to_string());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(c.map_err(|x| e(&x))?).map_err(|x| e(&x))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|x| e(&x))?;
    let (chain, key) = crate::pki::server_identity(cert_pem, key_pem).map_err(Error::Tls)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|x| e(&x))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|x| e(&x))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn json_response(status: u16, error_type: Option<&str>, body: String) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .header("x-amzn-requestid", format!("{:032x}", fastrand::u128(..)));
    if let Some(t) = error_type {
        b = b.header("x-amzn-ErrorType", t);
    }
    b.body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn refusal(r: &Refusal) -> Response<Full<Bytes>> {
    json_response(
        r.status,
        Some(r.error_type),
        serde_json::json!({ "message": r.message }).to_string(),
    )
}

fn handle(account: &Account, peer: &[u8], req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let alias = path
        .strip_prefix("/role-aliases/")
        .and_then(|rest| rest.strip_suffix("/credentials"))
        .filter(|a| !a.is_empty() && !a.contains('/'));
    let Some(alias) = alias else {
        return refusal(&Refusal {
            status: 404,
            error_type: "ResourceNotFoundException",
            message: "Not Found".into(),
        });
    };
    if req.method() != hyper::Method::GET {
        return refusal(&Refusal {
            status: 405,
            error_type: "MethodNotAllowedException",
            message: "Method Not Allowed".into(),
        });
    }
    let thing = req
        .headers()
        .get("x-amzn-iot-thingname")
        .and_then(|v| v.to_str().ok());
    match account.exchange(peer, thing, alias) {
        Ok(c) => json_response(
            200,
            None,
            serde_json::json!({
                "credentials": {
                    "accessKeyId": c.access_key_id,
                    "secretAccessKey": c.secret_access_key,
                    "sessionToken": c.session_token,
                    "expiration": humantime::format_rfc3339_seconds(c.expiration).to_string(),
                }
            })
            .to_string(),
        ),
        Err(r) => refusal(&r),
    }
}
