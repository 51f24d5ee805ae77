//! The S3 side: one aws-sdk-s3 client, paginated listing, streaming GETs, and S3 errors mapped
//! to what the user must change.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::{BehaviorVersion, IdentityCache, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::types::{ChecksumMode, EncodingType};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use super::plan::{normalize_etag, url_decode_key, Remote};
use super::Error;
use crate::credentials::{self, IotCredentialsProvider};
use crate::errtext::root_cause;

/// Keys per ListObjectsV2 page (the S3 maximum).
const PAGE_SIZE: i32 = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

mod lean;

/// Where objects come from.
#[derive(Debug, Clone)]
pub struct Source {
    client: aws_sdk_s3::Client,
    bucket: String,
    region: String,
    /// Small listed objects are fetched without the SDK's orchestration ([`lean`]).
    lean: std::sync::Arc<lean::Lean>,
    provider: IotCredentialsProvider,
}

/// Objects up to this size may take the lean GET.
pub const LEAN_MAX: u64 = 256 * 1024;

/// S3 connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// Bucket.
    pub bucket: String,
    /// Signing region.
    pub region: String,
    /// Custom endpoint.
    pub endpoint_url: Option<String>,
    /// Path-style addressing.
    pub force_path_style: bool,
    /// The root CA file (`rootCaPath`), trusted for S3 next to the platform's CAs: an
    /// `https://` proxy's CA (which the nucleus has users append there) or a private S3
    /// endpoint's.
    pub root_ca_path: Option<std::path::PathBuf>,
}

/// `pem` if every certificate in it can be a trust anchor, else `None` (pure). The SDK's
/// rustls provider panics on a certificate it cannot parse (`expect("valid PEM certificate")`
/// in `aws-smithy-http-client`'s `rustls_root_certs`), so a bad root CA file must never reach
/// it; the credentials exchange names that file's problem.
fn usable_roots(pem: Vec<u8>) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject as _;
    let ders = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let mut store = rustls::RootCertStore::empty();
    let any = !ders.is_empty();
    for der in ders {
        store.add(der).ok()?;
    }
    any.then_some(pem)
}

/// The SDK's default HTTPS connector (hyper, rustls with aws-lc, proxies from the environment,
/// as `aws-smithy-runtime`'s `default_https_client` builds it), trusting `extra_roots_pem` as
/// well as the platform's CAs when given.
fn connector(
    extra_roots_pem: Option<&[u8]>,
    settings: Option<&aws_smithy_runtime_api::client::http::HttpConnectorSettings>,
    sleep: Option<aws_smithy_async::rt::sleep::SharedAsyncSleep>,
) -> aws_smithy_http_client::Connector {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
    use aws_smithy_http_client::ConnectorBuilder;
    let mut conn = ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(
        tls::rustls_provider::CryptoMode::AwsLc,
    ));
    if let Some(pem) = extra_roots_pem {
        let context = TlsContext::builder()
            .with_trust_store(TrustStore::default().with_pem_certificate(pem.to_vec()))
            .build()
            .unwrap_or_default();
        conn = conn.tls_context(context);
    }
    conn.set_connector_settings(settings.cloned());
    conn.set_sleep_impl(sleep);
    conn.set_proxy_config(Some(ProxyConfig::from_env()));
    conn.build()
}

/// One page of a listing.
#[derive(Debug)]
pub struct Page {
    /// The objects, in key order.
    pub objects: Vec<Remote>,
    /// Objects in an archive storage class (`GLACIER`, `DEEP_ARCHIVE`): a GET fails with
    /// `InvalidObjectState` until someone restores them. `(key, storage class)`.
    pub archived: Vec<(String, String)>,
    /// Token for the next page.
    pub next: Option<String>,
}

