//! The codecs of the `compression` plugin: a streaming [`Encoder`] flushed after every chunk, so
//! each output chunk together with those before it decodes to all the input so far, and a
//! streaming [`Decoder`] whose output is capped, so a decompression bomb fails once it passes the
//! cap instead of growing memory.
//!
//! Both are synchronous writers into a `Vec` that is taken after every chunk: they run inside a
//! body's poll, and their work is proportional to the chunk. The crates: `flate2` (gzip, the
//! pure-Rust miniz_oxide backend), `brotli` (rust-brotli, safe Rust), `zstd` (the reference C
//! library).

use std::io::{self, Write};

use bytes::Bytes;
use frontdesk_config::{CompressionLevels, ContentCoding};

/// Brotli's window for responses: 2^20 bytes (1 MiB). The ring buffer grows to it only for
/// bodies that long; the default 4 MiB (2^22) would cost more per stream for little gain.
const BR_LGWIN: u32 = 20;
/// The size of the brotli encoder's and decoder's internal output buffer.
const BR_BUFFER: usize = 4096;
/// The largest zstd window accepted in an upload: 2^23 (8 MiB), the limit RFC 9659 sets for the
/// `zstd` content coding. A frame that asks for more is refused rather than allocated.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// A codec failure; what the client gets for it is the caller's choice.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The decompressed body passed the cap.
    #[error("the decompressed body is larger than {max} bytes")]
    TooLarge {
        /// The cap, in bytes.
        max: u64,
    },
    /// The input is not valid data of the coding (corrupt, truncated, or followed by garbage).
    #[error("the body is not valid {coding} data")]
    Corrupt {
        /// The coding's token.
        coding: &'static str,
        /// What the codec said.
        #[source]
        source: io::Error,
    },
    /// The encoder failed (the zstd library refused a parameter or ran out of memory).
    #[error("{coding} compression failed")]
    Encode {
        /// The coding's token.
        coding: &'static str,
        /// What the codec said.
        #[source]
        source: io::Error,
    },
}

/// A streaming compressor for one body.
pub struct Encoder {
    coding: ContentCoding,
    inner: Enc,
}

enum Enc {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    // Boxed: the brotli state is a few KiB inline, the others a few words.
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Finished,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("coding", &self.coding)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder for `coding` at its level in `levels` (already validated). `size`: the body's
    /// length when known (`Content-Length`); zstd then sizes its tables for it (about 0.3 MiB for
    /// 10 KiB instead of 3.6 MiB), and a body of another length fails at the end.
    pub fn new(
        coding: ContentCoding,
        levels: &CompressionLevels,
        size: Option<u64>,
    ) -> Result<Encoder, CodecError> {
        let inner = match coding {
            ContentCoding::Gzip => Enc::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(levels.gzip.min(9)),
            )),
            ContentCoding::Br => Enc::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BR_BUFFER,
                levels.br.min(11),
                BR_LGWIN,
            ))),
            // Levels 1 to 19 use windows of at most 2^23 (8 MiB), the most an RFC 9659 decoder
            // must accept; the config's range stops at 19 for that.
            ContentCoding::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), levels.zstd)
                    .map_err(|source| encode_error(coding, source))?;
                if size.is_some() {
                    e.set_pledged_src_size(size)
                        .map_err(|source| encode_error(coding, source))?;
                }
                Enc::Zstd(e)
            }
        };
        Ok(Encoder { coding, inner })
    }

    /// The coding this encoder produces.
    pub fn coding(&self) -> ContentCoding {
        self.coding
    }

    /// Compresses `data` and flushes: what is returned, after everything returned before,
    /// decodes to all input so far. Empty input gives empty output (no flush marker).
    pub fn compress(&mut self, data: &[u8]) -> Result<Bytes, CodecError> {
        if data.is_empty() {
            return Ok(Bytes::new());
        }
        let coding = self.coding;
        let out = match &mut self.inner {
            Enc::Gzip(e) => write_flush(e, data).map(|()| e.get_mut()),
            Enc::Br(e) => write_flush(&mut **e, data).map(|()| e.get_mut()),
            Enc::Zstd(e) => write_flush(e, data).map(|()| e.get_mut()),
            Enc::Finished => return Ok(Bytes::new()),
        };
        out.map(|v| Bytes::from(std::mem::take(v)))
            .map_err(|source| encode_error(coding, source))
    }

    /// Ends the stream: the last bytes (the coding's trailer). Later calls return nothing.
    pub fn finish(&mut self) -> Result<Bytes, CodecError> {
        let coding = self.coding;
        let out = match std::mem::replace(&mut self.inner, Enc::Finished) {
            Enc::Gzip(e) => e.finish(),
            Enc::Br(e) => Ok(e.into_inner()),
            Enc::Zstd(e) => e.finish(),
            Enc::Finished => Ok(Vec::new()),
        };
        out.map(Bytes::from)
            .map_err(|source| encode_error(coding, source))
    }
}

