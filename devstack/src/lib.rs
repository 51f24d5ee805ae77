//! devstack: the embedded local stack for gg-s3-sync.
//!
//! Runs, on loopback and with no AWS account:
//! - an **AWS IoT credentials provider** ([`credprov`]) that requires a client certificate and
//!   answers like AWS;
//! - **S3** ([`s3`]): s3s-fs embedded, accepting only the session credentials that provider
//!   issued, with a policy per role alias;
//! - a **test PKI** ([`pki`]) generated with rcgen.
//!
//! [`DevStack`] wires them together; the `devstack` binary (`demo`, `serve`) and the
//! integration tests share it.
//!
//! # Layout
//! - [`account`]: the fake account (aliases, devices, sessions) both servers consult.
//! - [`iam`]: the IAM-like policy language.
//! - [`credprov`], [`s3`], [`pki`]: the servers and certificates.
//! - [`tes`]: the nucleus's token exchange service, as the classic nucleus serves it.
//! - [`tls_front`]: `https://` in front of a plain server (S3 over TLS, an https proxy).
//! - [`fleet`]: many devices against one stack, and the load they make over time.

pub mod account;
pub mod credprov;
pub mod fleet;
pub mod iam;
mod listener;
pub mod nucleus;
pub mod pki;
pub mod s3;
pub mod tes;
pub mod tls_front;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

pub use account::{Account, Device, Role, RoleAlias};
pub use iam::Policy;

/// devstack failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Certificates.
    #[error("test PKI")]
    Pki(#[from] pki::Error),
    /// Credentials provider.
    #[error("credentials provider")]
    Credentials(#[from] credprov::Error),
    /// S3.
    #[error("S3 server")]
    S3(#[from] s3::Error),
    /// A file.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A calendar date (year, month, day).
pub type Ymd = (i32, u8, u8);

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Role alias to create.
    pub role_alias: String,
    /// Bucket to create.
    pub bucket: String,
    /// Thing attached to the device certificate.
    pub thing_name: String,
    /// What the alias's role may do.
    pub policy: Policy,
    /// `credentialDurationSeconds` of the alias.
    pub credential_duration: Duration,
    /// Where the credentials provider listens.
    pub credentials_bind: SocketAddr,
    /// Where S3 listens.
    pub s3_bind: SocketAddr,
    /// The credentials provider's certificate validity as (not before, not after) dates;
    /// `None`: always valid. A date in the future is what a device with a clock years behind
    /// sees.
    pub server_validity: Option<(Ymd, Ymd)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            role_alias: "GGS3SyncRoleAlias".into(),
            bucket: "gg-s3-sync-demo".into(),
            thing_name: "devstack-thing".into(),
            policy: Policy::read_bucket("gg-s3-sync-demo"),
            credential_duration: Duration::from_secs(3600),
            credentials_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            s3_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            server_validity: None,
        }
    }
}

impl Options {
    /// Defaults with another bucket (the policy follows it).
    #[must_use]
    pub fn with_bucket(bucket: &str) -> Self {
        Self {
            bucket: bucket.into(),
            policy: Policy::read_bucket(bucket),
            ..Self::default()
        }
    }
}

/// The running stack.
#[derive(Debug)]
pub struct DevStack {
    /// Everything lives under this folder (PKI, S3 data).
    pub dir: PathBuf,
    /// The fake account.
    pub account: Account,
    /// The CA that signs the server and the devices.
    pub ca: pki::Ca,
    /// The default device.
    pub device: pki::CertFiles,
    /// The credentials provider.
    pub credentials: credprov::CredentialsProvider,
    /// S3.
    pub s3: s3::S3Server,
    /// What was started.
    pub options: Options,
}