impl Source {
    /// Builds the client. Credentials come only from `provider` (no default chain, which could
    /// pick up other credentials on a device) and are cached by it, not by the SDK.
    #[must_use]
    pub fn new(settings: &S3Settings, provider: IotCredentialsProvider) -> Self {
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(provider.clone())
            .identity_cache(IdentityCache::no_cache())
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            )
            .force_path_style(settings.force_path_style);
        if let Some(url) = &settings.endpoint_url {
            b = b.endpoint_url(url);
        }
        let extra_roots = settings
            .root_ca_path
            .as_ref()
            .and_then(|p| super::off_runtime(|| std::fs::read(p).ok()))
            .and_then(usable_roots);
        // One connector (one TLS trust store, one connection pool) for the SDK and the lean
        // GET: built as the SDK's default, with the SDK's timeouts.
        let shared = aws_smithy_runtime_api::client::http::SharedHttpConnector::new(connector(
            extra_roots.as_deref(),
            Some(
                &aws_smithy_runtime_api::client::http::HttpConnectorSettings::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            ),
            aws_smithy_async::rt::sleep::default_async_sleep(),
        ));
        let for_sdk = shared.clone();
        b = b.http_client(aws_smithy_runtime_api::client::http::http_client_fn(
            move |_, _| for_sdk.clone(),
        ));
        Self {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            bucket: settings.bucket.clone(),
            region: settings.region.clone(),
            lean: std::sync::Arc::new(lean::Lean::new(settings, shared)),
            provider,
        }
    }

    /// A small listed object (at most [`LEAN_MAX`]): [`Source::get`] through the lean path,
    /// or through the SDK when the lean path hands it back (any error, which the SDK then
    /// maps and retries as for every other request).
    ///
    /// # Errors
    /// As [`Source::get`].
    pub async fn get_small(&self, key: &str, if_match: &str) -> Result<GetObjectOutput, Error> {
        if let Ok(credentials) = self.provider.credentials().await {
            let etag = etag_header(if_match);
            if let Ok(out) = self
                .lean
                .get(key, etag.as_deref(), credentials, self.provider.now())
                .await
            {
                return Ok(out);
            }
        }
        self.get(key, if_match).await
    }

    /// Lists one page under `prefix`.
    ///
    /// # Errors
    /// [`Error::ListDenied`] and the other S3 mappings.
    pub async fn list_page(&self, prefix: &str, token: Option<String>) -> Result<Page, Error> {
        // encoding-type=url: a key with characters XML 1.0 cannot carry (C0 controls) would
        // otherwise make the whole listing unparseable, and no object would sync.
        let mut req = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .max_keys(PAGE_SIZE)
            .encoding_type(EncodingType::Url);
        if !prefix.is_empty() {
            req = req.prefix(prefix);
        }
        if let Some(t) = &token {
            req = req.continuation_token(t);
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.classify(Op::List, prefix, &e))?;
        let encoded = out.encoding_type() == Some(&EncodingType::Url);
        let invalid = |detail: String| Error::ListingInvalid {
            bucket: self.bucket.clone(),
            prefix: prefix.to_owned(),
            detail,
        };
        let mut objects = Vec::with_capacity(out.contents().len());
        let mut archived = Vec::new();
        for o in out.contents() {
            let Some(raw) = o.key() else { continue };
            let key = if encoded {
                url_decode_key(raw).ok_or_else(|| {
                    invalid(format!(
                        "key '{}' is not valid URL encoding",
                        raw.escape_debug()
                    ))
                })?
            } else {
                raw.to_owned()
            };
            if let Some(class) = o
                .storage_class()
                .map(|c| c.as_str())
                .filter(|c| super::plan::is_archived(c))
            {
                archived.push((key, class.to_owned()));
                continue;
            }
            objects.push(Remote {
                key,
                etag: o.e_tag().map(normalize_etag).unwrap_or_default(),
                size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                last_modified: o
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok()),
            });
        }
        let next = if out.is_truncated() == Some(true) {
            match out.next_continuation_token() {
                None | Some("") => {
                    return Err(invalid(
                        "a truncated page without a continuation token".into(),
                    ))
                }
                Some(t) if token.as_deref() == Some(t) => {
                    return Err(invalid(format!(
                        "the continuation token '{t}' came back unchanged (the listing would never end)"
                    )))
                }
                Some(t) => Some(t.to_owned()),
            }
        } else {
            None
        };
        Ok(Page {
            objects,
            archived,
            next,
        })
    }

    /// A GetObject request for `key` in checksum mode: S3 returns x-amz-checksum-* and the SDK
    /// verifies the body against it.
    fn get_request(
        &self,
        key: &str,
    ) -> aws_sdk_s3::operation::get_object::builders::GetObjectFluentBuilder {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
    }

    /// Starts a GET of `key`, conditional on the listed ETag so a concurrent overwrite is
    /// noticed instead of mixing versions.
    ///
    /// # Errors
    /// [`Error::ChangedDuringSync`] on 412, [`Error::Vanished`] on 404, and the other mappings.
    pub async fn get(&self, key: &str, if_match: &str) -> Result<GetObjectOutput, Error> {
        let mut req = self.get_request(key);
        if let Some(etag) = etag_header(if_match) {
            req = req.if_match(etag);
        }
        req.send()
            .await
            .map_err(|e| self.classify(Op::Get, key, &e))
    }

    /// GET `key`, with `If-None-Match` when an ETag is given; `None` means 304 Not Modified.
    ///
    /// # Errors
    /// As [`Source::get`].
    pub async fn get_conditional(
        &self,
        key: &str,
        if_none_match: Option<&str>,
    ) -> Result<Option<GetObjectOutput>, Error> {
        let mut req = self.get_request(key);
        if let Some(etag) = if_none_match.and_then(etag_header) {
            req = req.if_none_match(etag);
        }
        match req.send().await {
            Ok(out) => Ok(Some(out)),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 304) => Ok(None),
            Err(e) => Err(self.classify(Op::Get, key, &e)),
        }
    }

    /// GET version `version` of `key` (a pinned manifest entry). A denial names
    /// `s3:GetObjectVersion`, a missing version the manifest.
    ///
    /// # Errors
    /// [`Error::GetVersionDenied`], `NoSuchVersion`, and the other mappings.
    pub async fn get_version(&self, key: &str, version: &str) -> Result<GetObjectOutput, Error> {
        match self.get_request(key).version_id(version).send().await {
            Ok(out) => Ok(out),
            Err(e) => Err(match self.classify(Op::Get, key, &e) {
                Error::GetDenied {
                    bucket,
                    key,
                    message,
                } => Error::GetVersionDenied {
                    bucket,
                    key,
                    version: version.to_owned(),
                    message,
                },
                Error::Vanished { key } => Error::S3 {
                    op: "GetObject",
                    target: format!("{key}?versionId={version}"),
                    code: "NoSuchVersion".into(),
                    message: "the manifest names a version that does not exist; fix the manifest's versionId".into(),
                },
                other => other,
            }),
        }
    }

    /// A ranged GET of `start..=end`, conditional on the ETag.
    ///
    /// # Errors
    /// As [`Source::get`].
    pub async fn get_range(
        &self,
        key: &str,
        if_match: &str,
        start: u64,
        end: u64,
    ) -> Result<GetObjectOutput, Error> {
        // No checksum mode: S3 has no checksum for a range.
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={start}-{end}"));
        if let Some(etag) = etag_header(if_match) {
            req = req.if_match(etag);
        }
        req.send()
            .await
            .map_err(|e| self.classify(Op::Get, key, &e))
    }

    /// HeadObject: the object's ETag, size and time without its body (needs only s3:GetObject).
    ///
    /// # Errors
    /// As [`Source::get`].
    pub async fn head(&self, key: &str) -> Result<Remote, Error> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.classify(Op::Get, key, &e))?;
        Ok(Remote {
            key: key.to_owned(),
            etag: out.e_tag().map(normalize_etag).unwrap_or_default(),
            size: out
                .content_length()
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
            last_modified: out
                .last_modified()
                .and_then(|t| SystemTime::try_from(*t).ok()),
        })
    }

    /// The full-object checksum S3 keeps for `key` at version `if_match`, if any (HeadObject in
    /// checksum mode; needs only s3:GetObject).
    ///
    /// # Errors
    /// As [`Source::get`].
    pub async fn full_object_checksum(
        &self,
        key: &str,
        if_match: &str,
    ) -> Result<Option<super::plan::FullObjectChecksum>, Error> {
        let mut req = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled);
        if let Some(etag) = etag_header(if_match) {
            req = req.if_match(etag);
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.classify(Op::Get, key, &e))?;
        Ok(super::plan::full_object_checksum(
            out.checksum_type().map(|t| t.as_str()),
            out.checksum_crc64_nvme(),
            out.checksum_crc32_c(),
            out.checksum_crc32(),
        ))
    }

    fn classify<E, R>(&self, op: Op, target: &str, err: &SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        if let Some(c) = credentials::find_in_chain(err) {
            return Error::Credentials {
                code: c.code(),
                message: c.to_string(),
            };
        }
        match err {
            SdkError::ServiceError(ctx) => {
                let e = ctx.err();
                let code = e.code().unwrap_or("").to_owned();
                let message = e.message().unwrap_or("").to_owned();
                classify_service(op, &self.bucket, &self.region, target, &code, &message)
            }
            SdkError::TimeoutError(_) => Error::Network {
                op: op.name(),
                target: target.to_owned(),
                detail: "timed out".into(),
            },
            other => Error::Network {
                op: op.name(),
                target: target.to_owned(),
                detail: root_cause(other),
            },
        }
    }
}

