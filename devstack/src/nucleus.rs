//! A fake Greengrass nucleus: the IPC server side on a Unix socket.
//!
//! Written against the protocol notes, on `aws-smithy-eventstream` directly (not the
//! component's client code), and checked with AWS's official Python client. It serves
//! GetConfiguration, SubscribeToConfigurationUpdate, UpdateConfiguration, UpdateState,
//! PublishToIoTCore, PublishToTopic, SubscribeToTopic, SubscribeToComponentUpdates and
//! DeferComponentUpdate, enforces the handshake and stream-id rules (PROTOCOL_ERROR), and
//! records what components did so tests can assert on it.
//!
//! It has two personalities, each traced to the real implementation:
//!
//! - [`Personality::Classic`], aws-greengrass-nucleus (Java):
//!   - `DeferComponentUpdate` is accepted only as the answer to an outstanding
//!     `preUpdateEvent`, and consumes it; otherwise `ServiceError: Time limit to respond to
//!     PreComponentUpdateEvent exceeded` (`LifecycleIPCEventStreamAgent.deferComponentUpdate`).
//!     When a deployment stops waiting, the outstanding answers are discarded
//!     (`discardDeferComponentUpdateFutures`).
//!   - Configuration delivered by a cloud deployment went through Gson: every number is a
//!     double (`600` → `600.0`), see [`FakeNucleus::deploy_configuration`]; JSON pub/sub messages
//!     are re-serialised the same way on delivery.
//!   - `accessControl`: pubsub resources match with `*` only (`ResourceLookupPolicy.STANDARD`),
//!     mqttproxy resources also with MQTT `+`/`#` (`MQTT_STYLE`, `WildcardTrie`).
//! - [`Personality::Lite`], nucleus lite v2.6.0 (modules/ggipcd, core-bus):
//!   - A frame over [`LITE_MAX_FRAME`] bytes, or a request payload of more than 255 JSON
//!     values, closes the connection (`GGL_IPC_MAX_MSG_LEN`, `GG_MAX_OBJECT_SUBOBJECTS`).
//!   - Only `aws.greengrass.NucleusLite` holds the nucleus configuration;
//!     `aws.greengrass.Nucleus` is `ResourceNotFoundError` (the alias is unreleased).
//!   - No `SubscribeToComponentUpdates` / `DeferComponentUpdate`: `ServiceError`.
//!   - `UpdateState` fails with `ServiceError` until the health daemon is ready.
//!   - A subscription is bound before its response is sent, so an event can arrive first.
//!   - A JSON message is delivered to a subscriber only if it decodes into the 550-byte arena
//!     of `modules/core-bus/src/client_subscribe.c` (`PAYLOAD_MAX_SUBOBJECTS` 50); otherwise the
//!     subscription is dropped silently. A binary message always fits.
//!   - Error messages are empty.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_smithy_eventstream::frame::{read_message_from, write_message_to};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The classic nucleus's own configuration is readable as this component.
pub const NUCLEUS: &str = "aws.greengrass.Nucleus";
/// Released nucleus lite's name for its own configuration.
pub const NUCLEUS_LITE: &str = "aws.greengrass.NucleusLite";
const MAX_FRAME: usize = 24 * 1024 * 1024;
/// Lite's largest inbound frame: `GGL_IPC_MAX_MSG_LEN` (10,000) after the 12-byte prelude.
pub const LITE_MAX_FRAME: usize = 10_012;
/// Lite decodes a request payload into at most this many objects (`GG_MAX_OBJECT_SUBOBJECTS`).
const LITE_MAX_REQUEST_OBJECTS: usize = 255;
/// Lite's subscriber-side decode arena (`PAYLOAD_MAX_SUBOBJECTS` × 11-byte objects).
const LITE_DELIVERY_ARENA: usize = 550;

/// Which nucleus the fake behaves like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Personality {
    /// The classic (Java) nucleus.
    #[default]
    Classic,
    /// Nucleus lite v2.6.0.
    Lite,
}

/// Arena bytes lite's `ggl_deserialize` needs for `v` (a map entry 21 bytes, a list element
/// 11; strings and numbers live in the message buffer).
fn lite_arena_cost(v: &Value) -> usize {
    match v {
        Value::Object(m) => m.values().map(|c| 21 + lite_arena_cost(c)).sum(),
        Value::Array(a) => a.iter().map(|c| 11 + lite_arena_cost(c)).sum(),
        _ => 0,
    }
}

/// How many objects lite's request decoder allocates for `v` (each value one, map keys free).
fn lite_object_count(v: &Value) -> usize {
    1 + match v {
        Value::Object(m) => m.values().map(lite_object_count).sum(),
        Value::Array(a) => a.iter().map(lite_object_count).sum(),
        _ => 0,
    }
}

/// Gson's view of JSON: every number becomes a double (`600` → `600.0`).
#[must_use]
pub fn gson_doubles(v: &Value) -> Value {
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| v.clone(), Value::Number),
        Value::Array(a) => Value::Array(a.iter().map(gson_doubles).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), gson_doubles(x)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The `accessControl` of gg-s3-sync's recipe (`recipe.yaml`; tests/packaging.rs keeps the two
/// equal), for `component`.
#[must_use]
pub fn recipe_access_control(component: &str) -> Value {
    json!({
        "aws.greengrass.ipc.mqttproxy": {
            format!("{component}:mqttproxy:1"): {
                "policyDescription": "Publish sync status to AWS IoT Core",
                "operations": ["aws.greengrass#PublishToIoTCore"],
                "resources": ["gg-s3-sync/+/status"],
            }
        },
        "aws.greengrass.ipc.pubsub": {
            format!("{component}:pubsub:1"): {
                "policyDescription": "Publish status and release-live events locally; receive triggers",
                "operations": ["aws.greengrass#PublishToTopic", "aws.greengrass#SubscribeToTopic"],
                "resources": ["gg-s3-sync/status", "gg-s3-sync/sync-now", "gg-s3-sync/release"],
            }
        },
    })
}

/// An `accessControl` that allows every pub/sub and MQTT operation on every topic.
#[must_use]
pub fn allow_all_access_control() -> Value {
    let all = json!({"all": {"operations": ["*"], "resources": ["*"]}});
    json!({"aws.greengrass.ipc.pubsub": all.clone(), "aws.greengrass.ipc.mqttproxy": all})
}

