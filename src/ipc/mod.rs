//! Greengrass IPC: event-stream RPC over the nucleus's Unix socket.
//!
//! - `frame`: frames ↔ bytes (framing by `aws-smithy-eventstream`), size limit, golden tests.
//! - `codec`: `tokio_util` codec.
//! - `rpc`: handshake, stream and error rules (pure).
//! - `model`: JSON shapes of the operations used.
//! - `client`: [`IpcClient`], the cloneable connection handle.

pub mod client;
pub mod codec;
pub mod frame;
pub mod model;
pub mod rpc;

use std::path::PathBuf;

pub use client::{IpcClient, Subscription};

/// IPC failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket cannot be reached.
    #[error(
        "cannot connect to the Greengrass IPC socket {} (AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT); \
         is the component started by the nucleus?",
        path.display()
    )]
    Connect {
        /// The socket path as given.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No CONNECT_ACK in time.
    #[error("the nucleus did not answer the IPC handshake within {secs} s")]
    HandshakeTimeout {
        /// The timeout.
        secs: u64,
    },
    /// CONNECT_ACK without the accepted flag.
    #[error(
        "the nucleus refused the IPC connection (AccessDenied): SVCUID is not a valid token; it changes at \
         every nucleus start, so the component must be started by the nucleus, never with a saved token"
    )]
    AccessDenied,
    /// The connection ended.
    #[error("the Greengrass IPC connection was lost: {reason}")]
    ConnectionLost {
        /// Why.
        reason: String,
    },
    /// Socket or framing failure.
    #[error("Greengrass IPC")]
    Codec(#[from] codec::Error),
    /// The nucleus answered an operation with an error.
    #[error("{operation} failed: {code}: {message}")]
    Operation {
        /// The operation.
        operation: String,
        /// Short error name, e.g. `ResourceNotFoundError`.
        code: String,
        /// The nucleus's message.
        message: String,
    },
    /// The answer did not have the expected shape.
    #[error("{operation}: unexpected response: {detail}")]
    UnexpectedResponse {
        /// The operation.
        operation: String,
        /// What was wrong.
        detail: String,
    },
    /// 2^31 streams were opened on one connection.
    /// The nucleus did not answer a call in time (it is busy or stuck; not a lost connection).
    #[error("{operation}: the nucleus did not answer within {secs} s")]
    Timeout {
        /// The operation.
        operation: String,
        /// The limit.
        secs: u64,
    },
    #[error("IPC stream ids exhausted; reconnect")]
    StreamIdsExhausted,
}

impl Error {
    /// Whether the nucleus said the key/component/resource does not exist.
    #[must_use]
    pub fn is_resource_not_found(&self) -> bool {
        matches!(self, Self::Operation { code, .. } if code == "ResourceNotFoundError")
    }

    /// Whether this is about the connection as a whole (the component should exit).
    #[must_use]
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Self::ConnectionLost { .. } | Self::Codec(_) | Self::StreamIdsExhausted
        )
    }

    pub(crate) fn for_operation(self, op: &str) -> Self {
        match self {
            Self::Operation { code, message, .. } => Self::Operation {
                operation: op.rsplit('#').next().unwrap_or(op).to_owned(),
                code,
                message,
            },
            other => other,
        }
    }
}
