//! S3 on loopback: s3s-fs embedded, with what the stock server lacks to behave like AWS for
//! this product:
//! - SigV4 verified against credentials issued by the fake credentials provider (and one
//!   admin key), `x-amz-security-token` and expiry checked (`ExpiredToken`), and an IAM-like
//!   policy per role alias (`AccessDenied`), see [`Account::authorize_s3`];
//! - ETags in listings (s3s-fs 0.14 omits them);
//! - `If-Match` / `If-None-Match` on GET (s3s-fs ignores them);
//! - `TCP_NODELAY` on accepted sockets (else every keep-alive request waits ~40 ms);
//! - "virtual" objects with keys no file system can hold (`../x`, `a//b`), for hostile-key tests;
//! - fault injection: a delay before every GET.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use md5::{Digest, Md5};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::{
    ETag, ETagCondition, GetObjectInput, GetObjectOutput, HeadObjectInput, HeadObjectOutput,
    ListObjectsV2Input, ListObjectsV2Output, Object, PutObjectInput, StreamingBlob, Timestamp,
};
use s3s::path::S3Path;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};

use crate::account::Account;
use crate::iam;
use crate::listener::Listener;

/// S3 server failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data folder cannot be used.
    #[error("cannot use {} as the S3 data folder: {detail}", path.display())]
    Root {
        /// The folder.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// Cannot listen.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Seeding failed.
    #[error("cannot put s3://{bucket}/{key}: {detail}")]
    Put {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Why.
        detail: String,
    },
}

#[derive(Debug, Clone)]
struct VirtualObject {
    data: Bytes,
    etag: String,
    modified: SystemTime,
    /// A full-object checksum (`x-amz-checksum-<algorithm>`, base64), sent on GET and HEAD when
    /// the client asks for checksums (`x-amz-checksum-mode: ENABLED`), with
    /// `x-amz-checksum-type: FULL_OBJECT`.
    checksum: Option<(FullObjectChecksum, String)>,
    /// How the object is encrypted at rest, as GET and HEAD report it.
    encryption: Encryption,
    /// The storage class, when not STANDARD (listed; GLACIER and DEEP_ARCHIVE cannot be read
    /// without a restore: GET answers 403 InvalidObjectState, as S3 does).
    storage_class: Option<&'static str>,
}

/// Server-side encryption of an object, and what it does to the ETag.
///
/// AWS documents (S3 User Guide, "Checking object integrity", and the `ETag` field of the
/// `Object` type): an object uploaded with a single PUT and encrypted with SSE-S3 (or not at
/// all) has the MD5 of its data as ETag; with SSE-KMS, DSSE-KMS or SSE-C the ETag is **not** the
/// MD5 of the data. GET and HEAD then carry `x-amz-server-side-encryption: aws:kms` (or
/// `aws:kms:dsse`) with `x-amz-server-side-encryption-aws-kms-key-id`, or
/// `x-amz-server-side-encryption-customer-algorithm: AES256` for SSE-C. moto does not model the
/// non-MD5 ETag (it always returns the MD5), so this fake follows the documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encryption {
    /// SSE-S3 (AES256) or none: the ETag is the data's MD5.
    #[default]
    S3Managed,
    /// SSE-KMS: `aws:kms`; the ETag is opaque.
    Kms,
    /// DSSE-KMS: `aws:kms:dsse`; the ETag is opaque.
    DualLayerKms,
    /// SSE-C: customer-provided key; the ETag is opaque.
    CustomerKey,
}

impl VirtualObject {
    /// The checksum of `algorithm`, if this object has one and `wanted`.
    fn checksum_value(&self, algorithm: FullObjectChecksum, wanted: bool) -> Option<String> {
        self.checksum
            .as_ref()
            .filter(|(a, _)| wanted && *a == algorithm)
            .map(|(_, v)| v.clone())
    }
}

impl Encryption {
    /// `x-amz-server-side-encryption`, `…-aws-kms-key-id`, `…-customer-algorithm`.
    fn headers(
        self,
    ) -> (
        Option<s3s::dto::ServerSideEncryption>,
        Option<String>,
        Option<String>,
    ) {
        const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/devstack";
        match self {
            Self::S3Managed => (
                Some(s3s::dto::ServerSideEncryption::from_static("AES256")),
                None,
                None,
            ),
            Self::Kms => (
                Some(s3s::dto::ServerSideEncryption::from_static("aws:kms")),
                Some(KEY.to_owned()),
                None,
            ),
            Self::DualLayerKms => (
                Some(s3s::dto::ServerSideEncryption::from_static("aws:kms:dsse")),
                Some(KEY.to_owned()),
                None,
            ),
            Self::CustomerKey => (None, None, Some("AES256".to_owned())),
        }
    }
}

