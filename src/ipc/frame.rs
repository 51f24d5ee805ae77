//! Greengrass IPC frames: AWS event-stream messages with the RPC headers (no I/O).
//!
//! The binary framing (prelude, headers, payload, CRCs) is `aws-smithy-eventstream`'s; this
//! module maps it to [`Frame`], which names the headers the RPC layer uses, and fixes the
//! header order AWS's own clients send (so our frames are byte-identical to theirs).

use aws_smithy_eventstream::frame::{read_message_from, write_message_to};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;

/// Largest frame accepted, like the AWS C event-stream library (`AWS_EVENT_STREAM_MAX_MESSAGE_SIZE`).
pub const MAX_FRAME_BYTES: usize = 24 * 1024 * 1024;
/// Smallest possible frame: prelude (12) + message CRC (4).
pub const MIN_FRAME_BYTES: usize = 16;

/// `:message-flags` bit: the server accepted the connection (CONNECT_ACK only).
pub const FLAG_CONNECTION_ACCEPTED: i32 = 1;
/// `:message-flags` bit: this frame ends its stream.
pub const FLAG_TERMINATE_STREAM: i32 = 2;

/// `:message-type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// A request, response or event on a stream.
    ApplicationMessage,
    /// A modelled error on a stream.
    ApplicationError,
    /// Ping (stream 0).
    Ping,
    /// Ping response (stream 0).
    PingResponse,
    /// Client handshake (stream 0).
    Connect,
    /// Server handshake answer (stream 0).
    ConnectAck,
    /// Fatal protocol violation (stream 0).
    ProtocolError,
    /// Fatal server error (stream 0).
    InternalError,
}

impl MessageType {
    /// The wire value.
    #[must_use]
    pub fn code(self) -> i32 {
        match self {
            Self::ApplicationMessage => 0,
            Self::ApplicationError => 1,
            Self::Ping => 2,
            Self::PingResponse => 3,
            Self::Connect => 4,
            Self::ConnectAck => 5,
            Self::ProtocolError => 6,
            Self::InternalError => 7,
        }
    }

    fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => Self::ApplicationMessage,
            1 => Self::ApplicationError,
            2 => Self::Ping,
            3 => Self::PingResponse,
            4 => Self::Connect,
            5 => Self::ConnectAck,
            6 => Self::ProtocolError,
            7 => Self::InternalError,
            _ => return None,
        })
    }
}

/// Frame-level failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The frame announces more bytes than allowed.
    #[error("IPC frame of {size} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The frame announces fewer bytes than a frame has.
    #[error("IPC frame length {size} is shorter than the {MIN_FRAME_BYTES}-byte minimum")]
    TooShort {
        /// Announced size.
        size: usize,
    },
    /// The bytes are not a valid event-stream message (CRC, lengths, header types).
    #[error("malformed IPC frame: {detail}")]
    Malformed {
        /// The decoder's message.
        detail: String,
    },
    /// A required RPC header is missing or has the wrong type.
    #[error("IPC frame lacks the int32 header {name}")]
    MissingHeader {
        /// The header.
        name: &'static str,
    },
    /// `:message-type` is not a known value.
    #[error("IPC frame has unknown :message-type {code}")]
    UnknownType {
        /// The value.
        code: i32,
    },
}

/// One RPC frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// `:message-type`.
    pub message_type: MessageType,
    /// `:message-flags`.
    pub flags: i32,
    /// `:stream-id`: 0 for the connection, >0 for an operation.
    pub stream_id: i32,
    /// `:version` (CONNECT only).
    pub version: Option<String>,
    /// `:content-type`.
    pub content_type: Option<String>,
    /// `service-model-type`: the shape of the payload.
    pub model_type: Option<String>,
    /// `operation` (first frame of a stream).
    pub operation: Option<String>,
    /// Headers not named above (echoed on PING responses).
    pub other_headers: Vec<Header>,
    /// JSON payload, or empty.
    pub payload: Bytes,
}

impl Frame {
    /// A frame with only the three base headers.
    #[must_use]
    pub fn new(message_type: MessageType, flags: i32, stream_id: i32, payload: Bytes) -> Self {
        Self {
            message_type,
            flags,
            stream_id,
            version: None,
            content_type: None,
            model_type: None,
            operation: None,
            other_headers: Vec::new(),
            payload,
        }
    }

