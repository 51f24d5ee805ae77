//! The mutual-TLS request to the AWS IoT credentials provider.
//!
//! The TLS configuration is built here rather than by reqwest so that the server is verified
//! against `rootCaPath` only (never the system store), every certificate in that file is
//! trusted (the Greengrass installer writes several), and local problems (unreadable key, key
//! not matching the certificate) are named before any network traffic.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use std::time::SystemTime;

use super::response::{classify_failure, parse_success, Context, Issued};
use super::{Error, ProviderSettings};
use crate::errtext::root_cause;

/// Connect timeout for the credentials endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Whole-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Responses are small; anything larger is not the credentials provider.
const MAX_BODY: usize = 64 * 1024;

/// Which configured file is being read, for error messages.
#[derive(Debug, Clone, Copy)]
enum Material {
    Certificate,
    PrivateKey,
    RootCa,
}

impl Material {
    fn key(self) -> &'static str {
        match self {
            Self::Certificate => "certificateFilePath",
            Self::PrivateKey => "privateKeyPath",
            Self::RootCa => "rootCaPath",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::Certificate => "device certificate",
            Self::PrivateKey => "private key",
            Self::RootCa => "root CA file",
        }
    }
}

fn read_material(path: &Path, material: Material) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| {
        let hint = match source.kind() {
            io::ErrorKind::NotFound => {
                format!("no such file; set {} to the right path", material.key())
            }
            io::ErrorKind::PermissionDenied => permission_hint(path),
            _ => format!("check {}", material.key()),
        };
        Error::ReadFile {
            what: material.what(),
            key: material.key(),
            path: path.to_owned(),
            hint,
            source,
        }
    })
}

/// Explains a permission problem with the numbers a person needs to fix it.
fn permission_hint(path: &Path) -> String {
    let me = current_uid().map_or_else(|| "this process".to_owned(), |u| format!("uid {u}"));
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "permission denied: the file has mode {:04o} and owner uid {}, and the component runs as {me}; \
             run it with RequiresPrivilege: true in the recipe, or grant the component user read access",
            m.mode() & 0o7777,
            m.uid()
        ),
        Err(_) => format!(
            "permission denied: {me} cannot reach the file (check the folders' permissions); \
             run the component with RequiresPrivilege: true or grant read access"
        ),
    }
}

fn current_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn certificates(path: &Path, material: Material) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read_material(path, material)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::BadPem {
            what: material.what(),
            key: material.key(),
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::BadPem {
            what: material.what(),
            key: material.key(),
            path: path.to_owned(),
            detail: "no PEM CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let m = Material::PrivateKey;
    let pem = read_material(path, m)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Error::BadPem {
        what: m.what(),
        key: m.key(),
        path: path.to_owned(),
        detail: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key found (expected RSA PRIVATE KEY, EC PRIVATE KEY or PRIVATE KEY; \
                 encrypted keys are not supported)"
                    .into()
            }
            other => other.to_string(),
        },
    })
}

/// The CAs of `rootCaPath`, as trust anchors.
fn roots(path: &Path) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = Material::RootCa;
    for cert in certificates(path, ca)? {
        roots.add(cert).map_err(|e| Error::BadPem {
            what: ca.what(),
            key: ca.key(),
            path: path.to_owned(),
            detail: format!("a certificate cannot be used as a trust anchor ({e})"),
        })?;
    }
    Ok(roots)
}

/// A rustls client configuration that trusts only the CAs of `path` and presents nothing: for
/// an `https://` proxy, whose CA the nucleus's documentation has users append to the root CA
/// file.
pub(crate) fn trust_only_config(path: &Path) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsSetup {
            detail: e.to_string(),
        })?
        .with_root_certificates(roots(path)?)
        .with_no_client_auth())
}

/// The first certificate of `path` (the device certificate), DER.
pub(crate) fn first_certificate(path: &Path) -> Result<CertificateDer<'static>, Error> {
    let mut certs = certificates(path, Material::Certificate)?;
    Ok(certs.swap_remove(0))
}

/// Builds the rustls client configuration: trust `rootCaPath` only, present the device
/// certificate, and check that the key belongs to the certificate.
pub(crate) fn tls_config(s: &ProviderSettings) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = roots(&s.root_ca_path)?;
    let chain = certificates(&s.certificate_file_path, Material::Certificate)?;
    let key = private_key(&s.private_key_path)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsSetup {
            detail: e.to_string(),
        })?
        .with_root_certificates(roots);
    let mut config = builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => Error::KeyMismatch {
                key_path: s.private_key_path.clone(),
                cert_path: s.certificate_file_path.clone(),
            },
            other => Error::BadPem {
                what: Material::PrivateKey.what(),
                key: Material::PrivateKey.key(),
                path: s.private_key_path.clone(),
                detail: other.to_string(),
            },
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client for one credentials load (its retries share the connection pool). A new one is
/// built for every load, so rotated certificate files and network changes are picked up.
pub(crate) fn http_client(s: &ProviderSettings) -> Result<reqwest::Client, Error> {
    let tls = tls_config(s)?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("gg-s3-sync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::TlsSetup {
            detail: e.to_string(),
        })
}