/// The full-object checksums S3 keeps for multipart uploads: CRC64NVME is the default for new
/// uploads (S3 User Guide, "Checking object integrity": full-object checksums for multipart
/// uploads support CRC-64/NVME, CRC-32 and CRC-32C; SHA-1/SHA-256 are composite only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullObjectChecksum {
    /// `x-amz-checksum-crc32`.
    Crc32,
    /// `x-amz-checksum-crc64nvme`.
    Crc64Nvme,
}

fn checksum_b64(algorithm: FullObjectChecksum, data: &[u8]) -> String {
    let a = match algorithm {
        FullObjectChecksum::Crc32 => aws_smithy_checksums::ChecksumAlgorithm::Crc32,
        FullObjectChecksum::Crc64Nvme => aws_smithy_checksums::ChecksumAlgorithm::Crc64Nvme,
    };
    let mut h = a.into_impl();
    h.update(data);
    aws_smithy_types::base64::encode(h.finalize())
}

/// A broken listing, as a misbehaving S3-compatible server or proxy may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListingFault {
    /// `IsTruncated: true` with no `NextContinuationToken`.
    TruncatedWithoutToken,
    /// The continuation token sent comes back as the next one.
    RepeatedToken,
}

/// S3's `encoding-type=url`: key names encoded as HTML forms encode them (space as `+`; what
/// botocore decodes with `unquote_plus`). Public so the component's decoder is tested against it.
#[must_use]
pub fn form_encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                char::from(b).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Continuation tokens are opaque, as S3's are (here: the hex of the last key listed).
fn token_of(key: &str) -> String {
    hex::encode(key.as_bytes())
}

fn key_of_token(token: &str) -> String {
    hex::decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default()
}

/// A failure the S3 server injects into GETs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this S3 error code (e.g. `InternalError` 500, `SlowDown` 503).
    Status(&'static str),
    /// Send this many body bytes, then end the body early.
    Truncate(usize),
    /// Send this many body bytes, then fail the connection.
    Reset(usize),
    /// Flip the bits of the body byte at this offset.
    Corrupt(usize),
    /// Send the first chunk, then stop sending for this many milliseconds.
    Stall(u64),
}

#[derive(Debug, Clone)]
struct FaultRule {
    key_pattern: String,
    fault: Fault,
    remaining: u32,
}

#[derive(Debug, Default)]
struct Shared {
    virtual_objects: BTreeMap<(String, String), VirtualObject>,
    /// Object versions of a versioned bucket, by (bucket, key, version id): each PUT through
    /// [`S3Server::put_object_version`] keeps its bytes here, whatever is current.
    versions: BTreeMap<(String, String, String), VirtualObject>,
    get_delay: Duration,
    chunk_delay: Duration,
    gets: u64,
    /// GETs without the SDK's `x-amz-user-agent` header (gg-s3-sync's lean GET, curl).
    plain_gets: u64,
    in_flight: u64,
    max_in_flight: u64,
    lists: u64,
    faults: Vec<FaultRule>,
    /// Snapshots of plain listings, for their continuation pages.
    listings: std::collections::HashMap<(String, String), Arc<Vec<Object>>>,
    listing_fault: Option<ListingFault>,
}

impl Shared {
    /// Takes one use of the first rule matching `key`.
    fn take_fault(&mut self, key: &str) -> Option<Fault> {
        let rule = self
            .faults
            .iter_mut()
            .find(|r| r.remaining > 0 && iam::glob(&r.key_pattern, key))?;
        rule.remaining -= 1;
        Some(rule.fault.clone())
    }
}

/// s3s-fs with the fixes above.
#[derive(Debug, Clone)]
struct DevS3 {
    fs: Arc<s3s_fs::FileSystem>,
    shared: Arc<Mutex<Shared>>,
    account: Account,
}

fn internal<T>(input: T) -> S3Request<T> {
    S3Request {
        input,
        method: http::Method::GET,
        uri: http::Uri::from_static("/"),
        headers: http::HeaderMap::new(),
        extensions: http::Extensions::new(),
        credentials: None,
        region: None,
        service: None,
        trailing_headers: None,
    }
}