    /// Whether `flags` has TERMINATE_STREAM.
    #[must_use]
    pub fn terminates(&self) -> bool {
        self.flags & FLAG_TERMINATE_STREAM != 0
    }

    /// Encodes to wire bytes, headers in the order AWS's clients send them: `:version`,
    /// `:content-type`, `service-model-type`, the three base headers, `operation`, others.
    ///
    /// # Errors
    /// [`Error::Malformed`] if a header is too long for the format.
    pub fn encode(&self) -> Result<Bytes, Error> {
        let s = |v: &str| HeaderValue::String(v.to_owned().into());
        let mut h = Vec::with_capacity(7 + self.other_headers.len());
        if let Some(v) = &self.version {
            h.push(Header::new(":version", s(v)));
        }
        if let Some(v) = &self.content_type {
            h.push(Header::new(":content-type", s(v)));
        }
        if let Some(v) = &self.model_type {
            h.push(Header::new("service-model-type", s(v)));
        }
        h.push(Header::new(
            ":message-type",
            HeaderValue::Int32(self.message_type.code()),
        ));
        h.push(Header::new(
            ":message-flags",
            HeaderValue::Int32(self.flags),
        ));
        h.push(Header::new(
            ":stream-id",
            HeaderValue::Int32(self.stream_id),
        ));
        if let Some(v) = &self.operation {
            h.push(Header::new("operation", s(v)));
        }
        h.extend(self.other_headers.iter().cloned());
        let message = Message::new_from_parts(h, self.payload.clone());
        let mut out = Vec::with_capacity(64 + self.payload.len());
        write_message_to(&message, &mut out).map_err(|e| Error::Malformed {
            detail: e.to_string(),
        })?;
        if out.len() > MAX_FRAME_BYTES {
            return Err(Error::TooLarge {
                size: out.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        Ok(Bytes::from(out))
    }

    /// Decodes exactly one whole frame.
    ///
    /// # Errors
    /// [`Error`] for bad lengths, CRCs, header types, or missing RPC headers.
    pub fn decode(bytes: Bytes) -> Result<Self, Error> {
        check_length(&bytes)?;
        let message = read_message_from(bytes).map_err(|e| Error::Malformed {
            detail: e.to_string(),
        })?;
        Self::from_message(&message)
    }

    fn from_message(m: &Message) -> Result<Self, Error> {
        let int = |name: &'static str| {
            m.headers()
                .iter()
                .find(|h| h.name().as_str() == name)
                .and_then(|h| h.value().as_int32().ok())
                .ok_or(Error::MissingHeader { name })
        };
        let code = int(":message-type")?;
        let message_type = MessageType::from_code(code).ok_or(Error::UnknownType { code })?;
        let mut frame = Frame::new(
            message_type,
            int(":message-flags")?,
            int(":stream-id")?,
            m.payload().clone(),
        );
        for h in m.headers() {
            let text = h.value().as_string().ok().map(|v| v.as_str().to_owned());
            match h.name().as_str() {
                ":message-type" | ":message-flags" | ":stream-id" => {}
                ":version" => frame.version = text,
                ":content-type" => frame.content_type = text,
                "service-model-type" => frame.model_type = text,
                "operation" => frame.operation = text,
                _ => frame.other_headers.push(h.clone()),
            }
        }
        Ok(frame)
    }
}

/// Reads the announced total length from the prelude, checking the limits. `None` if fewer
/// than 4 bytes are available.
///
/// # Errors
/// [`Error::TooLarge`] or [`Error::TooShort`].
pub fn announced_length(buf: &[u8]) -> Result<Option<usize>, Error> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let size = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if size > MAX_FRAME_BYTES {
        return Err(Error::TooLarge {
            size,
            max: MAX_FRAME_BYTES,
        });
    }
    if size < MIN_FRAME_BYTES {
        return Err(Error::TooShort { size });
    }
    Ok(Some(size))
}

fn check_length(bytes: &[u8]) -> Result<(), Error> {
    match announced_length(bytes)? {
        Some(n) if n == bytes.len() => Ok(()),
        _ => Err(Error::Malformed {
            detail: format!(
                "buffer of {} bytes does not hold exactly one frame",
                bytes.len()
            ),
        }),
    }
}

#[cfg(test)]
pub(crate) mod golden {
    //! Frames captured from AWS's official Python IPC client (awsiotsdk 1.31.0).
    pub(crate) const CONNECT_TOK123: &str = "0000006f000000480647f657083a76657273696f6e070005302e312e300d3a6d6573736167652d7479706504000000040e3a6d6573736167652d666c61677304000000000a3a73747265616d2d696404000000007b2261757468546f6b656e223a2022746f6b313233227d281bfe46";
    pub(crate) const CONNECT_ACK_ACCEPTED: &str = "0000004700000037374cfe3f0d3a6d6573736167652d7479706504000000050e3a6d6573736167652d666c61677304000000010a3a73747265616d2d69640400000000e237e27d";
    pub(crate) const GET_CONFIGURATION_REQUEST: &str = "000000e5000000c01e7255760d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e12736572766963652d6d6f64656c2d747970650700266177732e677265656e677261737323476574436f6e66696775726174696f6e526571756573740d3a6d6573736167652d7479706504000000000e3a6d6573736167652d666c61677304000000000a3a73747265616d2d69640400000001096f7065726174696f6e07001f6177732e677265656e677261737323476574436f6e66696775726174696f6e7b226b657950617468223a205b22706f7274225d7d328806d1";
    pub(crate) const GET_CONFIGURATION_RESPONSE: &str = "000000db000000951b62f6ea0d3a6d6573736167652d7479706504000000000e3a6d6573736167652d666c61677304000000020a3a73747265616d2d696404000000010d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e12736572766963652d6d6f64656c2d747970650700276177732e677265656e677261737323476574436f6e66696775726174696f6e526573706f6e73657b22636f6d706f6e656e744e616d65223a22636f6d2e6578616d706c652e58222c2276616c7565223a7b22706f7274223a3434337d7d9dbfbf47";

