//! The IPC client: a cloneable handle plus one reader task over the Unix socket.
//!
//! - Stream ids are allocated and the stream's first frame is written under one lock, so ids
//!   reach the socket strictly in order (the nucleus rejects anything else).
//! - Unary calls wait for the response; subscriptions receive the response, then events,
//!   until the server ends the stream or the [`Subscription`] is dropped (which sends TERMINATE).
//! - PINGs are answered. PROTOCOL_ERROR/INTERNAL_ERROR, a bad frame, or EOF end the connection:
//!   every pending call fails with [`Error::ConnectionLost`] and [`IpcClient::closed`] resolves.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::codec::{self, Codec};
use super::frame::Frame;
use super::model::{self, op};
use super::rpc::{self, Incoming};
use super::Error;

/// How long the nucleus has to answer CONNECT.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the nucleus has to answer a call (or a subscription's first response). The
/// classic nucleus can be slow during a deployment; a minute is never normal.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Reply {
    model_type: Option<String>,
    payload: Bytes,
}

type ReplyResult = Result<Reply, Error>;

#[derive(Debug)]
enum Slot {
    Unary(oneshot::Sender<ReplyResult>),
    Stream {
        first: Option<oneshot::Sender<ReplyResult>>,
        /// The response's `service-model-type`. Nucleus lite binds a subscription before it
        /// answers, so an event may come first: it is queued, not taken for the response.
        response_model: String,
        events: mpsc::UnboundedSender<ReplyResult>,
    },
}

#[derive(Debug)]
struct Writer {
    half: OwnedWriteHalf,
    next_id: i32,
}

#[derive(Debug)]
struct Inner {
    call_timeout: std::sync::Mutex<Duration>,
    writer: tokio::sync::Mutex<Writer>,
    streams: Mutex<HashMap<i32, Slot>>,
    closed: CancellationToken,
    close_reason: Mutex<Option<String>>,
}

impl Inner {
    fn streams(&self) -> MutexGuard<'_, HashMap<i32, Slot>> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn reason(&self) -> String {
        self.close_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "connection closed".into())
    }

    fn lost(&self) -> Error {
        Error::ConnectionLost {
            reason: self.reason(),
        }
    }

    /// Ends the connection: records why, fails every pending call, wakes `closed()` waiters.
    fn shut(&self, reason: String) {
        {
            let mut r = self
                .close_reason
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if r.is_none() {
                *r = Some(reason);
            }
        }
        let slots: Vec<Slot> = self.streams().drain().map(|(_, s)| s).collect();
        for slot in slots {
            match slot {
                Slot::Unary(tx) => {
                    let _ = tx.send(Err(self.lost()));
                }
                Slot::Stream { first, events, .. } => {
                    if let Some(tx) = first {
                        let _ = tx.send(Err(self.lost()));
                    } else {
                        let _ = events.send(Err(self.lost()));
                    }
                }
            }
        }
        self.closed.cancel();
    }
}

/// Reads whole frames from the socket.
struct FrameReader {
    half: OwnedReadHalf,
    buf: BytesMut,
}

impl FrameReader {
    async fn next(&mut self) -> Result<Option<Frame>, codec::Error> {
        loop {
            if let Some(frame) = Codec.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.half.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(codec::Error::Io(std::io::ErrorKind::UnexpectedEof.into()))
                };
            }
        }
    }
}

/// A connection to the Greengrass nucleus. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IpcClient {
    inner: Arc<Inner>,
}

