//! The codecs of the `compression` plugin: a streaming [`Encoder`] flushed after every chunk, so
//! each output chunk together with those before it decodes to all the input so far, and a
//! pull-style [`Decoder`] whose output comes in bounded steps and is capped, so a decompression
//! bomb neither grows memory (one step at a time, as the body is read) nor passes the cap.
//!
//! Both run inside a body's poll. The encoder is a synchronous writer into a `Vec` that is taken
//! after every chunk: its work is proportional to the chunk. The decoder holds its input and
//! makes at most [`STEP`] bytes per call: its work is proportional to the step. The crates:
//! `flate2` (gzip: its raw `Decompress` on the pure-Rust miniz_oxide backend, the gzip framing
//! here), `brotli` (rust-brotli's streaming state, safe Rust), `zstd` (the reference C library's
//! streaming decoder).

use std::io::{self, Write};

use bytes::{Buf, Bytes};
use frontdesk_config::{CompressionLevels, ContentCoding};

/// Brotli's window for responses: 2^20 bytes (1 MiB). The ring buffer grows to it only for
/// bodies that long; the default 4 MiB (2^22) would cost more per stream for little gain.
const BR_LGWIN: u32 = 20;
/// The size of the brotli encoder's internal output buffer.
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

/// A pull-style decompressor for one body, whose total output is capped.
///
/// Input is handed over whole ([`decompress`](Self::decompress)) and held; output comes out a
/// step at a time, at most [`STEP`] bytes per step ([`more`](Self::more)), so what is in memory
/// at once is the held input, one step and the coding's own state (its window), however far
/// the input expands. A step that takes the output past the cap fails: a bomb stops there.
pub struct Decoder {
    coding: ContentCoding,
    max: u64,
    /// Output so far.
    total: u64,
    /// Input handed over and not decoded yet.
    input: Bytes,
    /// The last step ended for want of input (not of room): nothing more comes without more.
    drained: bool,
    inner: Dec,
}

enum Dec {
    Gzip(Box<Gzip>),
    // Boxed: the brotli state is a few KiB inline.
    Br(Box<Brotli>),
    Zstd(Zstd),
    /// Finished, or failed: a decoder that failed is not fed again.
    Done,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("coding", &self.coding)
            .field("max", &self.max)
            .field("total", &self.total)
            .field("held", &self.input.len())
            .finish_non_exhaustive()
    }
}

/// The most output one decoder step makes.
pub const STEP: usize = 64 * 1024;

impl Decoder {
    /// A decoder for `coding` that fails once its output passes `max` bytes.
    pub fn new(coding: ContentCoding, max: u64) -> Result<Decoder, CodecError> {
        let inner = match coding {
            ContentCoding::Gzip => Dec::Gzip(Box::new(Gzip::new())),
            ContentCoding::Br => Dec::Br(Box::new(Brotli::new())),
            ContentCoding::Zstd => {
                Dec::Zstd(Zstd::new().map_err(|source| encode_error(coding, source))?)
            }
        };
        Ok(Decoder {
            coding,
            max,
            total: 0,
            input: Bytes::new(),
            drained: false,
            inner,
        })
    }

    /// Takes `data` to decode and makes the first step of output from it (see
    /// [`more`](Self::more) for the rest).
    pub fn decompress(&mut self, data: Bytes) -> Result<Option<Bytes>, CodecError> {
        if matches!(self.inner, Dec::Done) {
            return Ok(None);
        }
        if !data.is_empty() {
            self.drained = false;
            if self.input.is_empty() {
                self.input = data;
            } else {
                // Only when the caller did not take every step: the input held is a rest.
                let mut both = Vec::with_capacity(self.input.len() + data.len());
                both.extend_from_slice(&self.input);
                both.extend_from_slice(&data);
                self.input = Bytes::from(both);
            }
        }
        self.more()
    }