/// The request URL.
pub(crate) fn url(s: &ProviderSettings) -> String {
    format!(
        "https://{}/role-aliases/{}/credentials",
        s.endpoint, s.role_alias
    )
}

/// One request, no retries.
pub(crate) async fn fetch_once(
    client: &reqwest::Client,
    s: &ProviderSettings,
) -> Result<Issued, Error> {
    let endpoint = s.endpoint.to_string();
    let mut req = client.get(url(s)).header("accept", "application/json");
    if let Some(thing) = &s.thing_name {
        req = req.header("x-amzn-iot-thingname", thing);
    }
    let mut resp = req.send().await.map_err(|e| transport_error(&e, s))?;
    let status = resp.status().as_u16();
    let server_date = super::response::server_date(resp.headers());
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e, s))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return Err(Error::MalformedResponse {
                detail: format!("response body larger than {MAX_BODY} bytes"),
            });
        }
    }
    if status == 200 {
        return parse_success(&body).map(|issued| Issued {
            server_date,
            ..issued
        });
    }
    let cx = Context {
        role_alias: &s.role_alias,
        thing_name: s.thing_name.as_deref(),
        region: &s.region,
        endpoint: &endpoint,
    };
    Err(classify_failure(status, &body, &cx))
}

/// A certificate rejected only for the time: what the time check said, with the dates.
fn clock_problem(reason: &rustls::CertificateError) -> Option<String> {
    let at = |t: &rustls::pki_types::UnixTime| {
        super::rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.as_secs()))
    };
    match reason {
        rustls::CertificateError::NotValidYetContext { not_before, .. } => {
            Some(format!("not valid before {}", at(not_before)))
        }
        rustls::CertificateError::ExpiredContext { not_after, .. } => {
            Some(format!("expired at {}", at(not_after)))
        }
        rustls::CertificateError::NotValidYet => Some("not valid yet".into()),
        rustls::CertificateError::Expired => Some("expired".into()),
        _ => None,
    }
}

/// The time rustls verified against (the system clock: the TLS stack cannot use ours).
#[allow(clippy::disallowed_methods)]
fn now() -> SystemTime {
    SystemTime::now()
}

/// Finds the TLS or socket cause behind a reqwest error and names the fix.
fn transport_error(err: &reqwest::Error, s: &ProviderSettings) -> Error {
    let endpoint = s.endpoint.to_string();
    // A CONNECT answered with 407 (or tinyproxy's 401): hyper-util reports a tunnel error.
    let tunnel = crate::errtext::chain(err);
    if tunnel.contains("tunnel error") {
        let proxy = crate::proxy::for_request(|k| std::env::var(k).ok(), "https", &s.endpoint.host)
            .unwrap_or_else(|| "(from the environment)".into());
        return Error::ProxyRefused {
            proxy,
            endpoint,
            port: s.endpoint.port,
            detail: tunnel
                .rsplit(": ")
                .next()
                .unwrap_or("tunnel refused")
                .to_owned(),
        };
    }
    if let Some(tls) = find_rustls_error(err) {
        return match tls {
            rustls::Error::InvalidCertificate(reason) => match clock_problem(reason) {
                Some(what) => Error::ClockOutsideCertificate {
                    endpoint,
                    what,
                    now: super::rfc3339(now()),
                },
                None => Error::ServerNotTrusted {
                    endpoint,
                    ca_path: s.root_ca_path.clone(),
                    detail: format!("{reason:?}"),
                },
            },
            rustls::Error::AlertReceived(alert) => Error::CertificateRejected {
                endpoint,
                alert: format!("{alert:?}"),
            },
            other => Error::Handshake {
                endpoint,
                detail: other.to_string(),
            },
        };
    }
    if err.is_timeout() {
        return Error::Timeout { endpoint };
    }
    Error::Connect {
        endpoint,
        detail: root_cause(err),
    }
}

fn find_rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        // io::Error::source skips its own payload (which may be another io::Error), so look
        // inside explicitly.
        let mut payload = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref());
        while let Some(inner) = payload {
            if let Some(t) = inner.downcast_ref::<rustls::Error>() {
                return Some(t);
            }
            payload = inner
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref());
        }
        cur = e.source();
    }
    None
}