    pub(crate) fn bytes(hex: &str) -> bytes::Bytes {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect::<Vec<_>>()
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::golden::*;
    use super::*;

    #[test]
    fn decodes_golden_connect_ack_and_response() {
        let ack = Frame::decode(bytes(CONNECT_ACK_ACCEPTED)).unwrap();
        assert_eq!(
            (ack.message_type, ack.flags, ack.stream_id),
            (MessageType::ConnectAck, 1, 0)
        );
        assert!(ack.payload.is_empty());
        let r = Frame::decode(bytes(GET_CONFIGURATION_RESPONSE)).unwrap();
        assert_eq!(
            (r.message_type, r.flags, r.stream_id),
            (MessageType::ApplicationMessage, 2, 1)
        );
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            r.model_type.as_deref(),
            Some("aws.greengrass#GetConfigurationResponse")
        );
        assert_eq!(
            &r.payload[..],
            br#"{"componentName":"com.example.X","value":{"port":443}}"#
        );
        assert!(r.terminates());
    }

    #[test]
    fn decoded_golden_frames_re_encode_byte_for_byte() {
        for hex in [CONNECT_TOK123, GET_CONFIGURATION_REQUEST] {
            let frame = Frame::decode(bytes(hex)).unwrap();
            assert_eq!(frame.encode().unwrap(), bytes(hex));
        }
    }

    #[test]
    fn rejects_bad_lengths_and_crcs() {
        let mut b = bytes(CONNECT_ACK_ACCEPTED).to_vec();
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(matches!(
            Frame::decode(b.into()),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            announced_length(&[0xff, 0xff, 0xff, 0xff]),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            announced_length(&[0, 0, 0, 3]),
            Err(Error::TooShort { size: 3 })
        ));
        assert_eq!(announced_length(&[0, 0]).unwrap(), None);
    }

    #[test]
    fn requires_the_base_headers() {
        let m = Message::new(&b"{}"[..])
            .add_header(Header::new(":message-type", HeaderValue::Int32(0)));
        let mut out = Vec::new();
        write_message_to(&m, &mut out).unwrap();
        assert!(matches!(
            Frame::decode(out.into()),
            Err(Error::MissingHeader {
                name: ":message-flags"
            })
        ));
    }
}