    /// The next step of output from the input held: at most [`STEP`] bytes, or `None` when
    /// there is no more until more input comes (or at all, once the stream is complete).
    pub fn more(&mut self) -> Result<Option<Bytes>, CodecError> {
        if matches!(self.inner, Dec::Done) || (self.drained && self.input.is_empty()) {
            return Ok(None);
        }
        // One byte past the cap is enough to know the body is over it.
        let room = usize::try_from(self.max.saturating_sub(self.total).saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(STEP);
        let mut buf = vec![0u8; room];
        let mut filled = 0;
        loop {
            let step = match &mut self.inner {
                Dec::Gzip(d) => d.run(&self.input, &mut buf[filled..]),
                Dec::Br(d) => d.run(&self.input, &mut buf[filled..]),
                Dec::Zstd(d) => d.run(&self.input, &mut buf[filled..]),
                Dec::Done => return Ok(None),
            };
            let (used, made) = match step {
                Ok(step) => step,
                Err(source) => return Err(self.corrupt(source)),
            };
            self.input.advance(used);
            filled += made;
            if filled == room {
                break;
            }
            if used == 0 && made == 0 {
                self.drained = true;
                break;
            }
        }
        if filled == 0 {
            if !self.input.is_empty() {
                // Every codec takes input while it has room for output or fails: input left
                // over here is a decoder that would otherwise hold it forever.
                let stuck = io::Error::other("the decoder stopped taking input");
                return Err(self.corrupt(stuck));
            }
            return Ok(None);
        }
        self.total += filled as u64;
        if self.total > self.max {
            self.inner = Dec::Done;
            self.input = Bytes::new();
            return Err(CodecError::TooLarge { max: self.max });
        }
        buf.truncate(filled);
        Ok(Some(Bytes::from(buf)))
    }

    /// The input ended (after [`more`](Self::more) returned `None`): an error if it stopped
    /// inside the stream. The decoder takes nothing more afterwards.
    pub fn finish(&mut self) -> Result<(), CodecError> {
        let complete = match &self.inner {
            Dec::Gzip(d) => d.complete(),
            Dec::Br(d) => d.done,
            Dec::Zstd(d) => d.finished_frame,
            Dec::Done => return Ok(()),
        };
        if !complete || !self.input.is_empty() {
            let eof = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the body ended inside the compressed stream",
            );
            return Err(self.corrupt(eof));
        }
        self.inner = Dec::Done;
        Ok(())
    }

    /// Retires the decoder for input that does not decode.
    fn corrupt(&mut self, source: io::Error) -> CodecError {
        self.inner = Dec::Done;
        self.input = Bytes::new();
        CodecError::Corrupt {
            coding: self.coding.token(),
            source,
        }
    }
}

/// gzip (RFC 1952): members one after the other, each a header, a raw deflate stream (flate2's
/// `Decompress`) and a trailer with the CRC-32 and length of its data.
struct Gzip {
    inflate: flate2::Decompress,
    /// CRC-32 and length of the current member's output.
    crc: flate2::Crc,
    stage: GzStage,
}

enum GzStage {
    Header(GzHeader),
    Body,
    /// The 8 trailer bytes, and how many arrived.
    Trailer([u8; 8], usize),
    /// A member ended: the input may end here, or another member start.
    Between,
}

impl Gzip {
    fn new() -> Gzip {
        Gzip {
            inflate: flate2::Decompress::new(false),
            crc: flate2::Crc::new(),
            stage: GzStage::Header(GzHeader::default()),
        }
    }

    /// True after a whole member, before another starts.
    fn complete(&self) -> bool {
        matches!(self.stage, GzStage::Between)
    }

