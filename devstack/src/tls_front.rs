//! A TLS front for a plain server: accepts TLS with a server certificate and forwards the
//! decrypted bytes to an upstream address. It puts the devstack's S3 behind `https://` (as S3
//! is reached in production) without a second S3 implementation; anything above TLS (HTTP,
//! SigV4, errors) is the upstream's, unchanged.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::listener::Listener;

/// TLS front failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The certificate or key cannot be used.
    #[error("tls front: {0}")]
    Tls(String),
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

/// A running TLS front.
#[derive(Debug)]
pub struct TlsFront {
    listener: Listener,
}

impl TlsFront {
    /// Listens on `bind` with `cert_pem` (chain) and `key_pem`, forwarding to `upstream`.
    ///
    /// # Errors
    /// [`Error::Tls`], [`Error::Bind`].
    pub async fn start(
        cert_pem: &str,
        key_pem: &str,
        bind: SocketAddr,
        upstream: SocketAddr,
    ) -> Result<Self, Error> {
        let e = |x: &dyn std::fmt::Display| Error::Tls(x.to_string());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (chain, key) = crate::pki::server_identity(cert_pem, key_pem).map_err(Error::Tls)?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|x| e(&x))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|x| e(&x))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = Listener::start(bind, move |sock| {
            let acceptor = acceptor.clone();
            async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
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