fn etag_value(e: &ETag) -> &str {
    match e {
        ETag::Strong(v) | ETag::Weak(v) => v,
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DevS3 {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }

    async fn etag_of(&self, bucket: &str, key: &str) -> S3Result<Option<String>> {
        let input = HeadObjectInput::builder()
            .bucket(bucket.to_owned())
            .key(key.to_owned())
            .build()
            .map_err(|e| s3_error!(InternalError, "{e}"))?;
        let out = self.fs.head_object(internal(input)).await?;
        Ok(out.output.e_tag.as_ref().map(|e| etag_value(e).to_owned()))
    }

    /// Like S3: a caller without `s3:ListBucket` must not learn whether a key exists, so a
    /// missing key is `AccessDenied` (403) for them instead of `NoSuchKey` (404).
    fn hide_missing<T>(
        &self,
        creds: Option<&s3s::auth::Credentials>,
        bucket: &str,
        r: S3Result<T>,
    ) -> S3Result<T> {
        match r {
            Err(e) if *e.code() == S3ErrorCode::NoSuchKey => {
                let can_list = creds.is_some_and(|c| {
                    self.account.allows(
                        &c.access_key,
                        "s3:ListBucket",
                        &format!("arn:aws:s3:::{bucket}"),
                    )
                });
                if can_list {
                    Err(e)
                } else {
                    Err(s3_error!(AccessDenied, "Access Denied"))
                }
            }
            other => other,
        }
    }

    /// ListObjectsV2 without a delimiter, paginated here: the first page walks the bucket once
    /// (s3s-fs walks the whole folder for every page, which is quadratic at 100 000 keys) and
    /// later pages of the same listing are served from that snapshot. Virtual objects are merged.
    async fn list_plain(
        &self,
        req: S3Request<ListObjectsV2Input>,
        bucket: &str,
        prefix: &str,
        marker: Option<String>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let max_keys =
            usize::try_from(req.input.max_keys.unwrap_or(1000).clamp(0, 1000)).unwrap_or(1000);
        let token = req.input.continuation_token.clone();
        let start_after = req.input.start_after.clone();
        let encode = req
            .input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == "url");
        let cache_key = (bucket.to_owned(), prefix.to_owned());
        let cached = token
            .as_ref()
            .and_then(|_| self.shared().listings.get(&cache_key).cloned());
        let snapshot = match cached {
            Some(s) => s,
            None => {
                let all = req.map_input(|mut i| {
                    i.continuation_token = None;
                    i.start_after = None;
                    i.max_keys = Some(i32::MAX);
                    i
                });
                let out = self.fs.list_objects_v2(all).await?.output;
                let mut objects = out.contents.unwrap_or_default();
                let shared = self.shared();
                objects.extend(
                    shared
                        .virtual_objects
                        .iter()
                        .filter(|((b, k), _)| b == bucket && k.starts_with(prefix))
                        .map(|((_, k), v)| Object {
                            key: Some(k.clone()),
                            e_tag: Some(ETag::Strong(v.etag.clone())),
                            size: i64::try_from(v.data.len()).ok(),
                            last_modified: Some(Timestamp::from(v.modified)),
                            storage_class: v
                                .storage_class
                                .map(s3s::dto::ObjectStorageClass::from_static),
                            ..Default::default()
                        }),
                );
                drop(shared);
                objects.sort_by(|a, b| a.key.cmp(&b.key));
                let snapshot = Arc::new(objects);
                self.shared().listings.insert(cache_key, snapshot.clone());
                snapshot
            }
        };
        let from = marker.as_deref().map_or(0, |m| {
            snapshot.partition_point(|o| o.key.as_deref().unwrap_or("") <= m)
        });
        let mut page: Vec<Object> = snapshot.iter().skip(from).take(max_keys).cloned().collect();
        let mut truncated = from + page.len() < snapshot.len();
        for obj in &mut page {
            if obj.e_tag.is_none() {
                if let Some(key) = obj.key.clone() {
                    obj.e_tag = self.etag_of(bucket, &key).await?.map(ETag::Strong);
                }
            }
        }
        let mut next = truncated
            .then(|| page.last().and_then(|o| o.key.as_deref().map(token_of)))
            .flatten();
        match self.shared().listing_fault {
            Some(ListingFault::TruncatedWithoutToken) if truncated => next = None,
            Some(ListingFault::RepeatedToken) if token.is_some() => {
                next.clone_from(&token);
                truncated = true;
            }
            _ => {}
        }
        // Without encoding-type=url, S3 writes keys as they are, and a C0 control character
        // then makes the XML unreadable for any XML 1.0 parser (S3 API reference,
        // ListObjectsV2 "EncodingType"). s3s writes them as they are too.
        if encode {
            for obj in &mut page {
                obj.key = obj.key.as_deref().map(form_encode);
            }
        }
        Ok(S3Response::new(ListObjectsV2Output {
            encoding_type: encode.then(|| s3s::dto::EncodingType::from_static("url")),
            name: Some(bucket.to_owned()),
            prefix: Some(if encode {
                form_encode(prefix)
            } else {
                prefix.to_owned()
            }),
            max_keys: i32::try_from(max_keys).ok(),
            key_count: i32::try_from(page.len()).ok(),
            is_truncated: Some(truncated),
            next_continuation_token: next,
            continuation_token: token,
            start_after,
            contents: Some(page),
            ..Default::default()
        }))
    }

    fn virtual_object(&self, bucket: &str, key: &str) -> Option<VirtualObject> {
        self.shared()
            .virtual_objects
            .get(&(bucket.to_owned(), key.to_owned()))
            .cloned()
    }
}