/// An ETag as a conditional header (quoted); `None` for no ETag or a stand-in (`lm:…`).
fn etag_header(etag: &str) -> Option<String> {
    (!etag.is_empty() && !etag.starts_with("lm:")).then(|| format!("\"{etag}\""))
}

/// The S3 operation an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// ListObjectsV2.
    List,
    /// GetObject.
    Get,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Self::List => "ListObjectsV2",
            Self::Get => "GetObject",
        }
    }
}

/// Maps an S3 error code to the error that names the fix (pure).
#[must_use]
pub fn classify_service(
    op: Op,
    bucket: &str,
    region: &str,
    target: &str,
    code: &str,
    message: &str,
) -> Error {
    match (op, code) {
        (Op::List, "AccessDenied") => Error::ListDenied {
            bucket: bucket.to_owned(),
            prefix: target.to_owned(),
            message: message.to_owned(),
        },
        (Op::Get, "AccessDenied") => Error::GetDenied {
            bucket: bucket.to_owned(),
            key: target.to_owned(),
            message: message.to_owned(),
        },
        (_, "NoSuchBucket") => Error::NoSuchBucket {
            bucket: bucket.to_owned(),
            region: region.to_owned(),
        },
        (Op::Get, "NoSuchKey") => Error::Vanished {
            key: target.to_owned(),
        },
        (Op::Get, "PreconditionFailed") => Error::ChangedDuringSync {
            key: target.to_owned(),
        },
        (
            _,
            "PermanentRedirect"
            | "AuthorizationHeaderMalformed"
            | "IllegalLocationConstraintException",
        ) => Error::WrongRegion {
            bucket: bucket.to_owned(),
            region: region.to_owned(),
            message: message.to_owned(),
        },
        (_, "RequestTimeTooSkewed") => Error::ClockSkew {
            message: message.to_owned(),
        },
        (_, "ExpiredToken") => Error::ExpiredToken,
        _ => Error::S3 {
            op: op.name(),
            target: target.to_owned(),
            code: if code.is_empty() {
                "Unknown".to_owned()
            } else {
                code.to_owned()
            },
            message: message.to_owned(),
        },
    }
}

