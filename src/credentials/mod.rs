//! Device certificate → temporary AWS credentials, via the AWS IoT credentials provider.
//!
//! [`IotCredentialsProvider`] owns its cache (aws-sdk-s3's identity cache is switched off, see
//! `sync::s3`), so the refresh policy is ours:
//! - **single flight**: one request at a time; callers that have nothing usable wait for it;
//! - **refresh ahead, in the background**: credentials are renewed
//!   `credentialsRefreshAheadSeconds` before they expire (at half-life if they live shorter than
//!   twice that); meanwhile every caller is served the still-valid ones at once, so a slow or
//!   failing endpoint never stalls S3 requests until real expiry is near;
//! - **retry** only what can succeed on retry (connect errors, timeouts, 429, 5xx), with capped
//!   jittered backoff;
//! - **negative cache**: after a failure the endpoint is not asked again for a while (4xx:
//!   [`CLIENT_ERROR_TTL`], others: [`SERVER_ERROR_TTL`]), so a misconfigured fleet does not hammer it;
//! - still-valid credentials are kept when a refresh fails;
//! - an expiration already in the past is a clock problem, reported as such.
//!
//! Secrets never reach logs or error messages: [`Secret`] has a redacting `Debug`.

mod endpoint;
pub mod expiry;
mod response;
pub mod tes;
pub mod x509;

pub use tes::TesEndpoint;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{self, error::CredentialsError, ProvideCredentials};
use aws_credential_types::Credentials;
use aws_smithy_types::date_time::{DateTime, Format};

use crate::backoff::Backoff;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::endpoint::Endpoint;

/// How long a 4xx-type failure is remembered before the endpoint is asked again.
pub const CLIENT_ERROR_TTL: Duration = Duration::from_secs(120);
/// How long a 5xx, throttling or network failure is remembered.
pub const SERVER_ERROR_TTL: Duration = Duration::from_secs(60);
/// Attempts per load for retryable failures.
const MAX_ATTEMPTS: u32 = 3;
/// Retry backoff within one load.
const RETRY_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(500),
    cap: Duration::from_secs(8),
};
/// How long a passing local condition (a wrong clock, a TES not up yet) is remembered before
/// asking again.
pub const CLOCK_ERROR_TTL: Duration = Duration::from_secs(15);
/// Cached credentials still this far from expiry are served when a refresh fails.
const STALE_MARGIN: Duration = Duration::from_secs(30);

/// A secret string whose `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(crate) String);

impl Secret {
    /// Wraps `value`.
    #[must_use]
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that sends it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("** redacted **")
    }
}