/// Applies `If-Match` / `If-None-Match` like S3: 412 / 304.
fn check_conditions(
    current: &str,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<()> {
    let matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => etag_value(e) == current,
    };
    if let Some(c) = if_match {
        if !matches(c) {
            return Err(s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            ));
        }
    }
    if let Some(c) = if_none_match {
        if matches(c) {
            let mut e = S3Error::new(S3ErrorCode::NotModified);
            e.set_status_code(http::StatusCode::NOT_MODIFIED);
            return Err(e);
        }
    }
    Ok(())
}

/// Counts a GET as in flight until its body is dropped.
struct InFlight(Arc<Mutex<Shared>>);

impl InFlight {
    fn new(shared: &Arc<Mutex<Shared>>) -> Self {
        let mut s = lock(shared);
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        Self(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0).in_flight -= 1;
    }
}

/// Applies a body fault to the chunk starting at body offset `start`.
fn apply_fault(chunk: Bytes, start: usize, fault: Option<&Fault>) -> Result<Bytes, std::io::Error> {
    let end = start + chunk.len();
    match fault {
        Some(Fault::Truncate(n)) if end > *n => {
            if start >= *n {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "injected truncation",
                ))
            } else {
                Ok(chunk.slice(..n - start))
            }
        }
        Some(Fault::Reset(n)) if end > *n => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected reset",
        )),
        Some(Fault::Corrupt(at)) if (start..end).contains(at) => {
            let mut v = chunk.to_vec();
            v[at - start] ^= 0xff;
            Ok(Bytes::from(v))
        }
        _ => Ok(chunk),
    }
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = S3Result<S3Response<T>>> + Send + 'a>>;

