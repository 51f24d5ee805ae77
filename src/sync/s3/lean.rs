//! The lean GET: a small listed object fetched on the SDK's own signing and HTTP stack, without
//! its per-request orchestration (runtime plugins, interceptors, retry bookkeeping), which
//! cost more CPU than the request itself for a 4 KiB object.
//!
//! The request is the one the SDK would send, built from the same parts: the endpoint from
//! aws-sdk-s3's own rules ([`aws_sdk_s3::config::endpoint::DefaultResolver`], the parameters
//! `GetObject` passes, the key included), the key encoded as the SDK encodes a greedy label, the
//! signature from aws-sigv4 with S3's settings (single URI encoding, no path normalisation,
//! `x-amz-content-sha256`), and the connection from aws-smithy-http-client's connector with the
//! same TLS trust and proxy settings ([`super::connector`]). The response's full-object
//! checksum is verified as the SDK verifies it (the first `x-amz-checksum-*` in the SDK's
//! order; part-level checksums are skipped).
//!
//! Only the happy path is handled here: anything but a complete `200` (an error status, a
//! network failure, a slow or short body, a checksum mismatch) is a [`Fallback`], and the
//! caller repeats the request through the SDK, which maps, retries and reports it as before.
//! After [`FALLBACKS_TO_STOP`] fallbacks in a row the lean path stops for the process (a
//! proxy or endpoint it cannot serve).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::endpoint::{Params, ResolveEndpoint};
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_runtime_api::client::http::HttpConnector;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::Document;

/// Fallbacks in a row after which the lean path is not tried again.
pub(crate) const FALLBACKS_TO_STOP: u32 = 16;
/// How long a small body may take to arrive in full.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the lean path handed a request back to the SDK.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Fallback {
    /// S3 answered something else than 200 (the SDK maps it).
    #[error("status {0}")]
    Status(u16),
    /// The endpoint needs what the lean path does not do (another auth scheme, headers).
    #[error("endpoint: {0}")]
    Endpoint(String),
    /// Credentials, signing or the request could not be made.
    #[error("request: {0}")]
    Request(String),
    /// The connection or the body failed, or was too slow.
    #[error("transfer: {0}")]
    Transfer(String),
    /// The body does not match its headers.
    #[error("body: {0}")]
    Body(String),
    /// The lean path is off.
    #[error("off")]
    Off,
}

/// The lean path's state, shared by a [`super::Source`]'s clones.
#[derive(Debug)]
pub(crate) struct Lean {
    connector: aws_smithy_runtime_api::client::http::SharedHttpConnector,
    resolver: aws_sdk_s3::config::endpoint::DefaultResolver,
    bucket: String,
    region: String,
    endpoint_url: Option<String>,
    force_path_style: bool,
    in_a_row: AtomicU32,
    off: AtomicBool,
}

/// What an endpoint's first auth scheme says about signing (pure): `Ok((signing name,
/// signing region))` for plain SigV4 without double encoding, else why not.
pub(crate) fn sigv4_scheme(
    properties: &std::collections::HashMap<std::borrow::Cow<'static, str>, Document>,
    region: &str,
) -> Result<(String, String), String> {
    let Some(Document::Array(schemes)) = properties.get("authSchemes") else {
        return Ok(("s3".to_owned(), region.to_owned()));
    };
    let Some(Document::Object(first)) = schemes.first() else {
        return Err("no auth scheme".to_owned());
    };
    let text = |k: &str| match first.get(k) {
        Some(Document::String(s)) => Some(s.clone()),
        _ => None,
    };
    match text("name").as_deref() {
        Some("sigv4") => {}
        other => return Err(format!("auth scheme {other:?}")),
    }
    if !matches!(
        first.get("disableDoubleEncoding"),
        Some(Document::Bool(true))
    ) {
        return Err("double URI encoding".to_owned());
    }
    Ok((
        text("signingName").unwrap_or_else(|| "s3".to_owned()),
        text("signingRegion").unwrap_or_else(|| region.to_owned()),
    ))
}

/// The object's URL: the endpoint, then `/` and the key encoded as the SDK encodes a greedy
/// label (every byte but unreserved ones and `/` percent-encoded). Pure.
pub(crate) fn object_url(endpoint: &str, key: &str) -> String {
    let key =
        aws_smithy_http::label::fmt_string(key, aws_smithy_http::label::EncodingStrategy::Greedy);
    format!("{}/{key}", endpoint.trim_end_matches('/'))
}

