//! The event-stream RPC layer's rules, without I/O: which frames to send, and what an incoming
//! frame means. The client in `client.rs` only moves frames between this and the socket.

use bytes::Bytes;

use super::frame::{Frame, MessageType, FLAG_CONNECTION_ACCEPTED, FLAG_TERMINATE_STREAM};

/// `:version` of the protocol.
pub const VERSION: &str = "0.1.0";
/// `:content-type` of JSON payloads.
pub const JSON: &str = "application/json";

/// The CONNECT frame carrying the component's token (`SVCUID`).
#[must_use]
pub fn connect(token: &str) -> Frame {
    let payload = serde_json::json!({ "authToken": token }).to_string();
    let mut f = Frame::new(MessageType::Connect, 0, 0, Bytes::from(payload));
    f.version = Some(VERSION.to_owned());
    f
}

/// The first frame of an operation's stream.
#[must_use]
pub fn request(stream_id: i32, operation: &str, payload: Bytes) -> Frame {
    let mut f = Frame::new(MessageType::ApplicationMessage, 0, stream_id, payload);
    f.content_type = Some(JSON.to_owned());
    f.model_type = Some(format!("{operation}Request"));
    f.operation = Some(operation.to_owned());
    f
}

/// Closes a stream from the client side (unsubscribes).
#[must_use]
pub fn terminate(stream_id: i32) -> Frame {
    Frame::new(
        MessageType::ApplicationMessage,
        FLAG_TERMINATE_STREAM,
        stream_id,
        Bytes::new(),
    )
}

/// The answer to a PING: same payload and non-`:` headers.
#[must_use]
pub fn ping_response(ping: &Frame) -> Frame {
    let mut f = Frame::new(MessageType::PingResponse, 0, 0, ping.payload.clone());
    f.other_headers.clone_from(&ping.other_headers);
    f
}

/// A modelled error from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationError {
    /// Short error name, e.g. `ResourceNotFoundError`, `UnauthorizedError`.
    pub code: String,
    /// The message (`message`, else `_message`).
    pub message: String,
}

/// What an incoming frame means.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// Handshake answer.
    ConnectAck {
        /// Whether the token was accepted.
        accepted: bool,
    },
    /// A response or event on a stream.
    Reply {
        /// The stream.
        stream_id: i32,
        /// `service-model-type`, absent on an empty TERMINATE.
        model_type: Option<String>,
        /// JSON payload (may be empty).
        payload: Bytes,
        /// Whether the stream ends here.
        terminate: bool,
    },
    /// A modelled error on a stream (the stream ends).
    Failed {
        /// The stream.
        stream_id: i32,
        /// The error.
        error: OperationError,
    },
    /// PING: answer with [`ping_response`].
    Ping(Frame),
    /// PING_RESPONSE: nothing to do.
    PingResponse,
    /// PROTOCOL_ERROR, INTERNAL_ERROR, or a frame that breaks the rules: the connection is over.
    Fatal {
        /// What happened.
        message: String,
    },
}

/// Classifies one frame received by a client.
#[must_use]
pub fn classify(f: Frame) -> Incoming {
    let on_stream = f.stream_id > 0;
    match (f.message_type, on_stream) {
        (MessageType::ApplicationMessage, true) => Incoming::Reply {
            stream_id: f.stream_id,
            terminate: f.flags & FLAG_TERMINATE_STREAM != 0,
            model_type: f.model_type,
            payload: f.payload,
        },
        (MessageType::ApplicationError, true) => Incoming::Failed {
            stream_id: f.stream_id,
            error: operation_error(&f),
        },
        (MessageType::ConnectAck, false) => Incoming::ConnectAck {
            accepted: f.flags & FLAG_CONNECTION_ACCEPTED != 0,
        },
        (MessageType::Ping, false) => Incoming::Ping(f),
        (MessageType::PingResponse, false) => Incoming::PingResponse,
        (MessageType::ProtocolError, false) => Incoming::Fatal {
            message: format!(
                "the nucleus reported a protocol error: {}",
                message_of(&f.payload)
            ),
        },
        (MessageType::InternalError, false) => Incoming::Fatal {
            message: format!(
                "the nucleus reported an internal error: {}",
                message_of(&f.payload)
            ),
        },
        (t, _) => Incoming::Fatal {
            message: format!("unexpected {t:?} frame on stream {}", f.stream_id),
        },
    }
}