    /// Decodes from `input` into `out`: (input bytes used, output bytes made).
    fn run(&mut self, input: &[u8], out: &mut [u8]) -> io::Result<(usize, usize)> {
        let (mut used, mut made) = (0, 0);
        loop {
            let rest = &input[used..];
            match &mut self.stage {
                GzStage::Between => {
                    if rest.is_empty() {
                        return Ok((used, made));
                    }
                    self.inflate.reset(false);
                    self.crc.reset();
                    self.stage = GzStage::Header(GzHeader::default());
                }
                GzStage::Header(h) => {
                    let (n, done) = h.parse(rest)?;
                    used += n;
                    if !done {
                        return Ok((used, made));
                    }
                    self.stage = GzStage::Body;
                }
                GzStage::Body => {
                    if made == out.len() {
                        return Ok((used, made));
                    }
                    let (was_in, was_out) = (self.inflate.total_in(), self.inflate.total_out());
                    let status = self.inflate.decompress(
                        rest,
                        &mut out[made..],
                        flate2::FlushDecompress::None,
                    )?;
                    let n_in = usize::try_from(self.inflate.total_in() - was_in)
                        .map_err(io::Error::other)?;
                    let n_out = usize::try_from(self.inflate.total_out() - was_out)
                        .map_err(io::Error::other)?;
                    self.crc.update(&out[made..made + n_out]);
                    used += n_in;
                    made += n_out;
                    if status != flate2::Status::StreamEnd {
                        return Ok((used, made));
                    }
                    self.stage = GzStage::Trailer([0; 8], 0);
                }
                GzStage::Trailer(buf, got) => {
                    let n = (8 - *got).min(rest.len());
                    buf[*got..*got + n].copy_from_slice(&rest[..n]);
                    *got += n;
                    used += n;
                    if *got < 8 {
                        return Ok((used, made));
                    }
                    let [c0, c1, c2, c3, l0, l1, l2, l3] = *buf;
                    if u32::from_le_bytes([c0, c1, c2, c3]) != self.crc.sum()
                        || u32::from_le_bytes([l0, l1, l2, l3]) != self.crc.amount()
                    {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the gzip trailer does not match the data",
                        ));
                    }
                    self.stage = GzStage::Between;
                }
            }
        }
    }
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const FRESERVED: u8 = 0xe0;

/// A gzip member header, parsed as it arrives. Its variable parts (extra field, name, comment)
/// are skipped, never held: they can be as long as the client likes.
#[derive(Default)]
struct GzHeader {
    field: HeaderField,
    /// The fixed part, then the 2-byte lengths and CRC, as they arrive.
    buf: [u8; 10],
    got: usize,
    flags: u8,
    /// Extra-field bytes still to skip.
    extra_left: usize,
    /// CRC-32 of the header so far (its low 16 bits are checked when `FHCRC` is set).
    crc: flate2::Crc,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum HeaderField {
    #[default]
    Fixed,
    ExtraLen,
    Extra,
    Name,
    Comment,
    Crc,
}

impl GzHeader {
    /// Parses from `input`: (bytes used, whether the header is complete).
    fn parse(&mut self, input: &[u8]) -> io::Result<(usize, bool)> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.field {
                HeaderField::Fixed | HeaderField::ExtraLen | HeaderField::Crc => {
                    let want = if self.field == HeaderField::Fixed {
                        10
                    } else {
                        2
                    };
                    let n = (want - self.got).min(rest.len());
                    self.buf[self.got..self.got + n].copy_from_slice(&rest[..n]);
                    self.got += n;
                    used += n;
                    if self.got < want {
                        return Ok((used, false));
                    }
                    self.got = 0;
                    match self.field {
                        HeaderField::Fixed => {
                            let b = &self.buf;
                            if b[0] != 0x1f || b[1] != 0x8b || b[2] != 8 || b[3] & FRESERVED != 0 {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "not a gzip member header",
                                ));
                            }
                            self.flags = b[3];
                            self.crc.update(&self.buf);
                            self.field = if self.flags & FEXTRA != 0 {
                                HeaderField::ExtraLen
                            } else {
                                HeaderField::Name
                            };
                        }
                        HeaderField::ExtraLen => {
                            self.crc.update(&self.buf[..2]);
                            self.extra_left =
                                usize::from(u16::from_le_bytes([self.buf[0], self.buf[1]]));
                            self.field = HeaderField::Extra;
                        }
                        _ => {
                            let stored = u16::from_le_bytes([self.buf[0], self.buf[1]]);
                            if u32::from(stored) != self.crc.sum() & 0xffff {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "the gzip header CRC does not match",
                                ));
                            }
                            return Ok((used, true));
                        }
                    }
                }
                HeaderField::Extra => {
                    let n = self.extra_left.min(rest.len());
                    self.crc.update(&rest[..n]);
                    self.extra_left -= n;
                    used += n;
                    if self.extra_left > 0 {
                        return Ok((used, false));
                    }
                    self.field = HeaderField::Name;
                }
                HeaderField::Name | HeaderField::Comment => {
                    let flag = if self.field == HeaderField::Name {
                        FNAME
                    } else {
                        FCOMMENT
                    };
                    if self.flags & flag != 0 {
                        // Zero-terminated.
                        let Some(end) = rest.iter().position(|&b| b == 0) else {
                            self.crc.update(rest);
                            return Ok((input.len(), false));
                        };
                        self.crc.update(&rest[..=end]);
                        used += end + 1;
                    }
                    if self.field == HeaderField::Comment {
                        if self.flags & FHCRC == 0 {
                            return Ok((used, true));
                        }
                        self.field = HeaderField::Crc;
                    } else {
                        self.field = HeaderField::Comment;
                    }
                }
            }
        }
    }
}

