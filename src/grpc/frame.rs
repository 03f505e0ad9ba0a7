//! gRPC's message framing (the length-prefixed messages of the HTTP/2 body): one flag byte
//! (bit 0: compressed; bit 7: a gRPC-Web trailer frame), a 4-byte big-endian length, the message.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The prefix before each message.
pub const PREFIX_LEN: usize = 5;

/// A message framed for the body: flag 0 (not compressed), its length, the bytes.
pub fn encode(msg: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX_LEN + msg.len());
    out.put_u8(0);
    // Callers cap messages far below 4 GiB (`max_message_size`), so the length fits.
    out.put_u32(u32::try_from(msg.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(msg);
    out.freeze()
}

/// A framing error: the body is not a sequence of gRPC messages the gateway can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A message larger than the configured cap.
    #[error("a gRPC message of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge {
        /// The length its prefix announced.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A compressed message (the gateway asks for none: it sends no `grpc-accept-encoding`).
    #[error("a compressed gRPC message (grpc-encoding is not supported here)")]
    Compressed,
    /// The body ended inside a message.
    #[error("the body ended inside a gRPC message")]
    Truncated,
}

/// One framed message.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    /// The flag byte.
    pub flags: u8,
    /// The message bytes.
    pub data: Bytes,
}

/// Splits a body that arrives in pieces into messages, holding at most one message's bytes.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max: usize,
}

impl Decoder {
    /// A decoder refusing messages over `max` bytes.
    pub fn new(max: usize) -> Self {
        Decoder {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Adds the next piece of the body.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, if one has arrived. A message's length is checked against the
    /// cap as soon as its prefix is in, before its bytes are held.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if self.buf.len() < PREFIX_LEN {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if flags & 1 == 1 && flags & 0x80 == 0 {
            return Err(FrameError::Compressed);
        }
        if self.buf.len() < PREFIX_LEN + len {
            // Room for the rest of it, once.
            self.buf.reserve(PREFIX_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(PREFIX_LEN);
        let data = self.buf.split_to(len).freeze();
        Ok(Some(Message { flags, data }))
    }

    /// Whether the body may end here (no partial message held).
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_anywhere_come_out_whole() {
        let mut body = Vec::new();
        for m in [&b"hello"[..], b"", b"a longer message"] {
            body.extend_from_slice(&encode(m));
        }
        for cut in 1..body.len() {
            let mut d = Decoder::new(100);
            let mut got = Vec::new();
            for piece in body.chunks(cut) {
                d.push(piece);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m.data);
                }
            }
            d.finish().unwrap();
            assert_eq!(got, vec![&b"hello"[..], b"", b"a longer message"]);
        }
    }

    #[test]
    fn oversized_compressed_and_truncated_messages_are_errors() {
        let mut d = Decoder::new(4);
        d.push(&encode(b"12345"));
        assert_eq!(
            d.next_message(),
            Err(FrameError::TooLarge { len: 5, max: 4 })
        );
        let mut d = Decoder::new(10);
        d.push(&[1, 0, 0, 0, 1, 9]);
        assert_eq!(d.next_message(), Err(FrameError::Compressed));
        let mut d = Decoder::new(10);
        d.push(&[0, 0, 0, 0, 3, 9]);
        assert_eq!(d.next_message(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated));
    }
}