fn write_flush(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    w.write_all(data)?;
    w.flush()
}

fn encode_error(coding: ContentCoding, source: io::Error) -> CodecError {
    CodecError::Encode {
        coding: coding.token(),
        source,
    }
}

/// A streaming decompressor for one body, whose total output is capped.
pub struct Decoder {
    coding: ContentCoding,
    max: u64,
    inner: Dec,
}

enum Dec {
    // Multi-member: RFC 1952 allows several gzip members one after the other.
    Gzip(flate2::write::MultiGzDecoder<Capped>),
    Br(Box<brotli::DecompressorWriter<Capped>>),
    Zstd(zstd::stream::write::Decoder<'static, Capped>),
    /// Finished, or failed: a decoder that failed is not fed again.
    Done,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("coding", &self.coding)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// The size of the pieces a decoder's output is collected in.
const PIECE: usize = 64 * 1024;

/// The decoders' sink: collects output until it is taken, and fails a write that would take the
/// total past `max`, so the decoder stops there.
///
/// Output goes into fixed pieces rather than one growing buffer: a small input can expand a
/// thousandfold, and a doubling buffer would briefly hold half as much again (and copy it).
#[derive(Debug)]
struct Capped {
    done: Vec<Bytes>,
    piece: Vec<u8>,
    total: u64,
    max: u64,
    over: bool,
}

impl Capped {
    fn take(&mut self) -> Vec<Bytes> {
        if !self.piece.is_empty() {
            let piece = std::mem::take(&mut self.piece);
            self.done.push(Bytes::from(piece));
        }
        std::mem::take(&mut self.done)
    }
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
        if self.total.saturating_add(n) > self.max {
            self.over = true;
            return Err(io::Error::other("the decompressed body passed the cap"));
        }
        self.total += n;
        let mut rest = data;
        while !rest.is_empty() {
            if self.piece.capacity() == 0 {
                self.piece.reserve_exact(PIECE);
            }
            let room = self.piece.capacity() - self.piece.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.piece.extend_from_slice(now);
            rest = later;
            if self.piece.len() == self.piece.capacity() {
                let full = std::mem::take(&mut self.piece);
                self.done.push(Bytes::from(full));
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Decoder {
    /// A decoder for `coding` that fails once its output passes `max` bytes.
    pub fn new(coding: ContentCoding, max: u64) -> Result<Decoder, CodecError> {
        let sink = Capped {
            done: Vec::new(),
            piece: Vec::new(),
            total: 0,
            max,
            over: false,
        };
        let inner = match coding {
            ContentCoding::Gzip => Dec::Gzip(flate2::write::MultiGzDecoder::new(sink)),
            ContentCoding::Br => {
                Dec::Br(Box::new(brotli::DecompressorWriter::new(sink, BR_BUFFER)))
            }
            ContentCoding::Zstd => {
                let mut d = zstd::stream::write::Decoder::new(sink)
                    .map_err(|source| encode_error(coding, source))?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(|source| encode_error(coding, source))?;
                Dec::Zstd(d)
            }
        };
        Ok(Decoder { coding, max, inner })
    }

    /// Decompresses `data`: all the output it makes available now, in pieces of at most 64 KiB
    /// (possibly none).
    pub fn decompress(&mut self, data: &[u8]) -> Result<Vec<Bytes>, CodecError> {
        let res = match &mut self.inner {
            Dec::Gzip(d) => write_flush(d, data),
            Dec::Br(d) => write_flush(&mut **d, data),
            Dec::Zstd(d) => write_flush(d, data),
            Dec::Done => return Ok(Vec::new()),
        };
        match res {
            Ok(()) => Ok(self.take()),
            Err(source) => Err(self.fail(source)),
        }
    }

    /// The input ended: the last output, or an error if the input stopped inside the stream.
    pub fn finish(&mut self) -> Result<Vec<Bytes>, CodecError> {
        let res = match &mut self.inner {
            Dec::Gzip(d) => d.try_finish(),
            Dec::Br(d) => d.close(),
            Dec::Zstd(d) => d.do_finish(),
            Dec::Done => return Ok(Vec::new()),
        };
        match res {
            Ok(()) => {
                let out = self.take();
                self.inner = Dec::Done;
                Ok(out)
            }
            Err(source) => Err(self.fail(source)),
        }
    }

    fn sink(&mut self) -> Option<&mut Capped> {
        match &mut self.inner {
            Dec::Gzip(d) => Some(d.get_mut()),
            Dec::Br(d) => Some(d.get_mut()),
            Dec::Zstd(d) => Some(d.get_mut()),
            Dec::Done => None,
        }
    }

    fn take(&mut self) -> Vec<Bytes> {
        self.sink().map(Capped::take).unwrap_or_default()
    }

    /// Classifies a decoder error and retires the decoder (its output so far is dropped).
    fn fail(&mut self, source: io::Error) -> CodecError {
        let over = self.sink().is_some_and(|s| s.over);
        self.inner = Dec::Done;
        if over {
            CodecError::TooLarge { max: self.max }
        } else {
            CodecError::Corrupt {
                coding: self.coding.token(),
                source,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    const ALL: [ContentCoding; 3] = [ContentCoding::Gzip, ContentCoding::Br, ContentCoding::Zstd];

    /// Text that compresses, but not to nothing: JSON-ish lines with a counter.
    fn sample(n: usize) -> Vec<u8> {
        let mut s = Vec::new();
        let mut i = 0u64;
        while s.len() < n {
            s.extend_from_slice(
                format!(
                    "{{\"id\":{i},\"name\":\"item {}\",\"ok\":true}}\n",
                    i * 7919 % 1000
                )
                .as_bytes(),
            );
            i += 1;
        }
        s.truncate(n);
        s
    }

    fn joined(pieces: Vec<Bytes>) -> Vec<u8> {
        assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= PIECE));
        pieces.concat()
    }

    /// Decodes a whole stream with the crate's own reading decoders (not ours).
    fn reference_decode(coding: ContentCoding, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match coding {
            ContentCoding::Gzip => flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .map(drop),
            ContentCoding::Br => brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .map(drop),
            ContentCoding::Zstd => zstd::stream::read::Decoder::new(data)
                .and_then(|mut d| d.read_to_end(&mut out))
                .map(drop),
        }
        .expect("reference decoder");
        out
    }

    fn compress_all(coding: ContentCoding, data: &[u8]) -> Vec<u8> {
        let mut e = Encoder::new(coding, &CompressionLevels::default(), None).expect("encoder");
        let mut out = e.compress(data).expect("compress").to_vec();
        out.extend_from_slice(&e.finish().expect("finish"));
        out
    }

    #[test]
    fn each_coding_round_trips_through_the_reference_decoder_and_ours() {
        let input = sample(200_000);
        for coding in ALL {
            let mut e = Encoder::new(coding, &CompressionLevels::default(), None).expect("encoder");
            let mut wire = Vec::new();
            for chunk in input.chunks(7000) {
                wire.extend_from_slice(&e.compress(chunk).expect("compress"));
            }
            wire.extend_from_slice(&e.finish().expect("finish"));
            assert!(e.finish().expect("again").is_empty());
            assert!(
                wire.len() < input.len() / 4,
                "{coding:?}: {} -> {}",
                input.len(),
                wire.len()
            );
            assert_eq!(reference_decode(coding, &wire), input, "{coding:?}");

            let mut d = Decoder::new(coding, u64::MAX).expect("decoder");
            let mut back = Vec::new();
            for chunk in wire.chunks(1000) {
                back.extend(joined(d.decompress(chunk).expect("decompress")));
            }
            back.extend(joined(d.finish().expect("finish")));
            assert_eq!(back, input, "{coding:?}");
        }
    }

    #[test]
    fn every_flushed_prefix_decodes_to_all_input_so_far() {
        // Server-sent events: each event must reach the client whole, before the next exists.
        for coding in ALL {
            let mut e = Encoder::new(coding, &CompressionLevels::default(), None).expect("encoder");
            let mut d = Decoder::new(coding, u64::MAX).expect("decoder");
            for i in 0..20 {
                let event = format!("id: {i}\nevent: tick\ndata: {{\"n\":{i}}}\n\n");
                let wire = e.compress(event.as_bytes()).expect("compress");
                assert!(!wire.is_empty(), "{coding:?}: event {i} held back");
                let got = joined(d.decompress(&wire).expect("decompress"));
                assert_eq!(got, event.as_bytes(), "{coding:?}: event {i}");
            }
            let tail = e.finish().expect("finish");
            assert!(d.decompress(&tail).expect("tail").is_empty());
            assert!(d.finish().expect("end").is_empty());
        }
    }

    #[test]
    fn empty_input_makes_no_output_until_the_end() {
        for coding in ALL {
            let mut e = Encoder::new(coding, &CompressionLevels::default(), None).expect("encoder");
            assert!(e.compress(b"").expect("empty").is_empty());
            let all = e.finish().expect("finish");
            assert!(reference_decode(coding, &all).is_empty(), "{coding:?}");
        }
    }

    #[test]
    fn a_bomb_stops_at_the_cap_without_growing_past_it() {
        // 64 MiB of zeros compresses to a few KiB (gzip ~64 KiB, br and zstd far less).
        let zeros = vec![0u8; 64 << 20];
        for coding in ALL {
            let bomb = compress_all(coding, &zeros);
            assert!(bomb.len() < 128 << 10, "{coding:?}: {}", bomb.len());
            let cap = 1 << 20;
            let mut d = Decoder::new(coding, cap).expect("decoder");
            let mut seen = 0u64;
            let mut refused = None;
            for chunk in bomb.chunks(16 << 10) {
                match d.decompress(chunk) {
                    Ok(b) => {
                        seen += joined(b).len() as u64;
                        // Output is handed over chunk by chunk, never more than the cap in all.
                        assert!(seen <= cap, "{coding:?}: {seen}");
                    }
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            let e = refused.expect("the bomb is refused");
            assert!(
                matches!(e, CodecError::TooLarge { max } if max == cap),
                "{coding:?}: {e:?}"
            );
            // A retired decoder takes nothing more and does not pretend the body was complete.
            assert!(d.decompress(&bomb).expect("retired").is_empty());
        }
    }

    #[test]
    fn a_body_of_exactly_the_cap_passes() {
        let input = sample(50_000);
        for coding in ALL {
            let wire = compress_all(coding, &input);
            let mut d = Decoder::new(coding, input.len() as u64).expect("decoder");
            let mut back = joined(d.decompress(&wire).expect("decompress"));
            back.extend(joined(d.finish().expect("finish")));
            assert_eq!(back, input, "{coding:?}");
            let mut d = Decoder::new(coding, input.len() as u64 - 1).expect("decoder");
            let e = d
                .decompress(&wire)
                .and_then(|_| d.finish())
                .expect_err("one byte over");
            assert!(
                matches!(e, CodecError::TooLarge { .. }),
                "{coding:?}: {e:?}"
            );
        }
    }

    #[test]
    fn corrupt_truncated_and_trailing_garbage_are_refused() {
        let input = sample(20_000);
        for coding in ALL {
            let wire = compress_all(coding, &input);

            let mut d = Decoder::new(coding, u64::MAX).expect("decoder");
            let e = d
                .decompress(b"this is not compressed at all, not even a little")
                .and_then(|_| d.finish())
                .expect_err("garbage");
            assert!(
                matches!(e, CodecError::Corrupt { coding: c, .. } if c == coding.token()),
                "{coding:?}: {e:?}"
            );

            let mut d = Decoder::new(coding, u64::MAX).expect("decoder");
            d.decompress(&wire[..wire.len() - 5]).expect("a prefix");
            let e = d.finish().expect_err("truncated");
            assert!(matches!(e, CodecError::Corrupt { .. }), "{coding:?}: {e:?}");

            let mut spoilt = wire.clone();
            spoilt.extend_from_slice(b"trailing junk");
            let mut d = Decoder::new(coding, u64::MAX).expect("decoder");
            let e = d
                .decompress(&spoilt)
                .and_then(|_| d.finish())
                .expect_err("trailing garbage");
            assert!(matches!(e, CodecError::Corrupt { .. }), "{coding:?}: {e:?}");
        }
    }

    #[test]
    fn a_known_length_is_a_hint_and_a_wrong_one_fails_cleanly() {
        let input = sample(10_240);
        for coding in ALL {
            let levels = CompressionLevels::default();
            let mut e = Encoder::new(coding, &levels, Some(input.len() as u64)).expect("encoder");
            let mut wire = Vec::new();
            for chunk in input.chunks(4096) {
                wire.extend_from_slice(&e.compress(chunk).expect("compress"));
            }
            wire.extend_from_slice(&e.finish().expect("finish"));
            assert_eq!(reference_decode(coding, &wire), input, "{coding:?}");
        }
        // zstd holds the body to its declared length: a body that falls short is an error, not
        // a frame that claims a length it does not have.
        let mut e = Encoder::new(
            ContentCoding::Zstd,
            &CompressionLevels::default(),
            Some(100),
        )
        .expect("encoder");
        e.compress(b"short").expect("compress");
        assert!(matches!(e.finish(), Err(CodecError::Encode { .. })));
        let mut e = Encoder::new(ContentCoding::Zstd, &CompressionLevels::default(), Some(2))
            .expect("encoder");
        let long = e.compress(b"longer than two").and_then(|_| e.finish());
        assert!(matches!(long, Err(CodecError::Encode { .. })), "{long:?}");
    }

    #[test]
    fn concatenated_gzip_members_decode_as_one_body() {
        let mut wire = compress_all(ContentCoding::Gzip, b"first part, ");
        wire.extend_from_slice(&compress_all(ContentCoding::Gzip, b"second part"));
        let mut d = Decoder::new(ContentCoding::Gzip, 1000).expect("decoder");
        let mut back = joined(d.decompress(&wire).expect("decompress"));
        back.extend(joined(d.finish().expect("finish")));
        assert_eq!(back, b"first part, second part");
    }

    #[test]
    fn a_zstd_frame_asking_for_a_huge_window_is_refused() {
        // A frame whose header declares a 2^27 window (128 MiB): an RFC 9659 decoder refuses it
        // instead of allocating the window.
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
        e.window_log(27).expect("window");
        e.write_all(&sample(1 << 20)).expect("write");
        let wire = e.finish().expect("finish");
        let mut d = Decoder::new(ContentCoding::Zstd, u64::MAX).expect("decoder");
        let e = d
            .decompress(&wire)
            .and_then(|_| d.finish())
            .expect_err("window too large");
        assert!(matches!(e, CodecError::Corrupt { .. }), "{e:?}");
    }

    #[test]
    fn every_level_in_the_documented_range_builds_and_round_trips() {
        for (coding, least, most) in frontdesk_config::COMPRESSION_LEVELS {
            for level in least..=most {
                let mut levels = CompressionLevels::default();
                match coding {
                    ContentCoding::Gzip => levels.gzip = level as u32,
                    ContentCoding::Br => levels.br = level as u32,
                    ContentCoding::Zstd => levels.zstd = level,
                }
                let mut e = Encoder::new(coding, &levels, None).expect("encoder");
                let mut wire = e.compress(b"hello hello hello").expect("c").to_vec();
                wire.extend_from_slice(&e.finish().expect("f"));
                assert_eq!(
                    reference_decode(coding, &wire),
                    b"hello hello hello",
                    "{coding:?} {level}"
                );
            }
        }
    }
}