/// Forwards operations to s3s-fs unchanged (the `async_trait` desugaring, written out because
/// `#[async_trait]` does not see inside macro invocations).
macro_rules! forward {
    ($($op:ident: $input:ident => $output:ident;)*) => {$(
        fn $op<'a, 'b>(&'a self, req: S3Request<s3s::dto::$input>) -> BoxFut<'b, s3s::dto::$output>
        where
            'a: 'b,
            Self: 'b,
        {
            Box::pin(self.fs.$op(req))
        }
    )*};
}

#[async_trait::async_trait]
impl S3 for DevS3 {
    forward! {
        create_bucket: CreateBucketInput => CreateBucketOutput;
        copy_object: CopyObjectInput => CopyObjectOutput;
        delete_bucket: DeleteBucketInput => DeleteBucketOutput;
        delete_object: DeleteObjectInput => DeleteObjectOutput;
        delete_objects: DeleteObjectsInput => DeleteObjectsOutput;
        get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput;
        head_bucket: HeadBucketInput => HeadBucketOutput;
        list_buckets: ListBucketsInput => ListBucketsOutput;
        list_objects: ListObjectsInput => ListObjectsOutput;
        put_object: PutObjectInput => PutObjectOutput;
        create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput;
        upload_part: UploadPartInput => UploadPartOutput;
        upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput;
        list_parts: ListPartsInput => ListPartsOutput;
        complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput;
        abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput;
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let (delay, chunk_delay, fault) = {
            let mut s = self.shared();
            s.gets += 1;
            if !req.headers.contains_key("x-amz-user-agent") {
                s.plain_gets += 1;
            }
            (s.get_delay, s.chunk_delay, s.take_fault(&req.input.key))
        };
        if let Some(Fault::Status(code)) = &fault {
            let code: S3ErrorCode = code.parse().unwrap_or(S3ErrorCode::InternalError);
            return Err(S3Error::with_message(code, "injected fault"));
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let in_flight = InFlight::new(&self.shared);
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let checksums = req.input.checksum_mode.is_some();
        // `?versionId=`: that version, whatever is current. S3 answers 404 NoSuchVersion for
        // a version that does not exist (GetObject, "Errors"); the response names the version
        // in x-amz-version-id.
        let version = req.input.version_id.clone();
        let versioned = match &version {
            Some(v) => Some(
                self.shared()
                    .versions
                    .get(&(bucket.clone(), key.clone(), v.clone()))
                    .cloned()
                    .ok_or_else(|| {
                        let mut e = S3Error::with_message(
                            S3ErrorCode::NoSuchVersion,
                            "The specified version does not exist.",
                        );
                        e.set_status_code(http::StatusCode::NOT_FOUND);
                        e
                    })?,
            ),
            None => None,
        };
        let mut resp = if let Some(v) = versioned.or_else(|| self.virtual_object(&bucket, &key)) {
            if matches!(v.storage_class, Some("GLACIER" | "DEEP_ARCHIVE")) {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidObjectState,
                    "The operation is not valid for the object's storage class",
                ));
            }
            check_conditions(
                &v.etag,
                req.input.if_match.as_ref(),
                req.input.if_none_match.as_ref(),
            )?;
            let full = v.data.len() as u64;
            let range = match &req.input.range {
                Some(r) => Some(
                    r.check(full)
                        .map_err(|_| S3Error::new(S3ErrorCode::InvalidRange))?,
                ),
                None => None,
            };
            let (data, content_range) = match &range {
                Some(r) => (
                    v.data.slice(
                        usize::try_from(r.start).unwrap_or(usize::MAX)
                            ..usize::try_from(r.end).unwrap_or(usize::MAX),
                    ),
                    Some(format!("bytes {}-{}/{full}", r.start, r.end - 1)),
                ),
                None => (v.data.clone(), None),
            };
            let len = data.len();
            // Like S3 (and s3s-fs), a whole body is sent in 4 KiB chunks, so slow-link and
            // mid-body faults apply to virtual objects too.
            let chunks: Vec<Result<Bytes, std::io::Error>> = (0..len)
                .step_by(4096)
                .map(|i| Ok(data.slice(i..(i + 4096).min(len))))
                .collect();
            let stream = futures_util::stream::iter(chunks);
            let (sse, kms_key, sse_c) = v.encryption.headers();
            S3Response::new(GetObjectOutput {
                body: Some(StreamingBlob::wrap(stream)),
                content_length: i64::try_from(len).ok(),
                content_range,
                e_tag: Some(ETag::Strong(v.etag.clone())),
                last_modified: Some(Timestamp::from(v.modified)),
                // A range has no checksum of its own: S3 sends none for it.
                checksum_crc32: v
                    .checksum_value(FullObjectChecksum::Crc32, checksums && range.is_none()),
                checksum_crc64nvme: v
                    .checksum_value(FullObjectChecksum::Crc64Nvme, checksums && range.is_none()),
                checksum_type: (checksums && range.is_none() && v.checksum.is_some())
                    .then(|| s3s::dto::ChecksumType::from_static("FULL_OBJECT")),
                server_side_encryption: sse,
                ssekms_key_id: kms_key,
                sse_customer_algorithm: sse_c,
                version_id: version.clone(),
                ..Default::default()
            })
        } else {
            let creds = req.credentials.clone();
            let (if_match, if_none_match) =
                (req.input.if_match.clone(), req.input.if_none_match.clone());
            // The conditions are checked against the ETag of the very response (S3 keeps an
            // object's ETag; it does not look the object up twice): one s3s-fs call per GET,
            // not a HeadObject first, and no window between the check and the body.
            let resp = self.hide_missing(creds.as_ref(), &bucket, self.fs.get_object(req).await)?;
            if if_match.is_some() || if_none_match.is_some() {
                let current = resp
                    .output
                    .e_tag
                    .as_ref()
                    .map(etag_value)
                    .unwrap_or_default();
                check_conditions(current, if_match.as_ref(), if_none_match.as_ref())?;
            }
            resp
        };
        if let Some(body) = resp.output.body.take() {
            let mut sent = 0usize;
            let stalled = std::sync::atomic::AtomicBool::new(true);
            let body = futures_util::StreamExt::then(body, move |chunk| {
                let _still_in_flight = &in_flight;
                let start = sent;
                let chunk = chunk
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|c| {
                        sent += c.len();
                        apply_fault(c, start, fault.as_ref())
                    });
                let stall = match fault {
                    Some(Fault::Stall(ms))
                        if start > 0
                            && stalled.swap(false, std::sync::atomic::Ordering::Relaxed) =>
                    {
                        Duration::from_millis(ms)
                    }
                    _ => Duration::ZERO,
                };
                async move {
                    if !chunk_delay.is_zero() {
                        tokio::time::sleep(chunk_delay).await;
                    }
                    if !stall.is_zero() {
                        tokio::time::sleep(stall).await;
                    }
                    chunk
                }
            });
            resp.output.body = Some(StreamingBlob::wrap(body));
        }
        Ok(resp)
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        if let Some(v) = self.virtual_object(&req.input.bucket, &req.input.key) {
            let (sse, kms_key, sse_c) = v.encryption.headers();
            let checksums = req.input.checksum_mode.is_some();
            return Ok(S3Response::new(HeadObjectOutput {
                checksum_crc32: v.checksum_value(FullObjectChecksum::Crc32, checksums),
                checksum_crc64nvme: v.checksum_value(FullObjectChecksum::Crc64Nvme, checksums),
                checksum_type: (checksums && v.checksum.is_some())
                    .then(|| s3s::dto::ChecksumType::from_static("FULL_OBJECT")),
                content_length: i64::try_from(v.data.len()).ok(),
                e_tag: Some(ETag::Strong(v.etag.clone())),
                last_modified: Some(Timestamp::from(v.modified)),
                server_side_encryption: sse,
                ssekms_key_id: kms_key,
                sse_customer_algorithm: sse_c,
                ..Default::default()
            }));
        }
        let (creds, bucket) = (req.credentials.clone(), req.input.bucket.clone());
        self.hide_missing(creds.as_ref(), &bucket, self.fs.head_object(req).await)
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.shared().lists += 1;
        let bucket = req.input.bucket.clone();
        let prefix = req.input.prefix.clone().unwrap_or_default();
        let marker = match (
            req.input.continuation_token.as_deref().map(key_of_token),
            req.input.start_after.clone(),
        ) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if req.input.delimiter.is_none() {
            return self.list_plain(req, &bucket, &prefix, marker).await;
        }
        let mut resp = self.fs.list_objects_v2(req).await?;
        let contents = resp.output.contents.get_or_insert_with(Vec::new);
        for obj in contents.iter_mut() {
            if obj.e_tag.is_none() {
                if let Some(key) = obj.key.clone() {
                    obj.e_tag = self.etag_of(&bucket, &key).await?.map(ETag::Strong);
                }
            }
        }
        Ok(resp)
    }
}