/// Credential-exchange failures, each naming the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configured file cannot be read.
    #[error("cannot read the {what} {} ({key}): {hint}", path.display())]
    ReadFile {
        /// What the file is.
        what: &'static str,
        /// The configuration key naming it.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The fix.
        hint: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A configured file is not the PEM expected.
    #[error("the {what} {} ({key}) is not usable: {detail}", path.display())]
    BadPem {
        /// What the file is.
        what: &'static str,
        /// The configuration key naming it.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The private key is not the certificate's.
    #[error(
        "the private key {} does not match the certificate {}; set privateKeyPath and \
         certificateFilePath to the key and the certificate issued for it",
        key_path.display(), cert_path.display()
    )]
    KeyMismatch {
        /// privateKeyPath.
        key_path: PathBuf,
        /// certificateFilePath.
        cert_path: PathBuf,
    },
    /// The TLS client could not be set up.
    #[error("cannot set up TLS for the credentials endpoint: {detail}")]
    TlsSetup {
        /// What failed.
        detail: String,
    },
    /// The server's certificate is not signed by a CA in rootCaPath.
    #[error(
        "the credentials endpoint {endpoint} presented a certificate that rootCaPath {} does not trust ({detail}); \
         set rootCaPath to a file holding Amazon Root CA 1 (or the CA of your endpoint) and check credentialsEndpoint",
        ca_path.display()
    )]
    ServerNotTrusted {
        /// The endpoint.
        endpoint: String,
        /// rootCaPath.
        ca_path: PathBuf,
        /// The verifier's reason.
        detail: String,
    },
    /// The endpoint's certificate is outside its validity period by this device's clock: the
    /// clock is wrong (a board without a real-time clock, before NTP), not the CA file.
    #[error(
        "the credentials endpoint {endpoint}'s certificate is {what} by this device's clock ({now}); \
         the clock is wrong, not rootCaPath: enable time synchronisation (NTP); retrying soon"
    )]
    ClockOutsideCertificate {
        /// The endpoint.
        endpoint: String,
        /// `not valid before <time>` or `expired at <time>`.
        what: String,
        /// This device's time (RFC 3339).
        now: String,
    },
    /// The proxy refused to open the tunnel (wrong or missing credentials, or a policy).
    #[error(
        "the proxy {proxy} refused the tunnel to the credentials endpoint {endpoint} ({detail}); \
         check the user and password in HTTPS_PROXY (under Greengrass: the nucleus's networkProxy \
         configuration), and that the proxy allows CONNECT to port {port}"
    )]
    ProxyRefused {
        /// The proxy, without credentials.
        proxy: String,
        /// The endpoint.
        endpoint: String,
        /// Its port.
        port: u16,
        /// What the HTTP stack said.
        detail: String,
    },
    /// The token exchange service is not answering (at boot it may not be up yet).
    #[error("the nucleus's token exchange service at {uri} does not answer ({detail}); it may still be starting: retrying")]
    TesUnavailable {
        /// `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
        uri: String,
        /// The connection error.
        detail: String,
    },
    /// The token exchange service refused this component's token.
    #[error(
        "the nucleus's token exchange service at {uri} refused this component's token \
         (AWS_CONTAINER_AUTHORIZATION_TOKEN; it answered {answer}); the recipe must depend on \
         aws.greengrass.TokenExchangeService, then redeploy or restart the component"
    )]
    TesRefused {
        /// The URI.
        uri: String,
        /// Its status and text.
        answer: String,
    },
    /// The token exchange service could not get credentials (its own exchange failed).
    #[error(
        "the nucleus's token exchange service at {uri} answered {status}: {message}; it exchanges the \
         nucleus's certificate for the nucleus's iotRoleAlias: check that alias, its IAM role's S3 \
         permissions, and the nucleus's log"
    )]
    TesFailed {
        /// The URI.
        uri: String,
        /// HTTP status.
        status: u16,
        /// Its text (the credentials provider's error, passed on).
        message: String,
    },
    /// `credentialsSource: tes` (or a key only the nucleus can use), but no TES is offered.
    #[error(
        "{why}, and no token exchange service is offered (AWS_CONTAINER_CREDENTIALS_FULL_URI is not set): \
         the recipe must depend on aws.greengrass.TokenExchangeService (it does by default), or set \
         credentialsSource to iot with a key file this component can read"
    )]
    NoTes {
        /// Why TES was wanted.
        why: String,
    },
    /// The server refused the device certificate during the TLS handshake.
    #[error(
        "the credentials endpoint {endpoint} rejected the device certificate (TLS alert {alert}); \
         make sure the certificate is registered and ACTIVE in this account and region, and that \
         credentialsEndpoint is this account's iot:CredentialProvider endpoint"
    )]
    CertificateRejected {
        /// The endpoint.
        endpoint: String,
        /// The TLS alert received.
        alert: String,
    },
    /// Another TLS failure.
    #[error("TLS handshake with the credentials endpoint {endpoint} failed: {detail}")]
    Handshake {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        detail: String,
    },
    /// No TCP connection.
    #[error(
        "cannot connect to the credentials endpoint {endpoint} ({detail}); check credentialsEndpoint \
         (aws iot describe-endpoint --endpoint-type iot:CredentialProvider), DNS, the network and any proxy"
    )]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The innermost cause.
        detail: String,
    },
    /// The endpoint did not answer in time.
    #[error("the credentials endpoint {endpoint} did not answer in time")]
    Timeout {
        /// The endpoint.
        endpoint: String,
    },
    /// 403 `Invalid thing name passed`.
    #[error(
        "the credentials provider refused thing name '{thing_name}' (403 {message}); set thingName \
         to the AWS IoT thing attached to this certificate (aws iot list-principal-things)"
    )]
    InvalidThingName {
        /// The thing name sent.
        thing_name: String,
        /// AWS's message.
        message: String,
    },
    /// 403 `Access Denied`.
    #[error(
        "the credentials provider denied role alias '{role_alias}' (403 {message}); attach to this \
         certificate an AWS IoT policy that allows iot:AssumeRoleWithCertificate on {arn}"
    )]
    AccessDenied {
        /// The alias.
        role_alias: String,
        /// The alias ARN the policy must name.
        arn: String,
        /// AWS's message.
        message: String,
    },
    /// 403 `Certificate is invalid on this endpoint`.
    #[error(
        "the credentials endpoint {endpoint} does not accept this certificate (403 {message}); use the \
         iot:CredentialProvider endpoint of the account and region where the certificate is registered"
    )]
    CertificateNotValid {
        /// The endpoint.
        endpoint: String,
        /// AWS's message.
        message: String,
    },
    /// 404: the alias does not exist.
    #[error(
        "role alias '{role_alias}' does not exist (404 {message}); create it (aws iot create-role-alias) \
         or fix roleAlias, and check that credentialsEndpoint is in the alias's region ({region})"
    )]
    RoleAliasNotFound {
        /// The alias.
        role_alias: String,
        /// The configured region.
        region: String,
        /// AWS's message.
        message: String,
    },
    /// 400: the IAM role is missing or does not trust the credentials provider.
    #[error(
        "role alias '{role_alias}' points to an IAM role that cannot be assumed (400 {message}); make sure \
         the role exists and its trust policy allows sts:AssumeRole for the service principal \
         credentials.iot.amazonaws.com"
    )]
    CannotAssumeRole {
        /// The alias.
        role_alias: String,
        /// AWS's message.
        message: String,
    },
    /// 400: alias duration longer than the role allows.
    #[error(
        "role alias '{role_alias}' asks for longer credentials than its IAM role allows (400 {message}); \
         lower the alias's credentialDurationSeconds or raise the role's MaxSessionDuration"
    )]
    DurationTooLong {
        /// The alias.
        role_alias: String,
        /// AWS's message.
        message: String,
    },
    /// 429.
    #[error("the credentials provider is throttling requests (429 {message})")]
    Throttled {
        /// AWS's message.
        message: String,
    },
    /// 5xx.
    #[error("the credentials provider failed ({status} {message})")]
    ServerError {
        /// HTTP status.
        status: u16,
        /// AWS's message.
        message: String,
    },
    /// Another non-200 status.
    #[error("the credentials provider refused the request ({status} {message})")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// AWS's message.
        message: String,
    },
    /// 200 with a body that is not credentials.
    #[error("the credentials provider sent an unusable response: {detail}")]
    MalformedResponse {
        /// What is wrong (never the values).
        detail: String,
    },
    /// The credentials are already expired on the clock that issued them (or, without a
    /// `Date` in the answer, on this device's).
    #[error(
        "the credentials provider issued credentials that expire at {expiration}, already past at {now} \
         (its own clock when it answered, else this device's); check the role alias's \
         credentialDurationSeconds and enable time synchronisation (NTP)"
    )]
    ExpiredOnArrival {
        /// Expiry (RFC 3339).
        expiration: String,
        /// Local time (RFC 3339).
        now: String,
    },
}