/// `*` glob match (the only wildcard of pubsub policies on both nuclei).
fn glob_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    text.ends_with(last)
}

/// Fake-nucleus failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket cannot be created.
    #[error("cannot listen on {}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A PublishToIoTCore a component made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IotPublish {
    /// The publisher.
    pub component: String,
    /// MQTT topic.
    pub topic: String,
    /// `"0"` or `"1"`.
    pub qos: String,
    /// Decoded payload.
    pub payload: Vec<u8>,
}

/// A PublishToTopic a component made.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalPublish {
    /// The publisher.
    pub component: String,
    /// Local topic.
    pub topic: String,
    /// The JSON message, or a binary message's bytes parsed as JSON (`Null` if they are not).
    pub message: Value,
    /// Whether it was sent as `binaryMessage`.
    pub binary: bool,
    /// The serialised request payload's size in bytes.
    pub request_bytes: usize,
}

/// A message as published: JSON or bytes.
#[derive(Debug, Clone, PartialEq)]
enum Published {
    Json(Value),
    Binary(Vec<u8>),
}

/// A DeferComponentUpdate a component sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defer {
    /// The component.
    pub component: String,
    /// The deployment.
    pub deployment_id: String,
    /// Its message.
    pub message: Option<String>,
    /// 0 = go ahead.
    pub recheck_after_ms: u64,
}

#[derive(Debug)]
struct Conn {
    id: u64,
    component: String,
    tx: mpsc::UnboundedSender<Bytes>,
    closed: CancellationToken,
}

#[derive(Debug)]
enum SubKind {
    Config {
        component: String,
        key_path: Vec<String>,
    },
    Topic {
        filter: String,
        all: bool,
    },
    Updates,
}

#[derive(Debug)]
struct Sub {
    conn: Arc<Conn>,
    stream_id: i32,
    kind: SubKind,
}

#[derive(Debug, Default)]
struct State {
    personality: Personality,
    health_ready: bool,
    enforce_access_control: bool,
    /// Outstanding preUpdateEvent answers (classic): (component, deployment).
    awaiting_defer: Vec<(String, String)>,
    /// Messages delivered to the next subscriber of a topic before its response (lite).
    early_events: Vec<(String, Value)>,
    closed_for_size: u64,
    /// Operations the fake receives but never answers (a stuck nucleus).
    unanswered: Vec<String>,
    tokens: HashMap<String, String>,
    config: HashMap<String, Value>,
    subs: Vec<Sub>,
    conns: Vec<Arc<Conn>>,
    states: Vec<(String, String)>,
    iot: Vec<IotPublish>,
    local: Vec<LocalPublish>,
    defers: Vec<Defer>,
    pongs: Vec<Vec<u8>>,
    next_conn: u64,
}

/// The running fake nucleus. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FakeNucleus {
    socket: PathBuf,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---- frames -------------------------------------------------------------------------------

fn frame(
    message_type: i32,
    flags: i32,
    stream_id: i32,
    model: Option<&str>,
    payload: Bytes,
) -> Bytes {
    let mut headers = vec![
        Header::new(":message-type", HeaderValue::Int32(message_type)),
        Header::new(":message-flags", HeaderValue::Int32(flags)),
        Header::new(":stream-id", HeaderValue::Int32(stream_id)),
    ];
    if let Some(m) = model {
        headers.push(Header::new(
            ":content-type",
            HeaderValue::String("application/json".to_owned().into()),
        ));
        headers.push(Header::new(
            "service-model-type",
            HeaderValue::String(m.to_owned().into()),
        ));
    }
    let mut out = Vec::new();
    // Headers and payloads built here are always within the format's limits.
    let _ = write_message_to(&Message::new_from_parts(headers, payload), &mut out);
    Bytes::from(out)
}

fn json_frame(message_type: i32, flags: i32, stream_id: i32, model: &str, body: &Value) -> Bytes {
    frame(
        message_type,
        flags,
        stream_id,
        Some(model),
        Bytes::from(body.to_string()),
    )
}

fn error_frame(stream_id: i32, code: &str, message: &str) -> Bytes {
    // All four keys, as the Java nucleus sends them (clients read different ones).
    let body = json!({
        "message": message,
        "_message": message,
        "_errorCode": code,
        "_service": "aws.greengrass#GreengrassCoreIPC",
    });
    json_frame(1, 2, stream_id, &format!("aws.greengrass#{code}"), &body)
}

fn protocol_error(message: &str) -> Bytes {
    let mut out = Vec::new();
    let m = Message::new_from_parts(
        vec![
            Header::new(":message-type", HeaderValue::Int32(6)),
            Header::new(":message-flags", HeaderValue::Int32(0)),
            Header::new(":stream-id", HeaderValue::Int32(0)),
            Header::new(
                ":content-type",
                HeaderValue::String("application/json".to_owned().into()),
            ),
        ],
        Bytes::from(json!({ "message": message }).to_string()),
    );
    let _ = write_message_to(&m, &mut out);
    Bytes::from(out)
}

struct Incoming {
    message_type: i32,
    flags: i32,
    stream_id: i32,
    operation: Option<String>,
    version: Option<String>,
    others: Vec<Header>,
    payload: Bytes,
}

fn parse(m: &Message) -> Option<Incoming> {
    let int = |n: &str| {
        m.headers()
            .iter()
            .find(|h| h.name().as_str() == n)
            .and_then(|h| h.value().as_int32().ok())
    };
    let text = |n: &str| {
        m.headers()
            .iter()
            .find(|h| h.name().as_str() == n)
            .and_then(|h| h.value().as_string().ok().map(|s| s.as_str().to_owned()))
    };
    Some(Incoming {
        message_type: int(":message-type")?,
        flags: int(":message-flags")?,
        stream_id: int(":stream-id")?,
        operation: text("operation"),
        version: text(":version"),
        others: m
            .headers()
            .iter()
            .filter(|h| !h.name().as_str().starts_with(':'))
            .cloned()
            .collect(),
        payload: m.payload().clone(),
    })
}