impl IpcClient {
    /// Connects to `socket` (exactly as given; it may be relative to the working folder) and
    /// authenticates with `token` (`SVCUID`).
    ///
    /// # Errors
    /// [`Error::Connect`], [`Error::AccessDenied`], [`Error::HandshakeTimeout`], or a framing error.
    pub async fn connect(socket: &Path, token: &str) -> Result<Self, Error> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| Error::Connect {
                path: socket.to_owned(),
                source,
            })?;
        let (read, mut write) = stream.into_split();
        let mut reader = FrameReader {
            half: read,
            buf: BytesMut::with_capacity(8192),
        };
        write
            .write_all(&rpc::connect(token).encode().map_err(codec::Error::from)?)
            .await
            .map_err(codec::Error::from)?;
        let accepted = loop {
            let frame = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next())
                .await
                .map_err(|_| Error::HandshakeTimeout {
                    secs: HANDSHAKE_TIMEOUT.as_secs(),
                })??;
            let Some(frame) = frame else {
                return Err(Error::ConnectionLost {
                    reason: "the nucleus closed the socket during the handshake".into(),
                });
            };
            match rpc::classify(frame) {
                Incoming::ConnectAck { accepted } => break accepted,
                Incoming::Ping(_) | Incoming::PingResponse => {}
                Incoming::Fatal { message } => {
                    return Err(Error::ConnectionLost { reason: message })
                }
                other => {
                    return Err(Error::ConnectionLost {
                        reason: format!("unexpected frame before CONNECT_ACK: {other:?}"),
                    })
                }
            }
        };
        if !accepted {
            return Err(Error::AccessDenied);
        }
        let inner = Arc::new(Inner {
            call_timeout: std::sync::Mutex::new(CALL_TIMEOUT),
            writer: tokio::sync::Mutex::new(Writer {
                half: write,
                next_id: 1,
            }),
            streams: Mutex::new(HashMap::new()),
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
        });
        tokio::spawn(read_loop(reader, inner.clone()));
        Ok(Self { inner })
    }

    /// Changes how long calls wait for an answer (default [`CALL_TIMEOUT`]).
    pub fn set_call_timeout(&self, timeout: Duration) {
        *self
            .inner
            .call_timeout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = timeout;
    }

    /// Waits for the answer on stream `id`; on timeout the stream is forgotten.
    async fn answer(
        &self,
        operation: &str,
        id: i32,
        rx: oneshot::Receiver<ReplyResult>,
    ) -> Result<Reply, Error> {
        let limit = *self
            .inner
            .call_timeout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match tokio::time::timeout(limit, rx).await {
            Ok(r) => r
                .map_err(|_| self.inner.lost())?
                .map_err(|e| e.for_operation(operation)),
            Err(_) => {
                self.inner.streams().remove(&id);
                Err(Error::Timeout {
                    operation: operation.to_owned(),
                    secs: limit.as_secs(),
                })
            }
        }
    }

    /// Resolves when the connection is gone; returns why.
    pub async fn closed(&self) -> String {
        self.inner.closed.cancelled().await;
        self.inner.reason()
    }

    /// Whether the connection is gone.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    async fn open(&self, operation: &str, body: &impl Serialize, slot: Slot) -> Result<i32, Error> {
        let payload = serde_json::to_vec(body).map_err(|e| Error::UnexpectedResponse {
            operation: operation.to_owned(),
            detail: format!("cannot encode the request: {e}"),
        })?;
        let mut w = self.inner.writer.lock().await;
        if self.is_closed() {
            return Err(self.inner.lost());
        }
        let id = w.next_id;
        w.next_id = id.checked_add(1).ok_or(Error::StreamIdsExhausted)?;
        let bytes = rpc::request(id, operation, Bytes::from(payload))
            .encode()
            .map_err(codec::Error::from)?;
        self.inner.streams().insert(id, slot);
        if let Err(e) = w.half.write_all(&bytes).await {
            self.inner.streams().remove(&id);
            drop(w);
            self.inner
                .shut(format!("cannot write to the IPC socket: {e}"));
            return Err(self.inner.lost());
        }
        Ok(id)
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        operation: &str,
        body: &Req,
    ) -> Result<Resp, Error> {
        let (tx, rx) = oneshot::channel();
        let id = self.open(operation, body, Slot::Unary(tx)).await?;
        let reply = self.answer(operation, id, rx).await?;
        decode(operation, &format!("{operation}Response"), &reply)
    }

    async fn subscribe<Req: Serialize, Ev: DeserializeOwned>(
        &self,
        operation: &'static str,
        body: &Req,
    ) -> Result<Subscription<Ev>, Error> {
        let (first_tx, first_rx) = oneshot::channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let id = self
            .open(
                operation,
                body,
                Slot::Stream {
                    first: Some(first_tx),
                    response_model: format!("{operation}Response"),
                    events: events_tx,
                },
            )
            .await?;
        let reply = self.answer(operation, id, first_rx).await?;
        check_model(operation, &format!("{operation}Response"), &reply)?;
        Ok(Subscription {
            id,
            operation,
            events: events_rx,
            client: self.clone(),
            _event: PhantomData,
        })
    }

    /// GetConfiguration: `component` `None` reads the caller's own configuration. Returns `value`.
    ///
    /// # Errors
    /// [`Error::Operation`] (e.g. `ResourceNotFoundError` for a missing key), or a connection error.
    pub async fn get_configuration(
        &self,
        component: Option<&str>,
        key_path: &[&str],
    ) -> Result<serde_json::Value, Error> {
        let req = model::ConfigurationRequest {
            component_name: component,
            key_path,
        };
        let resp: model::GetConfigurationResponse = self.call(op::GET_CONFIGURATION, &req).await?;
        Ok(resp.value)
    }

    /// SubscribeToConfigurationUpdate.
    ///
    /// # Errors
    /// As [`IpcClient::get_configuration`].
    pub async fn subscribe_to_configuration_update(
        &self,
        component: Option<&str>,
        key_path: &[&str],
    ) -> Result<Subscription<model::ConfigurationUpdateEvents>, Error> {
        let req = model::ConfigurationRequest {
            component_name: component,
            key_path,
        };
        self.subscribe(op::SUBSCRIBE_TO_CONFIGURATION_UPDATE, &req)
            .await
    }

    /// UpdateState.
    ///
    /// # Errors
    /// [`Error::Operation`] or a connection error.
    pub async fn update_state(&self, state: model::LifecycleState) -> Result<(), Error> {
        let _: model::Empty = self
            .call(op::UPDATE_STATE, &model::UpdateStateRequest { state })
            .await?;
        Ok(())
    }

    /// PublishToIoTCore with QoS 1.
    ///
    /// # Errors
    /// [`Error::Operation`] (e.g. `UnauthorizedError` without an `accessControl` policy).
    pub async fn publish_to_iot_core(&self, topic: &str, payload: &[u8]) -> Result<(), Error> {
        let req = model::PublishToIoTCoreRequest {
            topic_name: topic,
            qos: "1",
            payload: aws_smithy_types::base64::encode(payload),
        };
        let _: model::Empty = self.call(op::PUBLISH_TO_IOT_CORE, &req).await?;
        Ok(())
    }

    /// PublishToTopic with a JSON message.
    ///
    /// # Errors
    /// [`Error::Operation`] or a connection error.
    pub async fn publish_to_topic(
        &self,
        topic: &str,
        message: serde_json::Value,
    ) -> Result<(), Error> {
        self.publish_message(
            topic,
            model::PublishMessage {
                json_message: Some(model::JsonMessage { message }),
                binary_message: None,
            },
        )
        .await
    }

    /// PublishToTopic with a binary message. Nucleus lite delivers a JSON message to local
    /// subscribers only if it decodes into 50 objects (about 22 keys); a binary message is one
    /// object, whatever its size.
    ///
    /// # Errors
    /// [`Error::Operation`] or a connection error.
    pub async fn publish_binary_to_topic(&self, topic: &str, bytes: &[u8]) -> Result<(), Error> {
        self.publish_message(
            topic,
            model::PublishMessage {
                json_message: None,
                binary_message: Some(model::BinaryMessage {
                    message: aws_smithy_types::base64::encode(bytes),
                }),
            },
        )
        .await
    }

    async fn publish_message(
        &self,
        topic: &str,
        publish_message: model::PublishMessage,
    ) -> Result<(), Error> {
        let req = model::PublishToTopicRequest {
            topic,
            publish_message,
        };
        let _: model::Empty = self.call(op::PUBLISH_TO_TOPIC, &req).await?;
        Ok(())
    }

    /// SubscribeToTopic.
    ///
    /// # Errors
    /// [`Error::Operation`] or a connection error.
    pub async fn subscribe_to_topic(
        &self,
        topic: &str,
    ) -> Result<Subscription<model::SubscriptionResponseMessage>, Error> {
        self.subscribe(
            op::SUBSCRIBE_TO_TOPIC,
            &model::SubscribeToTopicRequest {
                topic,
                receive_mode: Some("RECEIVE_MESSAGES_FROM_OTHERS"),
            },
        )
        .await
    }

    /// SubscribeToComponentUpdates.
    ///
    /// # Errors
    /// [`Error::Operation`] or a connection error.
    pub async fn subscribe_to_component_updates(
        &self,
    ) -> Result<Subscription<model::ComponentUpdatePolicyEvents>, Error> {
        self.subscribe(op::SUBSCRIBE_TO_COMPONENT_UPDATES, &model::Empty {})
            .await
    }

    /// DeferComponentUpdate: `recheck_after_ms` 0 lets the update proceed.
    ///
    /// # Errors
    /// [`Error::Operation`] or a connection error.
    pub async fn defer_component_update(
        &self,
        deployment_id: &str,
        message: Option<&str>,
        recheck_after_ms: u64,
    ) -> Result<(), Error> {
        let req = model::DeferComponentUpdateRequest {
            deployment_id,
            message,
            recheck_after_ms,
        };
        let _: model::Empty = self.call(op::DEFER_COMPONENT_UPDATE, &req).await?;
        Ok(())
    }
}

