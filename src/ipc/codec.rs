//! `tokio_util` codec over [`Frame`]: "need more bytes" is `Ok(None)`, and the announced
//! length is checked against [`MAX_FRAME_BYTES`] before any memory is reserved for it.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::frame::{self, announced_length, Frame, MAX_FRAME_BYTES};

/// Codec failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Socket I/O.
    #[error("IPC socket I/O failed")]
    Io(#[from] std::io::Error),
    /// A bad frame.
    #[error("bad IPC frame")]
    Frame(#[from] frame::Error),
}

/// The Greengrass IPC frame codec.
#[derive(Debug, Default, Clone, Copy)]
pub struct Codec;

impl Decoder for Codec {
    type Item = Frame;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Error> {
        let Some(len) = announced_length(src)? else {
            return Ok(None);
        };
        if src.len() < len {
            src.reserve(len - src.len());
            return Ok(None);
        }
        let bytes = src.split_to(len).freeze();
        Ok(Some(Frame::decode(bytes)?))
    }
}

impl Encoder<Frame> for Codec {
    type Error = Error;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), Error> {
        let bytes = item.encode()?;
        debug_assert!(bytes.len() <= MAX_FRAME_BYTES);
        dst.extend_from_slice(&bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::golden;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_frames_split_at_every_byte() {
        let mut all = golden::bytes(golden::CONNECT_ACK_ACCEPTED).to_vec();
        all.extend_from_slice(&golden::bytes(golden::GET_CONFIGURATION_RESPONSE));
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in all {
            buf.extend_from_slice(&[b]);
            while let Some(f) = Codec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].stream_id, 1);
        assert!(buf.is_empty());
    }

    proptest! {
        /// Arbitrary bytes, fed in arbitrary chunks, never panic the decoder and never make it
        /// reserve more than one maximum frame.
        #[test]
        fn arbitrary_bytes_are_safe(data in proptest::collection::vec(any::<u8>(), 0..4096), chunk in 1usize..64) {
            let mut buf = BytesMut::new();
            for piece in data.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    match Codec.decode(&mut buf) {
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(_) => { buf.clear(); break; }
                    }
                }
                prop_assert!(buf.capacity() <= MAX_FRAME_BYTES + 8192);
            }
        }

        /// Frames with corrupted bytes are rejected or decoded, never a panic.
        #[test]
        fn corrupted_golden_frames_are_safe(pos in 0usize..229, val in any::<u8>()) {
            let mut b = golden::bytes(golden::GET_CONFIGURATION_REQUEST).to_vec();
            let pos = pos % b.len();
            b[pos] = val;
            let mut buf = BytesMut::from(&b[..]);
            let _ = Codec.decode(&mut buf);
        }
    }
}