impl Error {
    /// Whether retrying the same request can succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::Timeout { .. }
                | Self::Throttled { .. }
                | Self::ServerError { .. }
                | Self::MalformedResponse { .. }
                | Self::TesUnavailable { .. }
        ) || matches!(self, Self::TesFailed { status, .. } if *status >= 500)
    }

    /// A stable short code for status documents and scripts.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::ReadFile { .. } => "CredentialFileUnreadable",
            Self::BadPem { .. } => "CredentialFileInvalid",
            Self::KeyMismatch { .. } => "KeyCertificateMismatch",
            Self::TlsSetup { .. } | Self::Handshake { .. } => "TlsHandshakeFailed",
            Self::ServerNotTrusted { .. } => "CredentialsEndpointUntrusted",
            Self::ClockOutsideCertificate { .. } => "ClockWrong",
            Self::ProxyRefused { .. } => "ProxyRefused",
            Self::TesUnavailable { .. } => "TokenExchangeUnavailable",
            Self::TesRefused { .. } => "TokenExchangeRefused",
            Self::TesFailed { .. } => "TokenExchangeFailed",
            Self::NoTes { .. } => "TokenExchangeNotOffered",
            Self::CertificateRejected { .. } => "CertificateRejected",
            Self::Connect { .. } | Self::Timeout { .. } => "CredentialsEndpointUnreachable",
            Self::InvalidThingName { .. } => "InvalidThingName",
            Self::AccessDenied { .. } => "RoleAliasAccessDenied",
            Self::CertificateNotValid { .. } => "CertificateNotValidOnEndpoint",
            Self::RoleAliasNotFound { .. } => "RoleAliasNotFound",
            Self::CannotAssumeRole { .. } => "CannotAssumeRole",
            Self::DurationTooLong { .. } => "CredentialDurationTooLong",
            Self::Throttled { .. } => "CredentialsThrottled",
            Self::ServerError { .. } => "CredentialsServerError",
            Self::Rejected { .. } => "CredentialsRequestRejected",
            Self::MalformedResponse { .. } => "CredentialsResponseMalformed",
            Self::ExpiredOnArrival { .. } => "ClockSkew",
        }
    }

    /// How long to remember this failure before asking the endpoint again.
    fn negative_ttl(&self) -> Duration {
        match self {
            // Local problems cost no network; let a fix take effect at once.
            Self::ReadFile { .. }
            | Self::BadPem { .. }
            | Self::KeyMismatch { .. }
            | Self::TlsSetup { .. } => Duration::ZERO,
            Self::Connect { .. }
            | Self::Timeout { .. }
            | Self::Throttled { .. }
            | Self::ServerError { .. }
            | Self::MalformedResponse { .. } => SERVER_ERROR_TTL,
            // NTP usually fixes the clock within minutes, and the nucleus's TES comes up
            // seconds after the component at boot: ask again soon.
            Self::ClockOutsideCertificate { .. } | Self::TesUnavailable { .. } => CLOCK_ERROR_TTL,
            _ => CLIENT_ERROR_TTL,
        }
    }
}