fn check_model(operation: &str, expected: &str, reply: &Reply) -> Result<(), Error> {
    match reply.model_type.as_deref() {
        Some(m) if m == expected => Ok(()),
        other => Err(Error::UnexpectedResponse {
            operation: operation.to_owned(),
            detail: format!(
                "expected {expected}, got {}",
                other.unwrap_or("no service-model-type")
            ),
        }),
    }
}

fn decode<T: DeserializeOwned>(operation: &str, expected: &str, reply: &Reply) -> Result<T, Error> {
    check_model(operation, expected, reply)?;
    let payload: &[u8] = if reply.payload.is_empty() {
        b"{}"
    } else {
        &reply.payload
    };
    serde_json::from_slice(payload).map_err(|e| Error::UnexpectedResponse {
        operation: operation.to_owned(),
        detail: format!("bad JSON: {e}"),
    })
}

async fn read_loop(mut reader: FrameReader, inner: Arc<Inner>) {
    let reason = loop {
        let frame = tokio::select! {
            () = inner.closed.cancelled() => break "connection closed".to_owned(),
            f = reader.next() => f,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break "the nucleus closed the IPC socket".to_owned(),
            Err(e) => break crate::errtext::chain(&e),
        };
        match rpc::classify(frame) {
            Incoming::Reply {
                stream_id,
                model_type,
                payload,
                terminate,
            } => {
                dispatch_reply(
                    &inner,
                    stream_id,
                    Reply {
                        model_type,
                        payload,
                    },
                    terminate,
                );
            }
            Incoming::Failed { stream_id, error } => {
                let slot = inner.streams().remove(&stream_id);
                let err = |operation: &str| Error::Operation {
                    operation: operation.to_owned(),
                    code: error.code.clone(),
                    message: error.message.clone(),
                };
                match slot {
                    Some(Slot::Unary(tx)) => {
                        let _ = tx.send(Err(err("request")));
                    }
                    Some(Slot::Stream {
                        first: Some(tx), ..
                    }) => {
                        let _ = tx.send(Err(err("subscription")));
                    }
                    Some(Slot::Stream {
                        first: None,
                        events,
                        ..
                    }) => {
                        let _ = events.send(Err(err("subscription")));
                    }
                    None => tracing::debug!(stream_id, "IPC error for an unknown stream ignored"),
                }
            }
            Incoming::Ping(ping) => {
                let bytes = match rpc::ping_response(&ping).encode() {
                    Ok(b) => b,
                    Err(e) => break format!("cannot encode a PING response: {e}"),
                };
                let mut w = inner.writer.lock().await;
                if let Err(e) = w.half.write_all(&bytes).await {
                    break format!("cannot write to the IPC socket: {e}");
                }
            }
            Incoming::PingResponse => {}
            Incoming::ConnectAck { .. } => break "unexpected second CONNECT_ACK".to_owned(),
            Incoming::Fatal { message } => break message,
        }
    };
    tracing::debug!(%reason, "IPC connection ended");
    inner.shut(reason);
}