/// How the object of a GET response is encrypted at rest.
#[must_use]
pub fn encryption_of(out: &GetObjectOutput) -> super::plan::Encryption {
    super::plan::Encryption::from_headers(
        out.server_side_encryption().map(|s| s.as_str()),
        out.sse_customer_algorithm(),
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_usable_root_files_reach_the_sdk() {
        assert_eq!(usable_roots(b"not a certificate".to_vec()), None);
        assert_eq!(usable_roots(Vec::new()), None);
        let broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec();
        assert_eq!(usable_roots(broken), None);
        let dir = tempfile::tempdir().unwrap();
        let ca = devstack::pki::Ca::new(dir.path(), "test CA", "ca").unwrap();
        let pem = ca.files.cert_pem.into_bytes();
        assert_eq!(usable_roots(pem.clone()), Some(pem));
    }

    use super::*;

    #[test]
    fn list_denied_names_listbucket_and_the_arn() {
        let e = classify_service(
            Op::List,
            "bkt",
            "us-east-1",
            "data/",
            "AccessDenied",
            "Access Denied",
        );
        let s = e.to_string();
        assert!(s.contains("s3:ListBucket"), "{s}");
        assert!(s.contains("arn:aws:s3:::bkt"), "{s}");
        assert!(s.contains("data/"), "{s}");
    }

    #[test]
    fn get_denied_names_getobject_and_the_object_arn() {
        let s = classify_service(Op::Get, "bkt", "r", "data/a.txt", "AccessDenied", "").to_string();
        assert!(
            s.contains("s3:GetObject") && s.contains("arn:aws:s3:::bkt/data/a.txt"),
            "{s}"
        );
    }

    #[test]
    fn other_codes() {
        let e = |code| classify_service(Op::Get, "b", "eu-west-1", "k", code, "m");
        assert!(matches!(e("NoSuchKey"), Error::Vanished { .. }));
        assert!(matches!(
            e("PreconditionFailed"),
            Error::ChangedDuringSync { .. }
        ));
        assert!(matches!(e("PermanentRedirect"), Error::WrongRegion { .. }));
        assert!(matches!(e("ExpiredToken"), Error::ExpiredToken));
        assert!(e("NoSuchBucket").to_string().contains("eu-west-1"));
        assert!(matches!(e("SlowDown"), Error::S3 { .. }));
    }
}