fn message_of(payload: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or(serde_json::Value::Null);
    let text = ["message", "_message", "error"]
        .iter()
        .find_map(|k| v.get(k).and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(payload).trim().to_owned());
    text.chars().take(500).collect()
}

/// Reads an APPLICATION_ERROR: `message`, falling back to `_message` (nucleus lite sends only
/// that); the code from `_errorCode`, else the error shape's name.
#[must_use]
pub fn operation_error(f: &Frame) -> OperationError {
    let v: serde_json::Value =
        serde_json::from_slice(&f.payload).unwrap_or(serde_json::Value::Null);
    let code = v
        .get("_errorCode")
        .and_then(|c| c.as_str())
        .map(str::to_owned)
        .or_else(|| {
            f.model_type
                .as_deref()
                .map(|m| m.rsplit('#').next().unwrap_or(m).to_owned())
        })
        .unwrap_or_else(|| "InternalServerError".to_owned());
    OperationError {
        code,
        message: message_of(&f.payload),
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::golden;
    use super::*;

    #[test]
    fn connect_and_request_match_the_official_client() {
        // Python's json.dumps adds spaces; the payload differs only there, so compare headers
        // by encoding our frame with the golden payload.
        let mut c = connect("tok123");
        c.payload = Bytes::from_static(br#"{"authToken": "tok123"}"#);
        assert_eq!(c.encode().unwrap(), golden::bytes(golden::CONNECT_TOK123));
        let r = request(
            1,
            "aws.greengrass#GetConfiguration",
            Bytes::from_static(br#"{"keyPath": ["port"]}"#),
        );
        assert_eq!(
            r.encode().unwrap(),
            golden::bytes(golden::GET_CONFIGURATION_REQUEST)
        );
        assert_eq!(&connect("t").payload[..], br#"{"authToken":"t"}"#);
    }

    #[test]
    fn classifies() {
        let ack = Frame::decode(golden::bytes(golden::CONNECT_ACK_ACCEPTED)).unwrap();
        assert_eq!(classify(ack), Incoming::ConnectAck { accepted: true });
        let r = Frame::decode(golden::bytes(golden::GET_CONFIGURATION_RESPONSE)).unwrap();
        assert!(matches!(
            classify(r),
            Incoming::Reply {
                stream_id: 1,
                terminate: true,
                ..
            }
        ));
        // Application frames on stream 0 and connection frames on a stream are violations.
        let bad = Frame::new(MessageType::ApplicationMessage, 0, 0, Bytes::new());
        assert!(matches!(classify(bad), Incoming::Fatal { .. }));
        let bad = Frame::new(MessageType::Ping, 0, 3, Bytes::new());
        assert!(matches!(classify(bad), Incoming::Fatal { .. }));
        let pe = Frame::new(
            MessageType::ProtocolError,
            0,
            0,
            Bytes::from_static(br#"{"message":"bad id"}"#),
        );
        assert_eq!(
            classify(pe),
            Incoming::Fatal {
                message: "the nucleus reported a protocol error: bad id".into()
            }
        );
    }

    #[test]
    fn operation_errors_read_message_then_underscore_message() {
        let mut f = Frame::new(
            MessageType::ApplicationError,
            FLAG_TERMINATE_STREAM,
            1,
            Bytes::from_static(br#"{"message":"Key not found","_message":"x","_errorCode":"ResourceNotFoundError"}"#),
        );
        f.model_type = Some("aws.greengrass#ResourceNotFoundError".into());
        assert_eq!(
            operation_error(&f),
            OperationError {
                code: "ResourceNotFoundError".into(),
                message: "Key not found".into()
            }
        );
        f.payload =
            Bytes::from_static(br#"{"_message":"lite says","_errorCode":"UnauthorizedError"}"#);
        assert_eq!(operation_error(&f).message, "lite says");
        f.payload = Bytes::from_static(b"InternalServerError");
        f.model_type = None;
        assert_eq!(
            operation_error(&f),
            OperationError {
                code: "InternalServerError".into(),
                message: "InternalServerError".into()
            }
        );
    }

    #[test]
    fn ping_response_echoes() {
        let mut p = Frame::new(MessageType::Ping, 0, 0, Bytes::from_static(b"hi"));
        p.other_headers
            .push(aws_smithy_types::event_stream::Header::new(
                "x",
                aws_smithy_types::event_stream::HeaderValue::Int32(1),
            ));
        let r = ping_response(&p);
        assert_eq!(
            (r.message_type, &r.payload[..], r.other_headers.len()),
            (MessageType::PingResponse, &b"hi"[..], 1)
        );
    }
}