/// What the local credential files say, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The certificate's notBefore.
    pub not_before: SystemTime,
    /// The certificate's notAfter.
    pub not_after: SystemTime,
}

/// Checks the certificate, key and CA files without any network traffic: readable, PEM, the
/// key belongs to the certificate; returns the certificate's validity period.
///
/// # Errors
/// The same [`Error`]s a credentials request would report for these files.
pub fn inspect_files(s: &ProviderSettings) -> Result<CertificateInfo, Error> {
    endpoint::tls_config(s)?;
    let der = endpoint::first_certificate(&s.certificate_file_path)?;
    let (not_before, not_after) = x509::validity(&der).map_err(|detail| Error::BadPem {
        what: "device certificate",
        key: "certificateFilePath",
        path: s.certificate_file_path.clone(),
        detail,
    })?;
    Ok(CertificateInfo {
        not_before,
        not_after,
    })
}

/// A rustls client configuration presenting the device certificate and trusting only the CAs
/// in `root_ca_path` (used for MQTT, with the same file checks as the credentials exchange).
///
/// # Errors
/// The [`Error`] naming the unreadable or mismatched file.
pub fn client_tls_config(
    s: &ProviderSettings,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, Error> {
    let mut config = endpoint::tls_config(s)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A rustls client configuration trusting only the CAs in `root_ca_path`, presenting no
/// certificate (an `https://` proxy's TLS).
///
/// # Errors
/// The [`Error`] naming the unreadable file.
pub fn proxy_tls_config(root_ca_path: &std::path::Path) -> Result<rustls::ClientConfig, Error> {
    endpoint::trust_only_config(root_ca_path)
}

/// Whether an error is about TLS (trust, certificate rejection, handshake).
#[must_use]
pub fn is_tls_problem(e: &Error) -> bool {
    matches!(
        e,
        Error::ServerNotTrusted { .. }
            | Error::CertificateRejected { .. }
            | Error::Handshake { .. }
    )
}

/// Formats a time as RFC 3339 for messages.
#[must_use]
pub fn rfc3339(t: SystemTime) -> String {
    DateTime::from(t)
        .fmt(Format::DateTime)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// What the provider needs from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSettings {
    /// The credentials endpoint.
    pub endpoint: Endpoint,
    /// The role alias.
    pub role_alias: String,
    /// Sent as `x-amzn-iot-thingname` when set.
    pub thing_name: Option<String>,
    /// Device certificate.
    pub certificate_file_path: PathBuf,
    /// Device private key.
    pub private_key_path: PathBuf,
    /// Trusted CAs for the endpoint.
    pub root_ca_path: PathBuf,
    /// Used to name ARNs in errors.
    pub region: String,
    /// Renew this long before expiry.
    pub refresh_ahead: Duration,
    /// `credentialsSource`.
    pub source: crate::config::CredentialsSource,
    /// The nucleus's token exchange service, if it offers one to this component.
    pub tes: Option<TesEndpoint>,
}

/// The source a load uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// The AWS IoT credentials provider, with this component's certificate and key.
    Iot,
    /// The nucleus's token exchange service.
    Tes,
}

impl Chosen {
    /// `iot` or `tes`, as logged and reported.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Iot => "iot",
            Self::Tes => "tes",
        }
    }

    /// The role alias whose role the credentials carry: this component's `own` for `iot`, the
    /// nucleus's `iotRoleAlias` for `tes` (`None` when the nucleus does not say).
    #[must_use]
    pub fn role_alias(self, own: &str, nucleus: Option<&str>) -> Option<String> {
        match self {
            Self::Iot => Some(own.to_owned()),
            Self::Tes => nucleus.map(str::to_owned),
        }
    }
}

