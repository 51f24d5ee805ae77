//! Test PKI made with rcgen: a CA, a server certificate for `localhost`/`127.0.0.1`, and
//! device certificates, written as PEM files like a Greengrass installer writes them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// PKI failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen failed.
    #[error("cannot generate {what}")]
    Generate {
        /// What was being made.
        what: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its key, in memory and on disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Certificate, DER (what the TLS server sees).
    pub cert_der: Vec<u8>,
    /// Private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Certificate file.
    pub cert_path: PathBuf,
    /// Key file.
    pub key_path: PathBuf,
}

/// A certificate authority that can issue server and device certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate.
    pub files: CertFiles,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert", &self.files.cert_path)
            .finish_non_exhaustive()
    }
}

/// A PEM certificate chain and private key as rustls takes them for a server (both TLS
/// servers of the devstack use it). The error is the parser's text.
///
/// # Errors
/// The reason the chain or the key cannot be parsed.
pub fn server_identity(
    cert_pem: &str,
    key_pem: &str,
) -> Result<
    (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    String,
> {
    use rustls::pki_types::pem::PemObject as _;
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| e.to_string())?;
    Ok((chain, key))
}

fn gen<T>(what: &str, r: Result<T, rcgen::Error>) -> Result<T, Error> {
    r.map_err(|source| Error::Generate {
        what: what.to_owned(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}

/// Writes `<stem>.pem` and `<stem>.key` and returns both in memory too.
fn save(
    dir: &Path,
    stem: &str,
    cert: &rcgen::Certificate,
    key: &KeyPair,
) -> Result<CertFiles, Error> {
    let files = CertFiles {
        cert_pem: cert.pem(),
        cert_der: cert.der().to_vec(),
        key_pem: key.serialize_pem(),
        cert_path: dir.join(format!("{stem}.pem")),
        key_path: dir.join(format!("{stem}.key")),
    };
    write(&files.cert_path, &files.cert_pem)?;
    write(&files.key_path, &files.key_pem)?;
    Ok(files)
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

impl Ca {
    /// A new CA named `cn`, written to `dir/<file_stem>.pem` and `.key`.
    ///
    /// # Errors
    /// [`Error`] if generation or writing fails.
    pub fn new(dir: &Path, cn: &str, file_stem: &str) -> Result<Self, Error> {
        let key = gen("CA key", KeyPair::generate())?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = gen("CA certificate", params.self_signed(&key))?;
        let files = save(dir, file_stem, &cert, &key)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            files,
        })
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    ///
    /// # Errors
    /// [`Error`] if generation or writing fails.
    pub fn server(&self, dir: &Path, file_stem: &str) -> Result<CertFiles, Error> {
        // rcgen's own defaults: valid whatever the clock says.
        self.server_valid_between(dir, file_stem, (1975, 1, 1), (4096, 1, 1))
    }

    /// A server certificate for `localhost` and `127.0.0.1`, valid only between two dates.
    ///
    /// # Errors
    /// [`Error`] if generation or writing fails.
    pub fn server_valid_between(
        &self,
        dir: &Path,
        file_stem: &str,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> Result<CertFiles, Error> {
        let mut params = gen(
            "server certificate",
            CertificateParams::new(vec!["localhost".to_owned()]),
        )?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.distinguished_name = name("localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        self.issue(dir, file_stem, params, KeyPair::generate())
    }

    /// A server certificate for one IP address (a proxy reached by address).
    ///
    /// # Errors
    /// [`Error`] if generation or writing fails.
    pub fn server_for_ip(
        &self,
        dir: &Path,
        file_stem: &str,
        ip: std::net::IpAddr,
    ) -> Result<CertFiles, Error> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::IpAddress(ip)];
        params.distinguished_name = name(&ip.to_string());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(dir, file_stem, params, KeyPair::generate())
    }

    /// A device (client) certificate whose subject is `cn`, with an EC P-256 key.
    ///
    /// # Errors
    /// [`Error`] if generation or writing fails.
    pub fn device(&self, dir: &Path, file_stem: &str, cn: &str) -> Result<CertFiles, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(dir, file_stem, params, KeyPair::generate())
    }

    /// A device certificate valid only between two dates (e.g. already expired).
    ///
    /// # Errors
    /// [`Error`] if generation or writing fails.
    pub fn device_valid_between(
        &self,
        dir: &Path,
        file_stem: &str,
        cn: &str,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> Result<CertFiles, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        self.issue(dir, file_stem, params, KeyPair::generate())
    }

    /// A device certificate for an existing key (e.g. an RSA PKCS#1 key made by openssl).
    ///
    /// # Errors
    /// [`Error`] if the key cannot be read or the certificate made.
    pub fn device_for_key(
        &self,
        dir: &Path,
        file_stem: &str,
        cn: &str,
        key_pem: &str,
    ) -> Result<CertFiles, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = gen("key from PEM", KeyPair::from_pem(key_pem))?;
        let cert = gen("device certificate", params.signed_by(&key, &self.issuer))?;
        let cert_path = dir.join(format!("{file_stem}.pem"));
        write(&cert_path, &cert.pem())?;
        Ok(CertFiles {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key_pem.to_owned(),
            cert_path,
            key_path: PathBuf::new(),
        })
    }

    fn issue(
        &self,
        dir: &Path,
        file_stem: &str,
        params: CertificateParams,
        key: Result<KeyPair, rcgen::Error>,
    ) -> Result<CertFiles, Error> {
        let key = gen("key", key)?;
        let cert = gen("certificate", params.signed_by(&key, &self.issuer))?;
        save(dir, file_stem, &cert, &key)
    }
}