type BrotliState = brotli::BrotliState<
    brotli::enc::StandardAlloc,
    brotli::enc::StandardAlloc,
    brotli::enc::StandardAlloc,
>;

/// brotli (RFC 7932), with rust-brotli's streaming state.
struct Brotli {
    state: BrotliState,
    /// The stream is complete: any input after it is an error.
    done: bool,
}

impl Brotli {
    fn new() -> Brotli {
        let alloc = brotli::enc::StandardAlloc::default;
        // Strict: RFC 7932 windows only (at most 16 MiB); the large-window extension, which
        // would let a stream ask for a 1 GiB ring buffer, is refused.
        Brotli {
            state: BrotliState::new_strict(alloc(), alloc(), alloc()),
            done: false,
        }
    }

    fn run(&mut self, input: &[u8], out: &mut [u8]) -> io::Result<(usize, usize)> {
        if self.done {
            return if input.is_empty() {
                Ok((0, 0))
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "data after the end of the brotli stream",
                ))
            };
        }
        let (mut avail_in, mut used) = (input.len(), 0);
        let (mut avail_out, mut made, mut total) = (out.len(), 0, 0);
        let result = brotli::BrotliDecompressStream(
            &mut avail_in,
            &mut used,
            input,
            &mut avail_out,
            &mut made,
            out,
            &mut total,
            &mut self.state,
        );
        match result {
            brotli::BrotliResult::ResultSuccess => self.done = true,
            brotli::BrotliResult::NeedsMoreInput | brotli::BrotliResult::NeedsMoreOutput => {}
            brotli::BrotliResult::ResultFailure => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "invalid brotli data",
                ))
            }
        }
        Ok((used, made))
    }
}

/// zstd (RFC 8878): frames one after the other, with the window capped at
/// [`ZSTD_WINDOW_LOG_MAX`].
struct Zstd {
    dec: zstd::stream::raw::Decoder<'static>,
    /// The last frame ended (and nothing of the next one came yet).
    finished_frame: bool,
}