/// The full-object checksum to verify the body against, as the SDK picks it: the first of its
/// algorithms (fastest first) with a header; `None` for none, or for a part-level checksum
/// (`…-N`) of a multipart object, which the body alone cannot confirm. Pure.
pub(crate) fn checksum_to_verify(
    header: impl Fn(&str) -> Option<String>,
) -> Option<(aws_smithy_checksums::ChecksumAlgorithm, String)> {
    for name in aws_smithy_checksums::http::CHECKSUM_ALGORITHMS_IN_PRIORITY_ORDER {
        let Ok(algorithm) = name.parse::<aws_smithy_checksums::ChecksumAlgorithm>() else {
            continue;
        };
        let Some(value) = header(algorithm.into_impl().header_name()) else {
            continue;
        };
        let part_level = value
            .rsplit_once('-')
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        return (!part_level).then_some((algorithm, value));
    }
    None
}

impl Lean {
    pub(crate) fn new(
        settings: &super::S3Settings,
        connector: aws_smithy_runtime_api::client::http::SharedHttpConnector,
    ) -> Self {
        Self {
            connector,
            resolver: aws_sdk_s3::config::endpoint::DefaultResolver::new(),
            bucket: settings.bucket.clone(),
            region: settings.region.clone(),
            endpoint_url: settings.endpoint_url.clone(),
            force_path_style: settings.force_path_style,
            in_a_row: AtomicU32::new(0),
            off: AtomicBool::new(false),
        }
    }

    /// GET `key` if its ETag is still `if_match` (quoted as S3 wants it), with checksum mode,
    /// signed with `credentials` at `now`.
    ///
    /// # Errors
    /// A [`Fallback`]: the caller sends the request through the SDK instead.
    pub(crate) async fn get(
        &self,
        key: &str,
        if_match: Option<&str>,
        credentials: aws_credential_types::Credentials,
        now: SystemTime,
    ) -> Result<GetObjectOutput, Fallback> {
        if self.off.load(Ordering::Relaxed) {
            return Err(Fallback::Off);
        }
        let result = self.attempt(key, if_match, credentials, now).await;
        match &result {
            Ok(_) => self.in_a_row.store(0, Ordering::Relaxed),
            Err(why) => {
                let n = self.in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(key, reason = %why, "lean GET handed to the SDK");
                if n >= FALLBACKS_TO_STOP && !self.off.swap(true, Ordering::Relaxed) {
                    tracing::info!(last = %why, "{n} lean GETs in a row needed the SDK; every GET goes through the SDK from now on");
                }
            }
        }
        result
    }

    async fn attempt(
        &self,
        key: &str,
        if_match: Option<&str>,
        credentials: aws_credential_types::Credentials,
        now: SystemTime,
    ) -> Result<GetObjectOutput, Fallback> {
        let params = Params::builder()
            .region(self.region.clone())
            .bucket(self.bucket.clone())
            .key(key.to_owned())
            .force_path_style(self.force_path_style)
            .set_endpoint(self.endpoint_url.clone())
            .build()
            .map_err(|e| Fallback::Endpoint(e.to_string()))?;
        let endpoint = self
            .resolver
            .resolve_endpoint(&params)
            .await
            .map_err(|e| Fallback::Endpoint(e.to_string()))?;
        if endpoint.headers().next().is_some() {
            return Err(Fallback::Endpoint("the endpoint adds headers".to_owned()));
        }
        let (name, region) =
            sigv4_scheme(endpoint.properties(), &self.region).map_err(Fallback::Endpoint)?;
        let url = object_url(endpoint.url(), key);

        let mut headers: Vec<(&str, &str)> = vec![("x-amz-checksum-mode", "ENABLED")];
        if let Some(etag) = if_match {
            headers.push(("if-match", etag));
        }
        let identity = aws_smithy_runtime_api::client::identity::Identity::from(credentials);
        let mut settings = aws_sigv4::http_request::SigningSettings::default();
        settings.percent_encoding_mode = aws_sigv4::http_request::PercentEncodingMode::Single;
        settings.uri_path_normalization_mode =
            aws_sigv4::http_request::UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&region)
            .name(&name)
            .time(now)
            .settings(settings)
            .build()
            .map_err(|e| Fallback::Request(e.to_string()))?;
        let signable = aws_sigv4::http_request::SignableRequest::new(
            "GET",
            url.as_str(),
            headers.iter().copied(),
            aws_sigv4::http_request::SignableBody::Bytes(&[]),
        )
        .map_err(|e| Fallback::Request(e.to_string()))?;
        let (instructions, _) = aws_sigv4::http_request::sign(signable, &params.into())
            .map_err(|e| Fallback::Request(e.to_string()))?
            .into_parts();
        let mut builder = http::Request::builder().method("GET").uri(url.as_str());
        for (k, v) in &headers {
            builder = builder.header(*k, *v);
        }
        let mut request = builder
            .body(SdkBody::empty())
            .map_err(|e| Fallback::Request(e.to_string()))?;
        instructions.apply_to_request_http1x(&mut request);
        let request = aws_smithy_runtime_api::http::Request::try_from(request)
            .map_err(|e| Fallback::Request(e.to_string()))?;