/// Which source to use (pure): `iot` and `tes` as configured; `auto` takes `tes` when the key is
/// an HSM/TPM URI or not readable here and a TES is offered, else `iot`.
///
/// # Errors
/// [`Error::NoTes`] when TES is needed but not offered.
pub fn choose_source(
    source: crate::config::CredentialsSource,
    key_path: &std::path::Path,
    key_readable: bool,
    tes_offered: bool,
) -> Result<Chosen, Error> {
    use crate::config::CredentialsSource as S;
    let key_uri = crate::config::is_key_uri(&key_path.to_string_lossy());
    match source {
        S::Iot => Ok(Chosen::Iot),
        S::Tes if tes_offered => Ok(Chosen::Tes),
        S::Tes => Err(Error::NoTes {
            why: "credentialsSource is tes".into(),
        }),
        S::Auto if (key_uri || !key_readable) && tes_offered => Ok(Chosen::Tes),
        S::Auto if key_uri => Err(Error::NoTes {
            why: format!(
                "the device key is in an HSM or TPM ({}), which only the nucleus can use",
                key_path.display()
            ),
        }),
        S::Auto => Ok(Chosen::Iot),
    }
}

impl From<&Config> for ProviderSettings {
    fn from(c: &Config) -> Self {
        Self {
            source: c.credentials_source,
            tes: TesEndpoint::from_vars(|k| std::env::var(k).ok()),
            endpoint: c.credentials_endpoint.clone(),
            role_alias: c.role_alias.clone(),
            thing_name: c.thing_name.clone(),
            certificate_file_path: c.certificate_file_path.clone(),
            private_key_path: c.private_key_path.clone(),
            root_ca_path: c.root_ca_path.clone(),
            region: c.region.clone(),
            refresh_ahead: c.credentials_refresh_ahead,
        }
    }
}

/// When to renew credentials that expire at `expiration`, fetched at `now` (pure).
///
/// Normally `refresh_ahead` before expiry; for credentials that live shorter than twice that,
/// at half-life, so short-lived credentials are not re-fetched on every use.
#[must_use]
pub fn refresh_time(
    now: SystemTime,
    expiration: SystemTime,
    refresh_ahead: Duration,
) -> SystemTime {
    let lifetime = expiration.duration_since(now).unwrap_or(Duration::ZERO);
    expiration - refresh_ahead.min(lifetime / 2)
}

#[derive(Debug, Clone)]
struct Cached {
    credentials: Credentials,
    expiration: SystemTime,
    refresh_at: SystemTime,
}

#[derive(Debug, Default)]
struct State {
    current: Option<Cached>,
    failure: Option<(Arc<Error>, SystemTime)>,
    /// A background refresh is under way.
    refreshing: bool,
}