struct DevAuth(Account);

#[async_trait::async_trait]
impl S3Auth for DevAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        self.0
            .secret_for(access_key)
            .map(SecretKey::from)
            .ok_or_else(|| {
                s3_error!(
                    InvalidAccessKeyId,
                    "The AWS Access Key Id you provided does not exist in our records."
                )
            })
    }
}

struct DevAccess(Account);

#[async_trait::async_trait]
impl S3Access for DevAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(creds) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "Anonymous access is denied"));
        };
        let header_token = cx
            .headers()
            .get("x-amz-security-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let query_token = cx.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("X-Amz-Security-Token="))
                .map(|v| {
                    v.replace("%2F", "/")
                        .replace("%2B", "+")
                        .replace("%3D", "=")
                })
        });
        let token = header_token.or(query_token);
        let (bucket, key) = match cx.s3_path() {
            S3Path::Root => (None, None),
            S3Path::Bucket { bucket } => (Some(bucket.to_string()), None),
            S3Path::Object { bucket, key } => (Some(bucket.to_string()), Some(key.to_string())),
        };
        let (mut action, resource) =
            iam::s3_action(cx.s3_op().name(), bucket.as_deref(), key.as_deref());
        // S3 authorizes a read of a named version as s3:GetObjectVersion, not s3:GetObject
        // (S3 User Guide, "Retrieving object versions": "you need s3:GetObjectVersion").
        let versioned = cx
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("versionId=")));
        if versioned && action == "s3:GetObject" {
            action = "s3:GetObjectVersion".into();
        }
        self.0
            .authorize_s3(&creds.access_key, token.as_deref(), &action, &resource)
            .map_err(|(code, message)| {
                let code: S3ErrorCode = code.parse().unwrap_or(S3ErrorCode::AccessDenied);
                S3Error::with_message(code, message)
            })
    }
}