        let response = self
            .connector
            .call(request)
            .await
            .map_err(|e| Fallback::Transfer(crate::errtext::chain(&e)))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(Fallback::Status(status));
        }
        let header = |name: &str| response.headers().get(name).map(str::to_owned);
        let length = header("content-length").and_then(|l| l.parse::<usize>().ok());
        let etag = header("etag");
        let last_modified = header("last-modified").and_then(|t| {
            aws_smithy_types::DateTime::from_str(&t, aws_smithy_types::date_time::Format::HttpDate)
                .ok()
        });
        let sse = header("x-amz-server-side-encryption");
        let sse_c = header("x-amz-server-side-encryption-customer-algorithm");
        let checksum = checksum_to_verify(header);
        // A body is read into memory only when its announced size is small.
        match length {
            Some(l) if l as u64 <= super::LEAN_MAX => {}
            other => {
                return Err(Fallback::Body(format!(
                    "content-length {other:?} for a small object"
                )))
            }
        }
        let body = tokio::time::timeout(
            BODY_TIMEOUT,
            ByteStream::new(response.into_body()).collect(),
        )
        .await
        .map_err(|_| Fallback::Transfer(format!("body not complete in {BODY_TIMEOUT:?}")))?
        .map_err(|e| Fallback::Transfer(crate::errtext::chain(&e)))?
        .into_bytes();
        if length != Some(body.len()) {
            return Err(Fallback::Body(format!(
                "{} bytes, content-length {length:?}",
                body.len()
            )));
        }
        if let Some((algorithm, expected)) = &checksum {
            let mut h = algorithm.into_impl();
            h.update(&body);
            let actual = aws_smithy_types::base64::encode(h.finalize());
            if &actual != expected {
                return Err(Fallback::Body(format!(
                    "{} {actual}, header {expected}",
                    algorithm.as_str()
                )));
            }
        }
        Ok(GetObjectOutput::builder()
            .body(ByteStream::from(body.clone()))
            .content_length(i64::try_from(body.len()).unwrap_or(i64::MAX))
            .set_e_tag(etag)
            .set_last_modified(last_modified)
            .set_server_side_encryption(sse.map(|s| s.as_str().into()))
            .set_sse_customer_algorithm(sse_c)
            .build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn scheme(pairs: &[(&str, Document)]) -> HashMap<std::borrow::Cow<'static, str>, Document> {
        let object: HashMap<String, Document> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        HashMap::from([(
            "authSchemes".into(),
            Document::Array(vec![Document::Object(object)]),
        )])
    }

    #[test]
    fn only_plain_sigv4_without_double_encoding() {
        let ok = scheme(&[
            ("name", Document::String("sigv4".into())),
            ("signingName", Document::String("s3".into())),
            ("signingRegion", Document::String("eu-west-1".into())),
            ("disableDoubleEncoding", Document::Bool(true)),
        ]);
        assert_eq!(
            sigv4_scheme(&ok, "us-east-1"),
            Ok(("s3".to_owned(), "eu-west-1".to_owned()))
        );
        for other in ["sigv4a", "sigv4-s3express"] {
            let p = scheme(&[
                ("name", Document::String(other.into())),
                ("disableDoubleEncoding", Document::Bool(true)),
            ]);
            assert!(sigv4_scheme(&p, "us-east-1").is_err(), "{other}");
        }
        let double = scheme(&[("name", Document::String("sigv4".into()))]);
        assert!(sigv4_scheme(&double, "us-east-1").is_err());
    }

    /// The URL is the one the SDK itself builds (its presigned GetObject, query aside), for
    /// virtual-hosted and path-style addressing, a custom endpoint, a bucket with dots, and
    /// keys that need encoding.
    #[tokio::test]
    async fn urls_are_the_sdk_s_own() {
        use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
        let keys = [
            "a.txt",
            "dir/sub/file name.bin",
            "\u{fc}n\u{ef}c\u{f6}d\u{e9}/\u{df}.txt",
            "plus+and%percent",
            "tilde~star*(paren)'quote'",
            "a//b/",
            "q?x=1#frag",
            "semi;colon,comma=eq&amp@at$dollar",
        ];
        let cases = [
            (None, false, "my-bucket"),
            (None, true, "my-bucket"),
            (None, false, "dotted.bucket.name"),
            (Some("http://127.0.0.1:9000"), true, "b"),
            (
                Some("https://s3.example.internal:8443/base"),
                false,
                "my-bucket",
            ),
        ];
        for (endpoint, path_style, bucket) in cases {
            let mut conf = aws_sdk_s3::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("eu-west-1"))
                .credentials_provider(Credentials::new("AKIDEXAMPLE", "secret", None, None, "t"))
                .force_path_style(path_style);
            if let Some(e) = endpoint {
                conf = conf.endpoint_url(e);
            }
            let client = aws_sdk_s3::Client::from_conf(conf.build());
            for key in keys {
                let presigned = client
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .presigned(
                        aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(
                            60,
                        ))
                        .unwrap(),
                    )
                    .await
                    .unwrap();
                let sdk = presigned.uri().split('?').next().unwrap().to_owned();
                let params = Params::builder()
                    .region("eu-west-1")
                    .bucket(bucket)
                    .key(key)
                    .force_path_style(path_style)
                    .set_endpoint(endpoint.map(str::to_owned))
                    .build()
                    .unwrap();
                let resolved = aws_sdk_s3::config::endpoint::DefaultResolver::new()
                    .resolve_endpoint(&params)
                    .await
                    .unwrap();
                assert_eq!(object_url(resolved.url(), key), sdk, "{bucket} {key:?}");
                assert!(sigv4_scheme(resolved.properties(), "eu-west-1").is_ok());
            }
        }
    }

    /// A connector that always fails, counting its calls.
    #[derive(Debug)]
    struct Down(std::sync::Arc<AtomicU32>);

    impl HttpConnector for Down {
        fn call(
            &self,
            _: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
        ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
            self.0.fetch_add(1, Ordering::Relaxed);
            aws_smithy_runtime_api::client::http::HttpConnectorFuture::ready(Err(
                aws_smithy_runtime_api::client::result::ConnectorError::io(
                    "connection refused".into(),
                ),
            ))
        }
    }

    /// After FALLBACKS_TO_STOP hand-backs in a row the lean GET is not tried again: a proxy or
    /// endpoint it cannot serve costs that many extra requests, not one per object.
    #[tokio::test]
    async fn sixteen_hand_backs_in_a_row_turn_the_lean_get_off() {
        let calls = std::sync::Arc::new(AtomicU32::new(0));
        let settings = super::super::S3Settings {
            bucket: "b".into(),
            region: "us-east-1".into(),
            endpoint_url: Some("http://127.0.0.1:9".into()),
            force_path_style: true,
            root_ca_path: None,
        };
        let lean = Lean::new(
            &settings,
            aws_smithy_runtime_api::client::http::SharedHttpConnector::new(Down(calls.clone())),
        );
        let creds = aws_credential_types::Credentials::new("AKID", "secret", None, None, "t");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for i in 0..FALLBACKS_TO_STOP {
            let r = lean.get("k", None, creds.clone(), now).await;
            assert!(matches!(r, Err(Fallback::Transfer(_))), "{i}: {r:?}");
        }
        let r = lean.get("k", None, creds, now).await;
        assert!(matches!(r, Err(Fallback::Off)), "{r:?}");
        assert_eq!(calls.load(Ordering::Relaxed), FALLBACKS_TO_STOP);
    }

    #[test]
    fn checksums_are_picked_as_the_sdk_picks_them() {
        let headers = HashMap::from([
            ("x-amz-checksum-sha256", "abc="),
            ("x-amz-checksum-crc32", "AAAAAA=="),
        ]);
        let got = checksum_to_verify(|n| headers.get(n).map(|v| (*v).to_owned()));
        let (algorithm, value) = got.unwrap();
        assert_eq!(algorithm.as_str(), "crc32");
        assert_eq!(value, "AAAAAA==");
        let part = HashMap::from([("x-amz-checksum-crc32", "AAAAAA==-3")]);
        assert!(checksum_to_verify(|n| part.get(n).map(|v| (*v).to_owned())).is_none());
        assert!(checksum_to_verify(|_| None).is_none());
    }
}