#[derive(Debug)]
struct Inner {
    settings: ProviderSettings,
    clock: SharedClock,
    /// Held only to read or update, never across an await.
    state: std::sync::Mutex<State>,
    /// Held across a load: one request to the endpoint at a time (single flight).
    flight: tokio::sync::Mutex<()>,
    requests: AtomicU64,
    /// This device's clock minus the credentials provider's, from its last answer (seconds).
    skew: std::sync::Mutex<Option<i64>>,
    /// The source of the credentials in use.
    chosen: std::sync::Mutex<Option<Chosen>>,
}

/// What a caller gets, decided under the state lock (pure given the state and the time).
enum Decision {
    Serve(Credentials),
    /// Serve these, and start a background refresh (the refresh is due, they are still valid).
    ServeAndRefresh(Credentials),
    Fail(Arc<Error>),
    /// Nothing usable: load and wait for it.
    Load,
}

impl State {
    fn decide(&mut self, now: SystemTime, may_start_refresh: bool) -> Decision {
        if let Some(c) = &self.current {
            if now < c.refresh_at {
                return Decision::Serve(c.credentials.clone());
            }
        }
        if let Some((err, until)) = &self.failure {
            if now < *until {
                return match usable(self.current.as_ref(), now) {
                    Some(c) => Decision::Serve(c),
                    None => Decision::Fail(err.clone()),
                };
            }
        }
        match usable(self.current.as_ref(), now) {
            Some(c) if may_start_refresh && !self.refreshing => {
                self.refreshing = true;
                Decision::ServeAndRefresh(c)
            }
            Some(c) if self.refreshing => Decision::Serve(c),
            _ => Decision::Load,
        }
    }
}

/// Credentials from the AWS IoT credentials provider, cached. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IotCredentialsProvider {
    inner: Arc<Inner>,
}

impl IotCredentialsProvider {
    /// A provider; nothing is fetched until credentials are needed.
    #[must_use]
    pub fn new(settings: ProviderSettings, clock: SharedClock) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                clock,
                state: std::sync::Mutex::new(State::default()),
                flight: tokio::sync::Mutex::new(()),
                requests: AtomicU64::new(0),
                skew: std::sync::Mutex::new(None),
                chosen: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The settings in use.
    #[must_use]
    pub fn settings(&self) -> &ProviderSettings {
        &self.inner.settings
    }