/// Reads one frame of at most `max` bytes; a larger one sets `too_large` and ends the read.
async fn read_frame(
    sock: &mut tokio::net::unix::OwnedReadHalf,
    buf: &mut BytesMut,
    max: usize,
    too_large: &mut bool,
) -> Option<Message> {
    loop {
        if buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > max {
                *too_large = true;
                return None;
            }
            if len < 16 {
                return None;
            }
            if buf.len() >= len {
                return read_message_from(buf.split_to(len).freeze()).ok();
            }
        }
        if sock.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

// ---- configuration helpers -----------------------------------------------------------------

fn lookup<'a>(root: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(root, |v, k| v.get(k))
}

/// Deep merge: objects merge key by key, anything else replaces. Returns changed leaf paths.
fn merge(
    target: &mut Value,
    patch: &Value,
    path: &mut Vec<String>,
    changed: &mut Vec<Vec<String>>,
) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                path.push(k.clone());
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                if slot.is_object() && v.is_object() {
                    merge(slot, v, path, changed);
                } else if slot != v {
                    *slot = v.clone();
                    changed.push(path.clone());
                }
                path.pop();
            }
        }
        _ => {
            if target != patch {
                *target = patch.clone();
                changed.push(path.clone());
            }
        }
    }
}

/// Whether merging `patch` into `target` would put keys below a key that holds a value.
/// Nucleus lite's ggconfigd refuses such a write ("value already present for key … Failing
/// request.", modules/ggconfigd/src/db_interface.c); the classic nucleus replaces the value.
fn children_under_a_value(target: &Value, patch: &Value) -> bool {
    let (Some(t), Some(p)) = (target.as_object(), patch.as_object()) else {
        return false;
    };
    p.iter().any(|(k, v)| match t.get(k) {
        Some(Value::Object(_)) => children_under_a_value(&t[k], v),
        Some(Value::Null) | None => false,
        Some(_) => v.is_object(),
    })
}

/// MQTT-style filter match (`+` one level, `#` the rest).
fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The fake runs on real time (it stands in for a real nucleus).
#[allow(clippy::disallowed_methods)]
fn deadline_after(d: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + d
}

#[allow(clippy::disallowed_methods)]
fn deadline_passed(deadline: tokio::time::Instant) -> bool {
    tokio::time::Instant::now() >= deadline
}

fn random_token() -> String {
    (0..16)
        .map(|_| char::from(b'A' + fastrand::u8(..26)))
        .collect()
}

impl FakeNucleus {
    /// Listens on `dir/ipc.socket` as the classic nucleus.
    ///
    /// # Errors
    /// [`Error::Bind`].
    pub async fn start(dir: &Path) -> Result<Self, Error> {
        Self::start_as(dir, Personality::Classic).await
    }