fn dispatch_reply(inner: &Inner, stream_id: i32, reply: Reply, terminate: bool) {
    let mut streams = inner.streams();
    let Some(slot) = streams.get_mut(&stream_id) else {
        tracing::debug!(stream_id, "IPC message for a closed stream ignored");
        return;
    };
    match slot {
        Slot::Unary(_) => {
            if let Some(Slot::Unary(tx)) = streams.remove(&stream_id) {
                let _ = tx.send(Ok(reply));
            }
        }
        Slot::Stream {
            first,
            response_model,
            events,
        } => {
            let is_event = first.is_some()
                && reply
                    .model_type
                    .as_deref()
                    .is_some_and(|m| m != response_model && !terminate);
            if is_event {
                let _ = events.send(Ok(reply));
            } else if let Some(tx) = first.take() {
                let _ = tx.send(Ok(reply));
            } else if reply.model_type.is_some() || !reply.payload.is_empty() {
                let _ = events.send(Ok(reply));
            }
            if terminate {
                streams.remove(&stream_id);
            }
        }
    }
}

/// Events of a streaming operation. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription<T> {
    id: i32,
    operation: &'static str,
    events: mpsc::UnboundedReceiver<ReplyResult>,
    client: IpcClient,
    _event: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Subscription<T> {
    /// The next event; `None` when the stream ended (server closed it or the connection is lost).
    ///
    /// Cancel-safe: dropping the future loses no event.
    pub async fn next(&mut self) -> Option<Result<T, Error>> {
        let reply = self.events.recv().await?;
        Some(reply.and_then(|r| {
            let payload: &[u8] = if r.payload.is_empty() {
                b"{}"
            } else {
                &r.payload
            };
            serde_json::from_slice(payload).map_err(|e| Error::UnexpectedResponse {
                operation: self.operation.to_owned(),
                detail: format!("bad event JSON: {e}"),
            })
        }))
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        let inner = &self.client.inner;
        if inner.streams().remove(&self.id).is_none() || inner.closed.is_cancelled() {
            return;
        }
        // Tell the nucleus to stop sending (best effort; needs a runtime).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (inner, id) = (inner.clone(), self.id);
            handle.spawn(async move {
                if let Ok(bytes) = rpc::terminate(id).encode() {
                    let _ = inner.writer.lock().await.half.write_all(&bytes).await;
                }
            });
        }
    }
}