impl DevStack {
    /// Generates the PKI under `dir/pki`, starts both servers, creates the alias, the bucket
    /// and one registered device for `options.thing_name`.
    ///
    /// # Errors
    /// [`Error`] if anything fails to start.
    pub async fn start(dir: &Path, options: Options) -> Result<Self, Error> {
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(|source| Error::Write {
            path: pki_dir.clone(),
            source,
        })?;
        let ca = pki::Ca::new(&pki_dir, "devstack test CA", "ca")?;
        let server = match options.server_validity {
            Some((from, to)) => ca.server_valid_between(&pki_dir, "server", from, to)?,
            None => ca.server(&pki_dir, "server")?,
        };
        let device = ca.device(&pki_dir, "device", &options.thing_name)?;
        let account = Account::default();
        account.put_alias(
            &options.role_alias,
            RoleAlias {
                duration: options.credential_duration,
                role: Some(Role::new(options.policy.clone())),
            },
        );
        account.register_device(
            &device.cert_der,
            Device {
                thing: Some(options.thing_name.clone()),
                allowed_aliases: vec![options.role_alias.clone()],
                active: true,
            },
        );
        let credentials = credprov::CredentialsProvider::start(
            account.clone(),
            options.credentials_bind,
            &ca.files.cert_pem,
            &server.cert_pem,
            &server.key_pem,
        )
        .await?;
        let s3 = s3::S3Server::start(account.clone(), &dir.join("s3"), options.s3_bind).await?;
        s3.create_bucket(&options.bucket)?;
        Ok(Self {
            dir: dir.to_owned(),
            account,
            ca,
            device,
            credentials,
            s3,
            options,
        })
    }

    /// `localhost:<port>` of the credentials provider (the server certificate names localhost).
    #[must_use]
    pub fn credentials_endpoint(&self) -> String {
        format!("localhost:{}", self.credentials.addr().port())
    }

    /// The stack's device as a nucleus: its certificate, thing and role alias, which a TES
    /// exchanges.
    #[must_use]
    pub fn tes_nucleus(&self) -> tes::Nucleus {
        tes::Nucleus {
            cert_der: self.device.cert_der.clone(),
            thing: self.options.thing_name.clone(),
            role_alias: self.options.role_alias.clone(),
        }
    }

    /// A token exchange service answering as `flavor` on `127.0.0.1:<port>` (0 for any) for
    /// components holding `token`, exchanging the stack's device.
    ///
    /// # Errors
    /// [`tes::Error::Bind`].
    pub async fn start_tes(
        &self,
        flavor: tes::Flavor,
        port: u16,
        token: &str,
    ) -> Result<tes::TokenExchangeService, tes::Error> {
        tes::TokenExchangeService::start_as(
            flavor,
            self.account.clone(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            self.tes_nucleus(),
            token,
        )
        .await
    }

    /// A component configuration for the default device, syncing `prefix` into `local_dir`.
    #[must_use]
    pub fn component_config(&self, prefix: &str, local_dir: &Path, state_dir: &Path) -> Value {
        json!({
            "roleAlias": self.options.role_alias,
            "bucket": self.options.bucket,
            "prefix": prefix,
            "localDir": local_dir,
            "stateDir": state_dir,
            "region": "us-east-1",
            "s3EndpointUrl": self.s3.url(),
            "s3ForcePathStyle": true,
            "credentialsEndpoint": self.credentials_endpoint(),
            "thingName": self.options.thing_name,
            "certificateFilePath": self.device.cert_path,
            "privateKeyPath": self.device.key_path,
            "rootCaPath": self.ca.files.cert_path,
            "syncIntervalSeconds": "300",
            "maxConcurrency": "8",
        })
    }

    /// Writes `config` as JSON to `path`.
    ///
    /// # Errors
    /// [`Error::Write`].
    pub fn write_config(path: &Path, config: &Value) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(config).unwrap_or_default();
        std::fs::write(path, text).map_err(|source| Error::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// Issues and registers another device certificate.
    ///
    /// # Errors
    /// [`Error::Pki`].
    pub fn add_device(&self, file_stem: &str, device: Device) -> Result<pki::CertFiles, Error> {
        let cn = device.thing.clone().unwrap_or_else(|| file_stem.to_owned());
        let files = self.ca.device(&self.dir.join("pki"), file_stem, &cn)?;
        self.account.register_device(&files.cert_der, device);
        Ok(files)
    }

    /// Stops both servers.
    pub async fn stop(&self) {
        self.credentials.stop().await;
        self.s3.stop().await;
    }
}