    /// Listens on `dir/ipc.socket` with the given personality.
    ///
    /// # Errors
    /// [`Error::Bind`].
    pub async fn start_as(dir: &Path, personality: Personality) -> Result<Self, Error> {
        let socket = dir.join("ipc.socket");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(|source| Error::Bind {
            path: socket.clone(),
            source,
        })?;
        let n = Self {
            socket,
            state: Arc::new(Mutex::new(State {
                personality,
                health_ready: true,
                enforce_access_control: true,
                ..State::default()
            })),
            changed: Arc::default(),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        let me = n.clone();
        n.tracker.spawn(async move {
            loop {
                let sock = tokio::select! {
                    () = me.cancel.cancelled() => break,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                let me2 = me.clone();
                me.tracker.spawn(async move { me2.serve(sock).await });
            }
        });
        Ok(n)
    }

    /// The socket path (what `AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT` carries).
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Registers a component with its configuration; returns its `SVCUID`.
    pub fn register_component(&self, name: &str, config: Value) -> String {
        let token = random_token();
        let mut s = lock(&self.state);
        s.tokens.insert(token.clone(), name.to_owned());
        s.config.insert(name.to_owned(), config);
        token
    }

    /// Sets the nucleus's own configuration (`iotCredEndpoint`, `awsRegion`, …), under the name
    /// the personality's nucleus answers to. Lite loads it from YAML, so its values are strings.
    pub fn set_nucleus_config(&self, config: Value) {
        let mut s = lock(&self.state);
        let name = match s.personality {
            Personality::Classic => NUCLEUS,
            Personality::Lite => NUCLEUS_LITE,
        };
        s.config.insert(name.to_owned(), config);
    }

    /// Which nucleus this fake is.
    #[must_use]
    pub fn personality(&self) -> Personality {
        lock(&self.state).personality
    }

    /// Lite: whether gghealthd serves (`UpdateState` fails with `ServiceError` until it does).
    pub fn set_health_ready(&self, ready: bool) {
        lock(&self.state).health_ready = ready;
    }

    /// Whether `accessControl` is enforced (both nuclei always do; protocol tests may turn it
    /// off to exercise other rules).
    pub fn set_enforce_access_control(&self, on: bool) {
        lock(&self.state).enforce_access_control = on;
    }

    /// Lite: delivers `message` to the next subscriber of `topic` before its subscription
    /// response, as ggipcd can (it binds the subscription first).
    pub fn event_before_next_response(&self, topic: &str, message: Value) {
        lock(&self.state)
            .early_events
            .push((topic.to_owned(), message));
    }

    /// From now on, requests for `operation` (e.g. `UpdateState`) get no answer at all.
    pub fn never_answer(&self, operation: &str) {
        lock(&self.state).unanswered.push(operation.to_owned());
    }

    /// Connections closed because a frame or payload was over lite's limits.
    #[must_use]
    pub fn connections_closed_for_size(&self) -> u64 {
        lock(&self.state).closed_for_size
    }

    /// A cloud deployment's `configurationUpdate.merge`: on the classic nucleus the job document
    /// went through Gson, so every number arrives as a double.
    pub fn deploy_configuration(&self, component: &str, value: &Value) -> bool {
        let value = match self.personality() {
            Personality::Classic => gson_doubles(value),
            Personality::Lite => value.clone(),
        };
        self.update_configuration(component, &[], &value)
    }

    /// Ends `component`'s topic subscriptions from the server side (an empty TERMINATE), as a
    /// nucleus does when it drops a subscriber.
    pub fn end_topic_subscriptions(&self, component: &str) {
        self.end_subscriptions(component, |k| matches!(k, SubKind::Topic { .. }));
    }

    fn end_subscriptions(&self, component: &str, which: impl Fn(&SubKind) -> bool) {
        let mut s = lock(&self.state);
        s.subs.retain(|sub| {
            let mine = sub.conn.component == component && which(&sub.kind);
            if mine {
                let _ = sub
                    .conn
                    .tx
                    .send(frame(0, 2, sub.stream_id, None, Bytes::new()));
            }
            !mine
        });
    }

    /// Whether `component` may call `operation` on `resource` under its `accessControl`
    /// (`service`: `aws.greengrass.ipc.pubsub` or `aws.greengrass.ipc.mqttproxy`).
    fn authorized(&self, component: &str, service: &str, operation: &str, resource: &str) -> bool {
        let s = lock(&self.state);
        if !s.enforce_access_control {
            return true;
        }
        let mqtt_style = service == "aws.greengrass.ipc.mqttproxy";
        let Some(policies) = s
            .config
            .get(component)
            .and_then(|c| c.pointer(&format!("/accessControl/{service}")))
            .and_then(Value::as_object)
        else {
            return false;
        };
        policies.values().any(|policy| {
            let has = |key: &str, want: &str, matches: &dyn Fn(&str, &str) -> bool| {
                policy
                    .get(key)
                    .and_then(Value::as_array)
                    .is_some_and(|l| l.iter().filter_map(Value::as_str).any(|p| matches(p, want)))
            };
            has("operations", operation, &|p, w| p == "*" || p == w)
                && has("resources", resource, &|p, w| {
                    glob_matches(p, w) || (mqtt_style && topic_matches(p, w))
                })
        })
    }

    /// A component's current configuration.
    #[must_use]
    pub fn configuration(&self, component: &str) -> Value {
        lock(&self.state)
            .config
            .get(component)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Merges `value` at `key_path` into a component's configuration, as a deployment's
    /// `configurationUpdate.merge` does, and notifies subscribers of each changed node.
    /// Returns `false` when the lite personality refuses it as ggconfigd does: keys below a
    /// key that holds a value (nothing changes then).
    pub fn update_configuration(&self, component: &str, key_path: &[&str], value: &Value) -> bool {
        let mut s = lock(&self.state);
        if s.personality == Personality::Lite {
            let mut wrapped = value.clone();
            for k in key_path.iter().rev() {
                wrapped = json!({ *k: wrapped });
            }
            let current = s
                .config
                .get(component)
                .cloned()
                .unwrap_or_else(|| json!({}));
            if children_under_a_value(&current, &wrapped) {
                tracing::warn!(component, ?key_path, "value already present for a key of this update; failing request (as lite's ggconfigd)");
                return false;
            }
        }
        let root = s
            .config
            .entry(component.to_owned())
            .or_insert_with(|| json!({}));
        let mut node = root;
        for k in key_path {
            if !node.is_object() {
                *node = json!({});
            }
            node = node
                .as_object_mut()
                .map(|m| m.entry((*k).to_owned()).or_insert_with(|| json!({})))
                .unwrap_or_else(|| unreachable!("made an object above"));
        }
        let mut path: Vec<String> = key_path.iter().map(|k| (*k).to_owned()).collect();
        let mut changed = Vec::new();
        merge(node, value, &mut path, &mut changed);
        for sub in &s.subs {
            if let SubKind::Config {
                component: c,
                key_path: watched,
            } = &sub.kind
            {
                if c != component {
                    continue;
                }
                for p in &changed {
                    let related = p.starts_with(watched) || watched.starts_with(p);
                    if related {
                        let ev = json!({ "configurationUpdateEvent": { "componentName": component, "keyPath": p } });
                        let _ = sub.conn.tx.send(json_frame(
                            0,
                            0,
                            sub.stream_id,
                            "aws.greengrass#ConfigurationUpdateEvents",
                            &ev,
                        ));
                    }
                }
            }
        }
        true
    }

    /// Publishes a JSON message on a local topic, as another component would.
    pub fn publish_local(&self, topic: &str, message: Value) {
        self.deliver("devstack.OtherComponent", topic, &Published::Json(message));
    }

    fn deliver(&self, from: &str, topic: &str, message: &Published) {
        let mut s = lock(&self.state);
        let personality = s.personality;
        let mut dropped = Vec::new();
        for (i, sub) in s.subs.iter().enumerate() {
            let SubKind::Topic { filter, all } = &sub.kind else {
                continue;
            };
            if !topic_matches(filter, topic) || (!*all && sub.conn.component == from) {
                continue;
            }
            let ev = match message {
                Published::Json(m) => {
                    // Lite's wrapper {topic, type, message} takes 3 map entries of the arena.
                    if personality == Personality::Lite
                        && 3 * 21 + lite_arena_cost(m) > LITE_DELIVERY_ARENA
                    {
                        // ggipcd: "Insufficient memory to decode packet."; the subscription is
                        // released without telling the subscriber.
                        dropped.push(i);
                        continue;
                    }
                    let m = match personality {
                        Personality::Classic => gson_doubles(m),
                        Personality::Lite => m.clone(),
                    };
                    json!({ "jsonMessage": { "message": m, "context": { "topic": topic } } })
                }
                Published::Binary(b) => json!({ "binaryMessage": {
                    "message": aws_smithy_types::base64::encode(b),
                    "context": { "topic": topic },
                } }),
            };
            let _ = sub.conn.tx.send(json_frame(
                0,
                0,
                sub.stream_id,
                "aws.greengrass#SubscriptionResponseMessage",
                &ev,
            ));
        }
        for i in dropped.into_iter().rev() {
            s.subs.remove(i);
        }
    }

    /// States reported by `component`, in order.
    #[must_use]
    pub fn states(&self, component: &str) -> Vec<String> {
        lock(&self.state)
            .states
            .iter()
            .filter(|(c, _)| c == component)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// PublishToIoTCore calls so far.
    #[must_use]
    pub fn iot_publishes(&self) -> Vec<IotPublish> {
        lock(&self.state).iot.clone()
    }

    /// PublishToTopic calls so far.
    #[must_use]
    pub fn local_publishes(&self) -> Vec<LocalPublish> {
        lock(&self.state).local.clone()
    }

    /// DeferComponentUpdate calls so far.
    #[must_use]
    pub fn defers(&self) -> Vec<Defer> {
        lock(&self.state).defers.clone()
    }

    /// Whether `component` has an open SubscribeToComponentUpdates.
    #[must_use]
    pub fn subscribed_to_updates(&self, component: &str) -> bool {
        lock(&self.state)
            .subs
            .iter()
            .any(|s| matches!(s.kind, SubKind::Updates) && s.conn.component == component)
    }

    /// Whether `component` subscribed to a topic filter matching `topic`.
    #[must_use]
    pub fn subscribed_to_topic(&self, component: &str, topic: &str) -> bool {
        lock(&self.state).subs.iter().any(|s| {
            s.conn.component == component
                && matches!(&s.kind, SubKind::Topic { filter, .. } if topic_matches(filter, topic))
        })
    }

    /// Runs a deployment's update-policy check like the nucleus: sends `preUpdateEvent` to every
    /// subscriber, re-sends it after each deferral's `recheckAfterMs`, and returns once every
    /// subscriber answered 0 (go ahead), or `timeout` passed (the nucleus then proceeds anyway).
    /// Then sends `postUpdateEvent`. Returns whether all subscribers agreed before the timeout.
    pub async fn component_update(&self, deployment_id: &str, timeout: Duration) -> bool {
        let pre = json!({ "preUpdateEvent": { "deploymentId": deployment_id, "isGgcRestarting": false } });
        let targets: Vec<(Arc<Conn>, i32)> = lock(&self.state)
            .subs
            .iter()
            .filter(|s| matches!(s.kind, SubKind::Updates))
            .map(|s| (s.conn.clone(), s.stream_id))
            .collect();
        let await_answer = |component: &str| {
            lock(&self.state)
                .awaiting_defer
                .push((component.to_owned(), deployment_id.to_owned()));
        };
        let send_pre = |conn: &Conn, stream: i32| {
            await_answer(&conn.component);
            let _ = conn.tx.send(json_frame(
                0,
                0,
                stream,
                "aws.greengrass#ComponentUpdatePolicyEvents",
                &pre,
            ));
        };
        for (c, id) in &targets {
            send_pre(c, *id);
        }
        let deadline = deadline_after(timeout);
        let mut seen = 0;
        let mut agreed = false;
        while !agreed {
            let notified = self.changed.notified();
            let (new, all_zero) = {
                let s = lock(&self.state);
                let mine: Vec<&Defer> = s
                    .defers
                    .iter()
                    .filter(|d| d.deployment_id == deployment_id)
                    .collect();
                let new: Vec<Defer> = mine[seen.min(mine.len())..]
                    .iter()
                    .map(|d| (*d).clone())
                    .collect();
                let all_zero = targets.iter().all(|(c, _)| {
                    mine.iter()
                        .rev()
                        .find(|d| d.component == c.component)
                        .is_some_and(|d| d.recheck_after_ms == 0)
                });
                seen = mine.len();
                (new, all_zero)
            };
            for d in new.into_iter().filter(|d| d.recheck_after_ms > 0) {
                for (c, id) in targets.iter().filter(|(c, _)| c.component == d.component) {
                    let (c, id) = (c.clone(), *id);
                    let pre = pre.clone();
                    let state = self.state.clone();
                    let deployment = deployment_id.to_owned();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(d.recheck_after_ms)).await;
                        lock(&state)
                            .awaiting_defer
                            .push((c.component.clone(), deployment));
                        let _ = c.tx.send(json_frame(
                            0,
                            0,
                            id,
                            "aws.greengrass#ComponentUpdatePolicyEvents",
                            &pre,
                        ));
                    });
                }
            }
            agreed = all_zero;
            // An elapsed deadline ends the wait at once (a timer would round it up to a tick).
            if agreed
                || deadline_passed(deadline)
                || tokio::time::timeout_at(deadline, notified).await.is_err()
            {
                break;
            }
        }
        // UpdateSystemPolicyService stops waiting: unanswered events can no longer be answered.
        lock(&self.state)
            .awaiting_defer
            .retain(|(_, d)| d != deployment_id);
        let post = json!({ "postUpdateEvent": { "deploymentId": deployment_id } });
        for (c, id) in &targets {
            let _ = c.tx.send(json_frame(
                0,
                0,
                *id,
                "aws.greengrass#ComponentUpdatePolicyEvents",
                &post,
            ));
        }
        agreed
    }

    /// Sends a PING with `payload` to every connection (answers are counted by [`Self::pongs`]).
    pub fn ping_all(&self, payload: &[u8]) {
        for c in &lock(&self.state).conns {
            let _ =
                c.tx.send(frame(2, 0, 0, None, Bytes::copy_from_slice(payload)));
        }
    }

    /// PING_RESPONSEs received (with their payloads).
    #[must_use]
    pub fn pongs(&self) -> Vec<Vec<u8>> {
        lock(&self.state).pongs.clone()
    }

    /// Sends PROTOCOL_ERROR to every connection and closes them, as a nucleus does on a
    /// protocol violation.
    pub fn protocol_error_all(&self, message: &str) {
        let conns: Vec<Arc<Conn>> = lock(&self.state).conns.clone();
        for c in conns {
            let _ = c.tx.send(protocol_error(message));
            let closed = c.closed.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                closed.cancel();
            });
        }
    }

    /// Ends `component`'s configuration subscriptions from the server side (an empty
    /// TERMINATE frame), as a nucleus does when it drops a subscriber.
    pub fn end_configuration_subscriptions(&self, component: &str) {
        self.end_subscriptions(component, |k| matches!(k, SubKind::Config { .. }));
    }

    /// Closes every component connection (as a nucleus restart would).
    pub fn disconnect_all(&self) {
        let mut s = lock(&self.state);
        for c in s.conns.drain(..) {
            c.closed.cancel();
        }
        s.subs.clear();
    }

    /// Stops the server.
    pub async fn stop(&self) {
        self.disconnect_all();
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    async fn serve(&self, sock: UnixStream) {
        let (mut read, mut write) = sock.into_split();
        let mut buf = BytesMut::new();
        // Handshake.
        let max = match self.personality() {
            Personality::Classic => MAX_FRAME,
            Personality::Lite => LITE_MAX_FRAME,
        };
        let mut too_large = false;
        let Some(first) = read_frame(&mut read, &mut buf, max, &mut too_large)
            .await
            .as_ref()
            .and_then(parse)
        else {
            return;
        };
        let token = serde_json::from_slice::<Value>(&first.payload)
            .ok()
            .and_then(|v| {
                v.get("authToken")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
        if first.message_type != 4
            || first.stream_id != 0
            || first.version.as_deref() != Some("0.1.0")
        {
            let _ = write
                .write_all(&protocol_error("expected CONNECT with :version 0.1.0"))
                .await;
            return;
        }
        let component = token.and_then(|t| lock(&self.state).tokens.get(&t).cloned());
        let Some(component) = component else {
            let _ = write.write_all(&frame(5, 0, 0, None, Bytes::new())).await;
            // Let the client read the rejection and hang up first; closing at once races it.
            let _ = tokio::time::timeout(Duration::from_secs(2), read.read(&mut [0u8; 1])).await;
            return;
        };
        if write
            .write_all(&frame(5, 1, 0, None, Bytes::new()))
            .await
            .is_err()
        {
            return;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let conn = {
            let mut s = lock(&self.state);
            s.next_conn += 1;
            let c = Arc::new(Conn {
                id: s.next_conn,
                component,
                tx,
                closed: CancellationToken::new(),
            });
            s.conns.push(c.clone());
            c
        };
        let closed = conn.closed.clone();
        let writer = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = closed.cancelled() => break,
                    m = rx.recv() => match m {
                        Some(bytes) => if write.write_all(&bytes).await.is_err() { break },
                        None => break,
                    },
                }
            }
        });
        let mut last_stream = 0;
        loop {
            let msg = tokio::select! {
                () = conn.closed.cancelled() => break,
                m = read_frame(&mut read, &mut buf, max, &mut too_large) => m,
            };
            let Some(f) = msg.as_ref().and_then(parse) else {
                if too_large {
                    // ggipcd: "EventStream packet does not fit in configured IPC buffer size."
                    lock(&self.state).closed_for_size += 1;
                    self.changed.notify_waiters();
                }
                break;
            };
            match (f.message_type, f.stream_id) {
                (3, 0) => {
                    lock(&self.state).pongs.push(f.payload.to_vec());
                    self.changed.notify_waiters();
                }
                (2, 0) => {
                    // PING: echo payload and non-':' headers.
                    let mut out = Vec::new();
                    let mut headers = vec![
                        Header::new(":message-type", HeaderValue::Int32(3)),
                        Header::new(":message-flags", HeaderValue::Int32(0)),
                        Header::new(":stream-id", HeaderValue::Int32(0)),
                    ];
                    headers.extend(
                        f.others
                            .iter()
                            .filter(|h| h.name().as_str() != "operation")
                            .cloned(),
                    );
                    let _ = write_message_to(
                        &Message::new_from_parts(headers, f.payload.clone()),
                        &mut out,
                    );
                    let _ = conn.tx.send(Bytes::from(out));
                }
                (0, id) if id > 0 && id <= last_stream => {
                    if f.flags & 2 != 0 {
                        lock(&self.state)
                            .subs
                            .retain(|s| !(s.conn.id == conn.id && s.stream_id == id));
                    }
                }
                (0, id) if id == last_stream + 1 => {
                    last_stream = id;
                    let Some(op) = f.operation.clone() else {
                        let _ = conn.tx.send(protocol_error("missing operation name"));
                        break;
                    };
                    let body: Value = if f.payload.is_empty() {
                        json!({})
                    } else {
                        serde_json::from_slice(&f.payload).unwrap_or(Value::Null)
                    };
                    if max == LITE_MAX_FRAME && lite_object_count(&body) > LITE_MAX_REQUEST_OBJECTS
                    {
                        // "Failed to decode msg payload.": the connection is closed.
                        lock(&self.state).closed_for_size += 1;
                        self.changed.notify_waiters();
                        break;
                    }
                    self.handle(&conn, id, &op, &body);
                }
                _ => {
                    let _ = conn.tx.send(protocol_error(
                        "stream-id values must be monotonically incrementing and application messages need a stream",
                    ));
                    break;
                }
            }
        }
        {
            let mut s = lock(&self.state);
            s.subs.retain(|sub| sub.conn.id != conn.id);
            s.conns.retain(|c| c.id != conn.id);
        }
        conn.closed.cancel();
        let _ = writer.await;
    }

    fn handle(&self, conn: &Arc<Conn>, id: i32, op: &str, body: &Value) {
        let short = op.strip_prefix("aws.greengrass#").unwrap_or(op);
        if lock(&self.state).unanswered.iter().any(|u| u == short) {
            return;
        }
        let reply = |model: &str, v: &Value, terminate: bool| {
            let _ = conn.tx.send(json_frame(
                0,
                if terminate { 2 } else { 0 },
                id,
                &format!("aws.greengrass#{model}"),
                v,
            ));
        };
        let personality = self.personality();
        let lite = personality == Personality::Lite;
        let fail = |code: &str, msg: &str| {
            // Lite's errors carry no message.
            let msg = if lite { "" } else { msg };
            let _ = conn.tx.send(error_frame(id, code, msg));
        };
        let denied = |service: &str, resource: &str| {
            !self.authorized(&conn.component, service, op, resource)
        };
        let str_field = |k: &str| body.get(k).and_then(Value::as_str);
        let key_path: Vec<String> = body
            .get("keyPath")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        match short {
            "GetConfiguration" | "SubscribeToConfigurationUpdate"
                if lite && str_field("componentName") == Some(NUCLEUS) =>
            {
                // v2.6.0 has no alias for the classic name.
                fail("ResourceNotFoundError", "");
            }
            "SubscribeToComponentUpdates" | "DeferComponentUpdate" if lite => {
                // modules/ggipcd/src/ipc_dispatch.c: "Unhandled operation requested".
                fail("ServiceError", "");
            }
            "GetConfiguration" => {
                let component = str_field("componentName")
                    .unwrap_or(&conn.component)
                    .to_owned();
                let s = lock(&self.state);
                let value = s
                    .config
                    .get(&component)
                    .and_then(|root| lookup(root, &key_path))
                    .cloned();
                drop(s);
                match value {
                    None => fail("ResourceNotFoundError", "Key not found"),
                    Some(v) => {
                        // A leaf comes back wrapped in a one-entry map named after it.
                        let value = match (&v, key_path.last()) {
                            (Value::Object(_), _) | (_, None) => v,
                            (_, Some(leaf)) => Value::Object(Map::from_iter([(leaf.clone(), v)])),
                        };
                        reply(
                            "GetConfigurationResponse",
                            &json!({ "componentName": component, "value": value }),
                            true,
                        );
                    }
                }
            }
            "SubscribeToConfigurationUpdate" => {
                let component = str_field("componentName")
                    .unwrap_or(&conn.component)
                    .to_owned();
                reply("SubscribeToConfigurationUpdateResponse", &json!({}), false);
                lock(&self.state).subs.push(Sub {
                    conn: conn.clone(),
                    stream_id: id,
                    kind: SubKind::Config {
                        component,
                        key_path,
                    },
                });
            }
            "UpdateConfiguration" => {
                let Some(v) = body.get("valueToMerge") else {
                    return fail("InvalidArgumentsError", "valueToMerge is required");
                };
                let kp: Vec<&str> = key_path.iter().map(String::as_str).collect();
                self.update_configuration(&conn.component, &kp, v);
                reply("UpdateConfigurationResponse", &json!({}), true);
            }
            "UpdateState" if !lock(&self.state).health_ready => {
                // The one lite error with a message (update_state.c).
                let _ = conn.tx.send(error_frame(
                    id,
                    "ServiceError",
                    "Failed to update the lifecycle state.",
                ));
            }
            "UpdateState" => match str_field("state") {
                Some(st @ ("RUNNING" | "ERRORED")) => {
                    lock(&self.state)
                        .states
                        .push((conn.component.clone(), st.to_owned()));
                    self.changed.notify_waiters();
                    reply("UpdateStateResponse", &json!({}), true);
                }
                _ => fail("InvalidArgumentsError", "state must be RUNNING or ERRORED"),
            },
            "PublishToIoTCore" => {
                let (Some(topic), Some(payload)) = (str_field("topicName"), str_field("payload"))
                else {
                    return fail("InvalidArgumentsError", "Topic is required");
                };
                let qos = match str_field("qos") {
                    Some(q @ ("0" | "1")) => q.to_owned(),
                    Some(_) => return fail("InvalidArgumentsError", "Invalid QoS value"),
                    None => return fail("InvalidArgumentsError", "QoS is required"),
                };
                let Ok(payload) = aws_smithy_types::base64::decode(payload) else {
                    return fail("InvalidArgumentsError", "Payload is not base64");
                };
                if denied("aws.greengrass.ipc.mqttproxy", topic) {
                    return fail(
                        "UnauthorizedError",
                        &format!("Principal {} is not authorized to perform aws.greengrass.ipc.mqttproxy:aws.greengrass#PublishToIoTCore on resource {topic}", conn.component),
                    );
                }
                lock(&self.state).iot.push(IotPublish {
                    component: conn.component.clone(),
                    topic: topic.to_owned(),
                    qos,
                    payload,
                });
                self.changed.notify_waiters();
                reply("PublishToIoTCoreResponse", &json!({}), true);
            }
            "PublishToTopic" => {
                let Some(topic) = str_field("topic") else {
                    return fail("InvalidArgumentsError", "topic is required");
                };
                if topic.contains(['#', '+', '*']) {
                    return fail(
                        "InvalidArgumentsError",
                        "Publish topic must not contain a wildcard.",
                    );
                }
                let message = if let Some(m) = body.pointer("/publishMessage/jsonMessage/message") {
                    if !m.is_object() {
                        return fail(
                            "InvalidArgumentsError",
                            "publishMessage.jsonMessage.message must be a JSON object",
                        );
                    }
                    Published::Json(m.clone())
                } else if let Some(b) = body
                    .pointer("/publishMessage/binaryMessage/message")
                    .and_then(Value::as_str)
                {
                    match aws_smithy_types::base64::decode(b) {
                        Ok(bytes) => Published::Binary(bytes),
                        Err(_) => {
                            return fail("InvalidArgumentsError", "binaryMessage is not base64")
                        }
                    }
                } else {
                    return fail(
                        "InvalidArgumentsError",
                        "publishMessage needs jsonMessage or binaryMessage",
                    );
                };
                if denied("aws.greengrass.ipc.pubsub", topic) {
                    return fail(
                        "UnauthorizedError",
                        &format!("Principal {} is not authorized to perform aws.greengrass.ipc.pubsub:aws.greengrass#PublishToTopic on resource {topic}", conn.component),
                    );
                }
                let (recorded, binary) = match &message {
                    Published::Json(m) => (m.clone(), false),
                    Published::Binary(b) => {
                        (serde_json::from_slice(b).unwrap_or(Value::Null), true)
                    }
                };
                lock(&self.state).local.push(LocalPublish {
                    component: conn.component.clone(),
                    topic: topic.to_owned(),
                    message: recorded,
                    binary,
                    request_bytes: body.to_string().len(),
                });
                self.deliver(&conn.component, topic, &message);
                self.changed.notify_waiters();
                reply("PublishToTopicResponse", &json!({}), true);
            }
            "SubscribeToTopic" => {
                let Some(filter) = str_field("topic") else {
                    return fail("InvalidArgumentsError", "topic is required");
                };
                if denied("aws.greengrass.ipc.pubsub", filter) {
                    return fail(
                        "UnauthorizedError",
                        &format!("Principal {} is not authorized to perform aws.greengrass.ipc.pubsub:aws.greengrass#SubscribeToTopic on resource {filter}", conn.component),
                    );
                }
                // Classic (≥ 2.6.0): RECEIVE_ALL_MESSAGES unless told otherwise, except that a
                // wildcard filter never receives the subscriber's own messages. Lite ignores
                // the field and delivers everything.
                let all = if lite {
                    true
                } else {
                    match str_field("receiveMode") {
                        Some("RECEIVE_MESSAGES_FROM_OTHERS") => false,
                        _ => !filter.contains(['#', '+']),
                    }
                };
                let sub = Sub {
                    conn: conn.clone(),
                    stream_id: id,
                    kind: SubKind::Topic {
                        filter: filter.to_owned(),
                        all,
                    },
                };
                if lite {
                    // ggipcd binds the subscription, then answers: an event can come first.
                    let early: Vec<Value> = {
                        let mut s = lock(&self.state);
                        s.subs.push(sub);
                        let (mine, rest) = std::mem::take(&mut s.early_events)
                            .into_iter()
                            .partition(|(t, _)| topic_matches(filter, t));
                        s.early_events = rest;
                        mine.into_iter().map(|(_, m)| m).collect()
                    };
                    for m in early {
                        let ev = json!({ "jsonMessage": { "message": m, "context": { "topic": filter } } });
                        let _ = conn.tx.send(json_frame(
                            0,
                            0,
                            id,
                            "aws.greengrass#SubscriptionResponseMessage",
                            &ev,
                        ));
                    }
                    reply("SubscribeToTopicResponse", &json!({}), false);
                } else {
                    reply("SubscribeToTopicResponse", &json!({}), false);
                    lock(&self.state).subs.push(sub);
                }
            }
            "SubscribeToComponentUpdates" => {
                reply("SubscribeToComponentUpdatesResponse", &json!({}), false);
                lock(&self.state).subs.push(Sub {
                    conn: conn.clone(),
                    stream_id: id,
                    kind: SubKind::Updates,
                });
                self.changed.notify_waiters();
            }
            "DeferComponentUpdate" => {
                let Some(deployment_id) = str_field("deploymentId") else {
                    return fail("InvalidArgumentsError", "deploymentId is required");
                };
                if !self.subscribed_to_updates(&conn.component) {
                    return fail(
                        "InvalidArgumentsError",
                        "Component is not subscribed to component update events",
                    );
                }
                let mut s = lock(&self.state);
                let outstanding = s
                    .awaiting_defer
                    .iter()
                    .position(|(c, d)| *c == conn.component && d == deployment_id);
                let Some(slot) = outstanding else {
                    drop(s);
                    return fail(
                        "ServiceError",
                        "Time limit to respond to PreComponentUpdateEvent exceeded",
                    );
                };
                s.awaiting_defer.remove(slot);
                drop(s);
                lock(&self.state).defers.push(Defer {
                    component: conn.component.clone(),
                    deployment_id: deployment_id.to_owned(),
                    message: str_field("message").map(str::to_owned),
                    recheck_after_ms: body
                        .get("recheckAfterMs")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                });
                self.changed.notify_waiters();
                reply("DeferComponentUpdateResponse", &json!({}), true);
            }
            _ => {
                let body = json!({ "error": "Unsupported Operation", "message": format!("{op} is an unsupported operation.") });
                let mut out = Vec::new();
                let m = Message::new_from_parts(
                    vec![
                        Header::new(":message-type", HeaderValue::Int32(1)),
                        Header::new(":message-flags", HeaderValue::Int32(2)),
                        Header::new(":stream-id", HeaderValue::Int32(id)),
                        Header::new(
                            ":content-type",
                            HeaderValue::String("application/json".to_owned().into()),
                        ),
                    ],
                    Bytes::from(body.to_string()),
                );
                let _ = write_message_to(&m, &mut out);
                let _ = conn.tx.send(Bytes::from(out));
            }
        }
    }

    /// Waits until `cond` holds (checked after every recorded call), up to `timeout`.
    pub async fn wait_until(&self, timeout: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let deadline = deadline_after(timeout);
        loop {
            let notified = self.changed.notified();
            if cond(self) {
                return true;
            }
            // Also poll, since some conditions (e.g. subscriptions) change without a record.
            let tick = tokio::time::sleep(Duration::from_millis(25));
            tokio::select! {
                () = notified => {}
                () = tick => {}
                () = tokio::time::sleep_until(deadline) => return cond(self),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_reports_changed_leaves() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": "x"});
        let mut changed = Vec::new();
        merge(
            &mut v,
            &json!({"a": {"b": 1, "c": 3}, "e": true}),
            &mut Vec::new(),
            &mut changed,
        );
        assert_eq!(v, json!({"a": {"b": 1, "c": 3}, "d": "x", "e": true}));
        assert_eq!(
            changed,
            vec![vec!["a".to_owned(), "c".to_owned()], vec!["e".to_owned()]]
        );
    }

    #[test]
    fn lite_refuses_keys_below_a_value_as_ggconfigd_does() {
        let c = json!({"releases": "", "mqtt": {}, "prefix": "a/"});
        assert!(children_under_a_value(
            &c,
            &json!({"releases": {"keep": "3"}})
        ));
        assert!(!children_under_a_value(&c, &json!({"releases": "x"})));
        assert!(!children_under_a_value(
            &c,
            &json!({"mqtt": {"endpoint": "h"}})
        ));
        assert!(!children_under_a_value(&c, &json!({"new": {"k": 1}})));
        assert!(children_under_a_value(
            &json!({"a": {"b": 1}}),
            &json!({"a": {"b": {"c": 2}}})
        ));
    }

    #[test]
    fn lite_arena_matches_the_measured_limit() {
        // Measured on lite with awsiotsdk: a flat object of 22 keys arrives, of 24 does not.
        let flat = |n: usize| Value::Object((0..n).map(|i| (format!("k{i}"), json!(i))).collect());
        assert!(3 * 21 + lite_arena_cost(&flat(22)) <= LITE_DELIVERY_ARENA);
        assert!(3 * 21 + lite_arena_cost(&flat(24)) > LITE_DELIVERY_ARENA);
    }

    #[test]
    fn gson_makes_every_number_a_double() {
        let v = gson_doubles(&json!({"n": 600, "l": [2024, "x"], "f": 1.5}));
        assert_eq!(v.to_string(), r#"{"f":1.5,"l":[2024.0,"x"],"n":600.0}"#);
    }

    #[test]
    fn policy_resources() {
        assert!(glob_matches("*", "a/b"));
        assert!(glob_matches("gg-s3-sync/*/status", "gg-s3-sync/t1/status"));
        assert!(!glob_matches("gg-s3-sync/+/status", "gg-s3-sync/t1/status"));
        assert!(glob_matches("a*c*e", "abcde"));
        assert!(!glob_matches("a*c", "ab"));
    }

    #[test]
    fn topic_filters() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("gg-s3-sync/sync-now", "gg-s3-sync/sync-now"));
    }
}