    /// How many HTTP requests were sent to the endpoint so far.
    #[must_use]
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This device's clock minus the credentials provider's, as measured from its last answer
    /// (seconds; positive: the device is ahead). `None` before any answer with a `Date`.
    #[must_use]
    pub fn clock_skew_seconds(&self) -> Option<i64> {
        *self
            .inner
            .skew
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Now, by the provider's (injected) clock: what requests signed with its credentials use.
    #[must_use]
    pub fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// Where the credentials in use came from (`None` before the first success).
    #[must_use]
    pub fn source_in_use(&self) -> Option<Chosen> {
        *self
            .inner
            .chosen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Expiry of the cached credentials, if any (for status reports; never the credentials).
    pub async fn expiration(&self) -> Option<SystemTime> {
        self.state().current.as_ref().map(|c| c.expiration)
    }

    /// Drops cached credentials (e.g. after S3 answered `ExpiredToken`), so the next call fetches.
    pub async fn invalidate(&self) {
        let mut state = self.state();
        state.current = None;
        state.failure = None;
    }

    /// Valid credentials: cached, or fetched now. While the cached ones are still valid, a due
    /// refresh runs in the background and callers are served at once; a caller waits only when
    /// nothing usable is cached (first call, or real expiry near).
    ///
    /// # Errors
    /// The shared [`Error`] of the last failed fetch while it is negatively cached.
    pub async fn credentials(&self) -> Result<Credentials, Arc<Error>> {
        let now = self.inner.clock.now();
        match self.state().decide(now, true) {
            Decision::Serve(c) => return Ok(c),
            Decision::Fail(e) => return Err(e),
            Decision::ServeAndRefresh(c) => {
                let me = self.clone();
                tokio::spawn(async move {
                    let _flight = me.inner.flight.lock().await;
                    // Errors are cached and logged by load_and_store; callers still have
                    // valid credentials meanwhile.
                    let _ = me.load_and_store().await;
                });
                return Ok(c);
            }
            Decision::Load => {}
        }
        let _flight = self.inner.flight.lock().await;
        // Another caller may have loaded while this one waited.
        let now = self.inner.clock.now();
        match self.state().decide(now, false) {
            Decision::Serve(c) | Decision::ServeAndRefresh(c) => return Ok(c),
            Decision::Fail(e) => return Err(e),
            Decision::Load => {}
        }
        self.load_and_store().await
    }

    /// Loads, caches the result (or the failure, negatively), and answers as `credentials`.
    /// The caller holds the flight lock.
    async fn load_and_store(&self) -> Result<Credentials, Arc<Error>> {
        let result = self.load().await;
        let now = self.inner.clock.now();
        let mut state = self.state();
        state.refreshing = false;
        match result {
            Ok(cached) => {
                let creds = cached.credentials.clone();
                match self.source_in_use() {
                    Some(Chosen::Tes) => tracing::info!(
                        source = "tes",
                        role_alias = "the nucleus's iotRoleAlias",
                        expires = %rfc3339(cached.expiration),
                        "obtained credentials from the nucleus's token exchange service"
                    ),
                    _ => tracing::info!(
                        source = "iot",
                        role_alias = %self.inner.settings.role_alias,
                        expires = %rfc3339(cached.expiration),
                        "obtained credentials from the AWS IoT credentials provider"
                    ),
                }
                state.current = Some(cached);
                state.failure = None;
                Ok(creds)
            }
            Err(err) => {
                let err = Arc::new(err);
                let ttl = err.negative_ttl();
                if !ttl.is_zero() {
                    state.failure = Some((err.clone(), now + ttl));
                }
                if let Some(c) = usable(state.current.as_ref(), now) {
                    tracing::warn!(error = %err, "credential refresh failed; using cached credentials until they expire");
                    return Ok(c);
                }
                Err(err)
            }
        }
    }

    /// One load: up to [`MAX_ATTEMPTS`] requests for retryable failures, from the source
    /// [`choose_source`] picks now (a key file that becomes readable switches `auto` back).
    async fn load(&self) -> Result<Cached, Error> {
        let s = &self.inner.settings;
        let key_readable = std::fs::File::open(&s.private_key_path).is_ok();
        let chosen = choose_source(s.source, &s.private_key_path, key_readable, s.tes.is_some())?;
        let client = match chosen {
            Chosen::Iot => endpoint::http_client(s)?,
            Chosen::Tes => tes::client()?,
        };
        let mut attempt = 0;
        loop {
            self.inner.requests.fetch_add(1, Ordering::Relaxed);
            let result = match (chosen, &s.tes) {
                (Chosen::Tes, Some(t)) => tes::fetch(&client, t).await,
                _ => endpoint::fetch_once(&client, s).await,
            };
            match result {
                Ok(issued) => {
                    *self
                        .inner
                        .chosen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(chosen);
                    return self.accept(issued);
                }
                Err(e) if e.is_retryable() && attempt + 1 < MAX_ATTEMPTS => {
                    let delay = RETRY_BACKOFF.random_delay(attempt);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis(), "credentials request failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn accept(&self, issued: response::Issued) -> Result<Cached, Error> {
        let now = self.inner.clock.now();
        if let Some(date) = issued.server_date {
            let skew = expiry::skew_seconds(now, date);
            *self
                .inner
                .skew
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(skew);
            if skew.unsigned_abs() >= expiry::NOTABLE_SKEW.as_secs() {
                tracing::warn!(
                    skew_seconds = skew,
                    "this device's clock is {} s {} the AWS IoT credentials provider's; credentials are judged on its clock, S3 requests correct for it, but enable time synchronisation (NTP)",
                    skew.unsigned_abs(),
                    if skew > 0 { "ahead of" } else { "behind" }
                );
            }
        }
        let Some(local_expiration) =
            expiry::local_expiration(now, issued.server_date, issued.expiration)
        else {
            return Err(Error::ExpiredOnArrival {
                expiration: rfc3339(issued.expiration),
                now: rfc3339(issued.server_date.unwrap_or(now)),
            });
        };
        let issued = response::Issued {
            expiration: local_expiration,
            ..issued
        };
        let refresh_at = refresh_time(now, issued.expiration, self.inner.settings.refresh_ahead);
        Ok(Cached {
            credentials: Credentials::new(
                issued.access_key_id,
                issued.secret_access_key.0,
                Some(issued.session_token.0),
                Some(issued.expiration),
                "aws-iot-credentials-provider",
            ),
            expiration: issued.expiration,
            refresh_at,
        })
    }
}

fn usable(current: Option<&Cached>, now: SystemTime) -> Option<Credentials> {
    current
        .filter(|c| now + STALE_MARGIN < c.expiration)
        .map(|c| c.credentials.clone())
}

impl ProvideCredentials for IotCredentialsProvider {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            self.credentials()
                .await
                .map_err(CredentialsError::provider_error)
        })
    }
}

/// Finds a credentials [`Error`] anywhere in an error's source chain (e.g. inside an SDK error).
#[must_use]
pub fn find_in_chain<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<Error>() {
            return Some(found);
        }
        if let Some(found) = e.downcast_ref::<Arc<Error>>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_role_alias_in_use_follows_the_source() {
        assert_eq!(
            Chosen::Iot.role_alias("own", Some("nucleus")).as_deref(),
            Some("own")
        );
        assert_eq!(
            Chosen::Tes.role_alias("own", Some("nucleus")).as_deref(),
            Some("nucleus")
        );
        assert_eq!(Chosen::Tes.role_alias("own", None), None);
    }

    use super::*;

    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn refresh_ahead_for_long_credentials() {
        let now = SystemTime::UNIX_EPOCH + H;
        let exp = now + H;
        assert_eq!(
            refresh_time(now, exp, Duration::from_secs(300)),
            exp - Duration::from_secs(300)
        );
    }

    #[test]
    fn refresh_at_half_life_for_short_credentials() {
        let now = SystemTime::UNIX_EPOCH + H;
        let exp = now + Duration::from_secs(10);
        assert_eq!(
            refresh_time(now, exp, Duration::from_secs(300)),
            now + Duration::from_secs(5)
        );
        // Already expired: refresh immediately (and the caller reports a clock problem).
        assert_eq!(refresh_time(exp, now, Duration::from_secs(300)), now);
    }

    #[test]
    fn the_source_follows_the_key() {
        use crate::config::CredentialsSource as S;
        let file = std::path::Path::new("/greengrass/v2/privKey.key");
        let hsm = std::path::Path::new("pkcs11:token=gg;object=key;type=private");
        assert_eq!(
            choose_source(S::Auto, file, true, true).unwrap(),
            Chosen::Iot
        );
        assert_eq!(
            choose_source(S::Auto, file, false, true).unwrap(),
            Chosen::Tes,
            "unreadable here: the nucleus can still use it"
        );
        assert_eq!(
            choose_source(S::Auto, hsm, false, true).unwrap(),
            Chosen::Tes
        );
        assert!(matches!(
            choose_source(S::Auto, hsm, false, false),
            Err(Error::NoTes { .. })
        ));
        assert_eq!(
            choose_source(S::Auto, file, false, false).unwrap(),
            Chosen::Iot,
            "the iot error names the key"
        );
        assert_eq!(
            choose_source(S::Iot, hsm, false, true).unwrap(),
            Chosen::Iot
        );
        assert!(matches!(
            choose_source(S::Tes, file, true, false),
            Err(Error::NoTes { .. })
        ));
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret("abc".into())), "** redacted **");
    }

    #[test]
    fn negative_ttls() {
        let e = Error::Throttled {
            message: String::new(),
        };
        assert_eq!(e.negative_ttl(), SERVER_ERROR_TTL);
        let e = Error::RoleAliasNotFound {
            role_alias: "a".into(),
            region: "r".into(),
            message: String::new(),
        };
        assert_eq!(e.negative_ttl(), CLIENT_ERROR_TTL);
        let e = Error::KeyMismatch {
            key_path: "k".into(),
            cert_path: "c".into(),
        };
        assert_eq!(e.negative_ttl(), Duration::ZERO);
    }
}