/// A running S3 server.
#[derive(Debug)]
pub struct S3Server {
    listener: Listener,
    root: PathBuf,
    s3: DevS3,
}

impl S3Server {
    /// Serves the folder `root` (one sub-folder per bucket) on `bind`.
    ///
    /// # Errors
    /// [`Error`] if the folder cannot be used or the address bound.
    pub async fn start(account: Account, root: &Path, bind: SocketAddr) -> Result<Self, Error> {
        let root_err = |detail: String| Error::Root {
            path: root.to_owned(),
            detail,
        };
        std::fs::create_dir_all(root).map_err(|e| root_err(e.to_string()))?;
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| root_err(format!("{e:?}")))?;
        let s3 = DevS3 {
            fs: Arc::new(fs),
            shared: Arc::default(),
            account: account.clone(),
        };
        let service = {
            let mut b = s3s::service::S3ServiceBuilder::new(s3.clone());
            b.set_auth(DevAuth(account.clone()));
            b.set_access(DevAccess(account));
            b.build()
        };
        let listener = Listener::start(bind, move |sock| {
            let service = service.clone();
            async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder.serve_connection(TokioIo::new(sock), service).await {
                    tracing::debug!(error = %e, "S3 connection ended");
                }
            }
        })
        .await
        .map_err(|source| Error::Bind { addr: bind, source })?;
        Ok(Self {
            listener,
            root: root.to_owned(),
            s3,
        })
    }

    /// The bound address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.listener.addr()
    }

    /// `http://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.listener.addr())
    }

    /// The data folder.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates a bucket (a folder in the data folder).
    ///
    /// # Errors
    /// [`Error::Root`] if the folder cannot be made.
    pub fn create_bucket(&self, bucket: &str) -> Result<(), Error> {
        let path = self.root.join(bucket);
        std::fs::create_dir_all(&path).map_err(|e| Error::Root {
            path,
            detail: e.to_string(),
        })
    }

    /// Stores an object through s3s-fs's PutObject, so its ETag is recorded as S3 would.
    ///
    /// # Errors
    /// [`Error::Put`].
    pub async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        data: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let data: Bytes = data.into();
        let err = |detail: String| Error::Put {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            detail,
        };
        let input = PutObjectInput::builder()
            .bucket(bucket.to_owned())
            .key(key.to_owned())
            .content_length(i64::try_from(data.len()).ok())
            .body(Some(StreamingBlob::from(s3s::Body::from(data))))
            .build()
            .map_err(|e| err(e.to_string()))?;
        self.s3
            .fs
            .put_object(internal(input))
            .await
            .map(|_| ())
            .map_err(|e| {
                err(format!(
                    "{}: {}",
                    e.code().as_str(),
                    e.message().unwrap_or("")
                ))
            })
    }

    /// Stores a new version of `key` in a versioned bucket: it becomes the current object
    /// (listed, served without `versionId`) and stays readable by its version id after later
    /// versions. Returns the version id (32 URL-safe characters, like S3's).
    ///
    /// # Errors
    /// [`Error::Put`].
    pub async fn put_object_version(
        &self,
        bucket: &str,
        key: &str,
        data: impl Into<Bytes>,
    ) -> Result<String, Error> {
        let data: Bytes = data.into();
        self.put_object(bucket, key, data.clone()).await?;
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._";
        let id: String = (0..32)
            .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
            .collect();
        let object = VirtualObject {
            etag: hex::encode(Md5::digest(&data)),
            data,
            modified: crate::account::now(),
            checksum: None,
            encryption: Encryption::S3Managed,
            storage_class: None,
        };
        self.s3
            .shared()
            .versions
            .insert((bucket.to_owned(), key.to_owned(), id.clone()), object);
        Ok(id)
    }

    /// Deletes an object file (as if deleted in S3).
    ///
    /// # Errors
    /// [`Error::Root`] if the file cannot be removed.
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<(), Error> {
        let path = self.root.join(bucket).join(key);
        std::fs::remove_file(&path).map_err(|e| Error::Root {
            path,
            detail: e.to_string(),
        })
    }

    /// Adds an object whose key no file system could store (e.g. `../x`); it is listed and
    /// served from memory.
    pub fn put_virtual_object(&self, bucket: &str, key: &str, data: impl Into<Bytes>) {
        let data: Bytes = data.into();
        let etag = hex::encode(Md5::digest(&data));
        self.insert_virtual(bucket, key, data, etag, None, Encryption::S3Managed);
    }

    /// Like [`S3Server::put_virtual_object`], encrypted with `encryption`: for SSE-KMS,
    /// DSSE-KMS and SSE-C the ETag is 32 hex digits that are not the data's MD5.
    pub fn put_virtual_encrypted_object(
        &self,
        bucket: &str,
        key: &str,
        data: impl Into<Bytes>,
        encryption: Encryption,
    ) {
        let data: Bytes = data.into();
        let etag = match encryption {
            Encryption::S3Managed => hex::encode(Md5::digest(&data)),
            // Opaque, as S3's: stable for these bytes, unrelated to their MD5.
            _ => hex::encode(Md5::digest([&b"kms:"[..], &data].concat())),
        };
        self.insert_virtual(bucket, key, data, etag, None, encryption);
    }

    fn insert_virtual(
        &self,
        bucket: &str,
        key: &str,
        data: Bytes,
        etag: String,
        checksum: Option<(FullObjectChecksum, String)>,
        encryption: Encryption,
    ) {
        let object = VirtualObject {
            data,
            etag,
            modified: crate::account::now(),
            checksum,
            encryption,
            storage_class: None,
        };
        self.s3
            .shared()
            .virtual_objects
            .insert((bucket.to_owned(), key.to_owned()), object);
    }

    /// Like [`S3Server::put_virtual_object`], with a multipart-style ETag (so no MD5 check is
    /// possible) and a full-object CRC32 served to clients that ask for checksums.
    pub fn put_virtual_multipart_object(
        &self,
        bucket: &str,
        key: &str,
        data: impl Into<Bytes>,
        parts: u32,
    ) {
        self.put_virtual_multipart_object_with(bucket, key, data, parts, FullObjectChecksum::Crc32);
    }

    /// An object in an archive storage class (`GLACIER`, `DEEP_ARCHIVE`): listed with that
    /// class; a GET answers `InvalidObjectState` until it is restored.
    pub fn put_virtual_archived_object(
        &self,
        bucket: &str,
        key: &str,
        data: impl Into<Bytes>,
        class: &'static str,
    ) {
        self.put_virtual_object(bucket, key, data);
        if let Some(o) = self
            .s3
            .shared()
            .virtual_objects
            .get_mut(&(bucket.to_owned(), key.to_owned()))
        {
            o.storage_class = Some(class);
        }
    }

    /// A multipart upload with the full-object checksum `algorithm`.
    pub fn put_virtual_multipart_object_with(
        &self,
        bucket: &str,
        key: &str,
        data: impl Into<Bytes>,
        parts: u32,
        algorithm: FullObjectChecksum,
    ) {
        let data: Bytes = data.into();
        let etag = format!("{}-{parts}", hex::encode(Md5::digest(&data)));
        let checksum = Some((algorithm, checksum_b64(algorithm, &data)));
        self.insert_virtual(bucket, key, data, etag, checksum, Encryption::S3Managed);
    }

    /// Makes every later listing page broken in this way (`None` repairs it).
    pub fn set_listing_fault(&self, fault: Option<ListingFault>) {
        self.s3.shared().listing_fault = fault;
    }

    /// Delays every GET by `delay` (fault injection).
    pub fn set_get_delay(&self, delay: Duration) {
        self.s3.shared().get_delay = delay;
    }

    /// Delays every body chunk (4 KiB) of real objects by `delay`: a slow link.
    pub fn set_chunk_delay(&self, delay: Duration) {
        self.s3.shared().chunk_delay = delay;
    }

    /// GetObject requests received.
    #[must_use]
    pub fn get_count(&self) -> u64 {
        self.s3.shared().gets
    }

    /// GetObject requests received without the AWS SDKs' `x-amz-user-agent` header.
    #[must_use]
    pub fn plain_get_count(&self) -> u64 {
        self.s3.shared().plain_gets
    }

    /// Injects `fault` into the next `times` GETs of keys matching `key_pattern` (`*` glob).
    pub fn inject(&self, key_pattern: &str, fault: Fault, times: u32) {
        self.s3.shared().faults.push(FaultRule {
            key_pattern: key_pattern.to_owned(),
            fault,
            remaining: times,
        });
    }

    /// The most GETs whose bodies were being sent at the same time.
    #[must_use]
    pub fn max_concurrent_gets(&self) -> u64 {
        self.s3.shared().max_in_flight
    }

    /// ListObjectsV2 requests received.
    #[must_use]
    pub fn list_count(&self) -> u64 {
        self.s3.shared().lists
    }

    /// Stops accepting and closes connections.
    pub async fn stop(&self) {
        self.listener.stop().await;
    }
}
