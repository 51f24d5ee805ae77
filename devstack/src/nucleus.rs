//! A fake Greengrass nucleus: the IPC server side on a Unix socket.
//!
//! Written against the protocol notes, on `aws-smithy-eventstream` directly (not the
//! component's client code), and checked with AWS's official Python client. It serves
//! GetConfiguration, SubscribeToConfigurationUpdate, UpdateConfiguration, UpdateState,
//! PublishToIoTCore, PublishToTopic, SubscribeToTopic, SubscribeToComponentUpdates and
//! DeferComponentUpdate, enforces the handshake and stream-id rules (PROTOCOL_ERROR), and
//! records what components did so tests can assert on it.

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

/// The nucleus's own configuration is readable as this component.
pub const NUCLEUS: &str = "aws.greengrass.Nucleus";
const MAX_FRAME: usize = 24 * 1024 * 1024;

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
    /// The JSON message.
    pub message: Value,
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

async fn read_frame(
    sock: &mut tokio::net::unix::OwnedReadHalf,
    buf: &mut BytesMut,
) -> Option<Message> {
    loop {
        if buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if !(16..=MAX_FRAME).contains(&len) {
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

fn random_token() -> String {
    (0..16)
        .map(|_| char::from(b'A' + fastrand::u8(..26)))
        .collect()
}

impl FakeNucleus {
    /// Listens on `dir/ipc.socket`.
    ///
    /// # Errors
    /// [`Error::Bind`].
    pub async fn start(dir: &Path) -> Result<Self, Error> {
        let socket = dir.join("ipc.socket");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(|source| Error::Bind {
            path: socket.clone(),
            source,
        })?;
        let n = Self {
            socket,
            state: Arc::default(),
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

    /// Sets the nucleus's own configuration (`iotCredEndpoint`, `awsRegion`, …).
    pub fn set_nucleus_config(&self, config: Value) {
        lock(&self.state).config.insert(NUCLEUS.to_owned(), config);
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
    pub fn update_configuration(&self, component: &str, key_path: &[&str], value: &Value) {
        let mut s = lock(&self.state);
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
    }

    /// Publishes a JSON message on a local topic, as another component would.
    pub fn publish_local(&self, topic: &str, message: Value) {
        self.deliver("devstack.OtherComponent", topic, &message);
    }

    fn deliver(&self, from: &str, topic: &str, message: &Value) {
        let s = lock(&self.state);
        for sub in &s.subs {
            if let SubKind::Topic { filter, all } = &sub.kind {
                if topic_matches(filter, topic) && (*all || sub.conn.component != from) {
                    let ev = json!({ "jsonMessage": { "message": message, "context": { "topic": topic } } });
                    let _ = sub.conn.tx.send(json_frame(
                        0,
                        0,
                        sub.stream_id,
                        "aws.greengrass#SubscriptionResponseMessage",
                        &ev,
                    ));
                }
            }
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
        let send_pre = |conn: &Conn, stream: i32| {
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
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(d.recheck_after_ms)).await;
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
            if agreed || tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
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
        let mut s = lock(&self.state);
        s.subs.retain(|sub| {
            let mine =
                sub.conn.component == component && matches!(sub.kind, SubKind::Config { .. });
            if mine {
                let _ = sub
                    .conn
                    .tx
                    .send(frame(0, 2, sub.stream_id, None, Bytes::new()));
            }
            !mine
        });
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
        let Some(first) = read_frame(&mut read, &mut buf)
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
                m = read_frame(&mut read, &mut buf) => m,
            };
            let Some(f) = msg.as_ref().and_then(parse) else {
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
        let reply = |model: &str, v: &Value, terminate: bool| {
            let _ = conn.tx.send(json_frame(
                0,
                if terminate { 2 } else { 0 },
                id,
                &format!("aws.greengrass#{model}"),
                v,
            ));
        };
        let fail = |code: &str, msg: &str| {
            let _ = conn.tx.send(error_frame(id, code, msg));
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
                let Some(message) = body
                    .pointer("/publishMessage/jsonMessage/message")
                    .filter(|m| m.is_object())
                    .cloned()
                else {
                    return fail(
                        "InvalidArgumentsError",
                        "publishMessage.jsonMessage.message must be a JSON object",
                    );
                };
                lock(&self.state).local.push(LocalPublish {
                    component: conn.component.clone(),
                    topic: topic.to_owned(),
                    message: message.clone(),
                });
                self.deliver(&conn.component, topic, &message);
                self.changed.notify_waiters();
                reply("PublishToTopicResponse", &json!({}), true);
            }
            "SubscribeToTopic" => {
                let Some(filter) = str_field("topic") else {
                    return fail("InvalidArgumentsError", "topic is required");
                };
                let all = match str_field("receiveMode") {
                    Some("RECEIVE_ALL_MESSAGES") => true,
                    Some(_) => false,
                    None => !filter.contains(['#', '+']),
                };
                reply("SubscribeToTopicResponse", &json!({}), false);
                lock(&self.state).subs.push(Sub {
                    conn: conn.clone(),
                    stream_id: id,
                    kind: SubKind::Topic {
                        filter: filter.to_owned(),
                        all,
                    },
                });
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
                        "Component is not subscribed to component updates",
                    );
                }
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
    fn topic_filters() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("gg-s3-sync/sync-now", "gg-s3-sync/sync-now"));
    }
}