impl Zstd {
    fn new() -> io::Result<Zstd> {
        let mut dec = zstd::stream::raw::Decoder::new()?;
        dec.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(
            ZSTD_WINDOW_LOG_MAX,
        ))?;
        Ok(Zstd {
            dec,
            finished_frame: false,
        })
    }

    fn run(&mut self, input: &[u8], out: &mut [u8]) -> io::Result<(usize, usize)> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        if self.finished_frame {
            if input.is_empty() {
                return Ok((0, 0));
            }
            // Another frame: the context starts over (its parameters stay).
            self.dec.reinit()?;
            self.finished_frame = false;
        }
        let mut src = InBuffer::around(input);
        let mut dst = OutBuffer::around(out);
        let hint = self.dec.run(&mut src, &mut dst)?;
        // 0: the frame is complete and all its output written.
        if hint == 0 {
            self.finished_frame = true;
        }
        Ok((src.pos(), dst.pos()))
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

    /// Hands `data` to the decoder and takes every step of output it makes from it.
    fn feed(d: &mut Decoder, data: &[u8]) -> Result<Vec<Bytes>, CodecError> {
        let mut out = Vec::new();
        let mut step = d.decompress(Bytes::copy_from_slice(data))?;
        while let Some(s) = step {
            out.push(s);
            step = d.more()?;
        }
        Ok(out)
    }

    /// Ends the input (the decoder makes no output there: every step was taken).
    fn end(d: &mut Decoder) -> Result<Vec<Bytes>, CodecError> {
        d.finish().map(|()| Vec::new())
    }

    fn joined(pieces: Vec<Bytes>) -> Vec<u8> {
        assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= STEP));
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
                back.extend(joined(feed(&mut d, chunk).expect("decompress")));
            }
            back.extend(joined(end(&mut d).expect("finish")));
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
                let got = joined(feed(&mut d, &wire).expect("decompress"));
                assert_eq!(got, event.as_bytes(), "{coding:?}: event {i}");
            }
            let tail = e.finish().expect("finish");
            assert!(feed(&mut d, &tail).expect("tail").is_empty());
            assert!(end(&mut d).expect("end").is_empty());
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
                match feed(&mut d, chunk) {
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
            assert!(feed(&mut d, &bomb).expect("retired").is_empty());
        }
    }

    #[test]
    fn a_body_of_exactly_the_cap_passes() {
        let input = sample(50_000);
        for coding in ALL {
            let wire = compress_all(coding, &input);
            let mut d = Decoder::new(coding, input.len() as u64).expect("decoder");
            let mut back = joined(feed(&mut d, &wire).expect("decompress"));
            back.extend(joined(end(&mut d).expect("finish")));
            assert_eq!(back, input, "{coding:?}");
            let mut d = Decoder::new(coding, input.len() as u64 - 1).expect("decoder");
            let e = feed(&mut d, &wire)
                .and_then(|_| end(&mut d))
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
            let e = feed(&mut d, b"this is not compressed at all, not even a little")
                .and_then(|_| end(&mut d))
                .expect_err("garbage");
            assert!(
                matches!(e, CodecError::Corrupt { coding: c, .. } if c == coding.token()),
                "{coding:?}: {e:?}"
            );

            let mut d = Decoder::new(coding, u64::MAX).expect("decoder");
            feed(&mut d, &wire[..wire.len() - 5]).expect("a prefix");
            let e = end(&mut d).expect_err("truncated");
            assert!(matches!(e, CodecError::Corrupt { .. }), "{coding:?}: {e:?}");

            let mut spoilt = wire.clone();
            spoilt.extend_from_slice(b"trailing junk");
            let mut d = Decoder::new(coding, u64::MAX).expect("decoder");
            let e = feed(&mut d, &spoilt)
                .and_then(|_| end(&mut d))
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
    fn one_small_input_comes_out_in_steps_of_at_most_64_kib() {
        // 16 MiB of zeros in a few KiB: handed over at once, it comes out one step at a time,
        // and only as the steps are taken.
        let zeros = vec![0u8; 16 << 20];
        for coding in ALL {
            let wire = compress_all(coding, &zeros);
            assert!(wire.len() < 32 << 10, "{coding:?}: {}", wire.len());
            let mut d = Decoder::new(coding, u64::MAX).expect("decoder");
            let mut step = d.decompress(Bytes::from(wire)).expect("first step");
            let (mut steps, mut total) = (0u64, 0u64);
            while let Some(s) = step {
                assert!(!s.is_empty() && s.len() <= STEP, "{coding:?}: {}", s.len());
                assert!(s.iter().all(|&b| b == 0), "{coding:?}");
                steps += 1;
                total += s.len() as u64;
                step = d.more().expect("step");
            }
            assert_eq!(total, zeros.len() as u64, "{coding:?}");
            assert!(steps >= total / STEP as u64, "{coding:?}: {steps} steps");
            d.finish().expect("complete");
            assert!(d.more().expect("done").is_none());
        }
    }

    /// A gzip member by hand: a header with every optional field (`extra`, a name, a comment,
    /// the header CRC, right or not), raw deflate, and a trailer (right or not).
    fn gzip_member(data: &[u8], header_crc_ok: bool, trailer_ok: bool) -> Vec<u8> {
        let mut m = vec![
            0x1f,
            0x8b,
            8,
            FEXTRA | FNAME | FCOMMENT | FHCRC,
            0,
            0,
            0,
            0,
            0,
            255,
        ];
        m.extend_from_slice(&5u16.to_le_bytes());
        m.extend_from_slice(b"extra");
        m.extend_from_slice(b"name.json\0a comment\0");
        let mut crc = flate2::Crc::new();
        crc.update(&m);
        let hcrc = (crc.sum() & 0xffff) as u16 ^ u16::from(!header_crc_ok);
        m.extend_from_slice(&hcrc.to_le_bytes());
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("deflate");
        m.extend_from_slice(&e.finish().expect("deflate"));
        let mut crc = flate2::Crc::new();
        crc.update(data);
        m.extend_from_slice(&(crc.sum() ^ u32::from(!trailer_ok)).to_le_bytes());
        m.extend_from_slice(&crc.amount().to_le_bytes());
        m
    }

    #[test]
    fn gzip_headers_with_every_field_parse_byte_by_byte_and_bad_crcs_are_refused() {
        let input = sample(5_000);
        let wire = gzip_member(&input, true, true);
        assert_eq!(reference_decode(ContentCoding::Gzip, &wire), input);
        let mut d = Decoder::new(ContentCoding::Gzip, u64::MAX).expect("decoder");
        let mut back = Vec::new();
        for b in &wire {
            back.extend(joined(feed(&mut d, std::slice::from_ref(b)).expect("byte")));
        }
        end(&mut d).expect("complete");
        assert_eq!(back, input);

        for (header_ok, trailer_ok) in [(false, true), (true, false)] {
            let wire = gzip_member(&input, header_ok, trailer_ok);
            let mut d = Decoder::new(ContentCoding::Gzip, u64::MAX).expect("decoder");
            let e = feed(&mut d, &wire)
                .and_then(|_| end(&mut d))
                .expect_err("bad crc");
            assert!(
                matches!(e, CodecError::Corrupt { coding: "gzip", .. }),
                "{header_ok} {trailer_ok}: {e:?}"
            );
        }
    }

    #[test]
    fn an_empty_body_is_not_a_stream_of_any_coding() {
        for coding in ALL {
            let mut d = Decoder::new(coding, u64::MAX).expect("decoder");
            assert!(feed(&mut d, b"").expect("nothing").is_empty());
            let e = end(&mut d).expect_err("empty");
            assert!(matches!(e, CodecError::Corrupt { .. }), "{coding:?}: {e:?}");
        }
    }

    #[test]
    fn concatenated_gzip_members_decode_as_one_body() {
        let mut wire = compress_all(ContentCoding::Gzip, b"first part, ");
        wire.extend_from_slice(&compress_all(ContentCoding::Gzip, b"second part"));
        let mut d = Decoder::new(ContentCoding::Gzip, 1000).expect("decoder");
        let mut back = joined(feed(&mut d, &wire).expect("decompress"));
        back.extend(joined(end(&mut d).expect("finish")));
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
        let e = feed(&mut d, &wire)
            .and_then(|_| end(&mut d))
            .expect_err("window too large");
        assert!(matches!(e, CodecError::Corrupt { .. }), "{e:?}");
    }

    #[test]
    fn a_large_window_brotli_stream_is_refused() {
        // The large-window extension (not RFC 7932) lets a stream ask for up to a 1 GiB ring
        // buffer: valid to a lenient decoder, refused here.
        let params = brotli::enc::BrotliEncoderParams {
            quality: 1,
            lgwin: 26,
            large_window: true,
            ..Default::default()
        };
        let plain = sample(100_000);
        let mut wire = Vec::new();
        brotli::enc::BrotliCompress(&mut plain.as_slice(), &mut wire, &params).expect("encode");
        assert_eq!(reference_decode(ContentCoding::Br, &wire), plain);
        let mut d = Decoder::new(ContentCoding::Br, u64::MAX).expect("decoder");
        let e = feed(&mut d, &wire)
            .and_then(|_| end(&mut d))
            .expect_err("large window");
        assert!(
            matches!(e, CodecError::Corrupt { coding: "br", .. }),
            "{e:?}"
        );
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
