//! Layer compression in one streaming pass, and decompression by magic bytes.
//!
//! [`LayerWriter`] takes the uncompressed tar, hashes it (the diff id), compresses it and hashes and
//! counts what it writes (the blob digest and size), all while streaming.
//!
//! gzip is written as a multi-member stream: the input is cut into fixed 1 MiB chunks, each chunk is
//! compressed into its own complete gzip member on rayon, and the members are concatenated in order
//! (RFC 1952 allows several members; `gzip -d`, Go's `compress/gzip` and flate2's `MultiGzDecoder`
//! read them as one stream). The chunking depends only on the input, never on the number of threads,
//! so the same layer always gives the same blob digest — whether it is compressed on one core or many.
//! A layer under 1 MiB is one ordinary gzip member. Every member has mtime 0 and OS byte 255.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use flate2::GzBuilder;
use kiln_image::{Digest, StreamCompression};
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use crate::diff::{DiffError, DiffOptions, write_layer_tar};

/// Size of the uncompressed chunk behind each gzip member.
pub const GZIP_CHUNK_SIZE: usize = 1 << 20;

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Uncompressed,
    /// gzip, level 0–9 (1 is fastest; 6 is gzip's default).
    Gzip {
        level: u32,
    },
    /// zstd, level 1–22 (3 is zstd's default).
    Zstd {
        level: i32,
    },
}

/// The digests of a layer written by [`LayerWriter`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDigests {
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// sha256 of the blob as written (equal to `diff_id` when uncompressed).
    pub blob_digest: Digest,
    /// Size of the blob as written.
    pub size: u64,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("reading the layer tar: {0}")]
    Read(#[source] io::Error),
    #[error("writing the compressed layer: {0}")]
    Write(#[source] io::Error),
    #[error(transparent)]
    Diff(#[from] DiffError),
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Multi-member gzip with members compressed in parallel (see the module doc).
struct ParallelGzip<W: Write> {
    out: W,
    level: u32,
    current: Vec<u8>,
    full_chunks: Vec<Vec<u8>>,
    chunks_per_batch: usize,
    pool: Option<Arc<rayon::ThreadPool>>,
    members_written: u64,
}

fn gzip_member(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut encoder = GzBuilder::new().mtime(0).operating_system(255).write(
        Vec::with_capacity(data.len() / 2 + 64),
        flate2::Compression::new(level),
    );
    encoder.write_all(data)?;
    encoder.finish()
}

impl<W: Write> ParallelGzip<W> {
    fn new(out: W, level: u32, pool: Option<Arc<rayon::ThreadPool>>) -> ParallelGzip<W> {
        let threads = pool
            .as_ref()
            .map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
        ParallelGzip {
            out,
            level: level.min(9),
            current: Vec::with_capacity(GZIP_CHUNK_SIZE),
            full_chunks: Vec::new(),
            chunks_per_batch: (threads * 2).max(2),
            pool,
            members_written: 0,
        }
    }

    fn compress_batch(&mut self) -> io::Result<()> {
        if self.full_chunks.is_empty() {
            return Ok(());
        }
        let level = self.level;
        let chunks = std::mem::take(&mut self.full_chunks);
        let compress = || -> Vec<io::Result<Vec<u8>>> {
            chunks
                .par_iter()
                .map(|chunk| gzip_member(chunk, level))
                .collect()
        };
        let members = match &self.pool {
            Some(pool) => pool.install(compress),
            None => compress(),
        };
        for member in members {
            self.out.write_all(&member?)?;
            self.members_written += 1;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        // An empty input still gives one (empty) member, so the output is a valid gzip file.
        if !self.current.is_empty() || self.members_written == 0 && self.full_chunks.is_empty() {
            let last = std::mem::take(&mut self.current);
            self.full_chunks.push(last);
        }
        self.compress_batch()?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = GZIP_CHUNK_SIZE - self.current.len();
        let n = room.min(buf.len());
        self.current.extend_from_slice(&buf[..n]);
        if self.current.len() == GZIP_CHUNK_SIZE {
            let full = std::mem::replace(&mut self.current, Vec::with_capacity(GZIP_CHUNK_SIZE));
            self.full_chunks.push(full);
            if self.full_chunks.len() >= self.chunks_per_batch {
                self.compress_batch()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Members are only complete at chunk boundaries; flushing mid-chunk would change the output.
        self.out.flush()
    }
}

enum Encoder<W: Write> {
    Plain(HashingWriter<W>),
    Gzip(ParallelGzip<HashingWriter<W>>),
    Zstd(zstd::Encoder<'static, HashingWriter<W>>),
}

/// Compresses an uncompressed layer tar written into it, computing diff id and blob digest on the way.
pub struct LayerWriter<W: Write> {
    encoder: Encoder<W>,
    diff_hasher: Sha256,
    uncompressed_size: u64,
}

impl<W: Write> LayerWriter<W> {
    /// A writer compressing into `out`; gzip uses rayon's global pool.
    ///
    /// # Errors
    /// zstd initialisation errors.
    pub fn new(compression: Compression, out: W) -> io::Result<LayerWriter<W>> {
        Self::with_pool(compression, out, None)
    }

    /// A writer whose gzip members are compressed on `pool` (or rayon's global pool when `None`).
    ///
    /// # Errors
    /// zstd initialisation errors.
    pub fn with_pool(
        compression: Compression,
        out: W,
        pool: Option<Arc<rayon::ThreadPool>>,
    ) -> io::Result<LayerWriter<W>> {
        let hashing = HashingWriter {
            inner: out,
            hasher: Sha256::new(),
            written: 0,
        };
        let encoder = match compression {
            Compression::Uncompressed => Encoder::Plain(hashing),
            Compression::Gzip { level } => Encoder::Gzip(ParallelGzip::new(hashing, level, pool)),
            Compression::Zstd { level } => Encoder::Zstd(zstd::Encoder::new(hashing, level)?),
        };
        Ok(LayerWriter {
            encoder,
            diff_hasher: Sha256::new(),
            uncompressed_size: 0,
        })
    }

    /// Ends the compressed stream and returns the output with the layer's digests.
    ///
    /// # Errors
    /// Write errors of the output or the compressor.
    pub fn finish(self) -> io::Result<(W, LayerDigests)> {
        let hashing = match self.encoder {
            Encoder::Plain(mut hashing) => {
                hashing.flush()?;
                hashing
            }
            Encoder::Gzip(gzip) => gzip.finish()?,
            Encoder::Zstd(zstd) => {
                let mut hashing = zstd.finish()?;
                hashing.flush()?;
                hashing
            }
        };
        let digests = LayerDigests {
            diff_id: Digest::from_hasher(self.diff_hasher),
            blob_digest: Digest::from_hasher(hashing.hasher),
            size: hashing.written,
            uncompressed_size: self.uncompressed_size,
        };
        Ok((hashing.inner, digests))
    }
}

impl<W: Write> Write for LayerWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.encoder {
            Encoder::Plain(w) => w.write(buf)?,
            Encoder::Gzip(w) => w.write(buf)?,
            Encoder::Zstd(w) => w.write(buf)?,
        };
        self.diff_hasher.update(&buf[..n]);
        self.uncompressed_size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.encoder {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

/// Compresses the uncompressed layer tar read from `tar` into `out` in one pass.
///
/// # Errors
/// [`CompressError::Read`] / [`CompressError::Write`] for I/O errors on either side.
pub fn compress_layer<R: Read, W: Write>(
    mut tar: R,
    compression: Compression,
    out: W,
) -> Result<(W, LayerDigests), CompressError> {
    let mut writer = LayerWriter::new(compression, out).map_err(CompressError::Write)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match tar.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CompressError::Read(e)),
        };
        writer.write_all(&buf[..n]).map_err(CompressError::Write)?;
    }
    writer.finish().map_err(CompressError::Write)
}

/// Writes the layer of the directory `root` (see [`crate::diff`]) compressed into `out` in one pass.
///
/// # Errors
/// [`CompressError::Diff`] for errors reading the tree, [`CompressError::Write`] for output errors.
pub fn compress_dir_layer<W: Write>(
    root: &Path,
    options: &DiffOptions,
    compression: Compression,
    out: W,
) -> Result<(W, LayerDigests), CompressError> {
    let writer = LayerWriter::new(compression, out).map_err(CompressError::Write)?;
    let (writer, _) = write_layer_tar(root, options, writer)?;
    writer.finish().map_err(CompressError::Write)
}

/// A stream whose first bytes were read to tell its compression, with those bytes put back in front.
pub type SniffedStream<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Reads the first bytes of `input` and tells its compression by their magic number (see
/// [`kiln_image::magic`]); returns it with a reader of the whole stream again, those bytes included.
/// Nothing is decompressed.
///
/// # Errors
/// Read errors of the first bytes.
pub fn sniff_compression<R: Read>(
    mut input: R,
) -> io::Result<(StreamCompression, SniffedStream<R>)> {
    let mut head = vec![0u8; StreamCompression::MAGIC_LEN];
    let mut filled = 0;
    while filled < head.len() {
        match input.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(filled);
    Ok((
        StreamCompression::detect(&head),
        io::Cursor::new(head).chain(input),
    ))
}

/// Detects gzip, bzip2, xz or zstd by the first bytes of `input` (as Docker's `DecompressStream`
/// does) and returns a reader of the decompressed stream (multi-member gzip and bzip2, multi-stream
/// xz and multi-frame zstd included); anything else is passed through as uncompressed.
///
/// # Errors
/// Read errors of the first bytes; zstd initialisation errors.
pub fn decompressing_reader<'a, R: Read + 'a>(
    input: R,
) -> io::Result<(StreamCompression, Box<dyn Read + 'a>)> {
    let (compression, stream) = sniff_compression(input)?;
    let reader: Box<dyn Read + 'a> = match compression {
        StreamCompression::Uncompressed => Box::new(stream),
        StreamCompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(
            io::BufReader::new(stream),
        )),
        StreamCompression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(
            io::BufReader::new(stream),
        )),
        StreamCompression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(
            io::BufReader::new(stream),
        )),
        StreamCompression::Zstd => {
            Box::new(zstd::Decoder::with_buffer(io::BufReader::new(stream))?)
        }
    };
    Ok((compression, reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Semi-compressible bytes: a repeated text with a counter, like logs or source.
    fn sample(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(
                format!("line {i} of some layer content {}\n", i * 7919 % 1000).as_bytes(),
            );
            i += 1;
        }
        out.truncate(len);
        out
    }

    fn roundtrip(compression: Compression, data: &[u8]) -> (Vec<u8>, LayerDigests) {
        let (blob, digests) = compress_layer(data, compression, Vec::new()).unwrap();
        let mut back = Vec::new();
        {
            let (_, mut reader) = decompressing_reader(&blob[..]).unwrap();
            reader.read_to_end(&mut back).unwrap();
        }
        assert_eq!(back, data);
        (blob, digests)
    }

    #[test]
    fn every_compression_round_trips_and_reports_digests() {
        let data = sample(3 * GZIP_CHUNK_SIZE + 123);
        for compression in [
            Compression::Uncompressed,
            Compression::Gzip { level: 1 },
            Compression::Zstd { level: 3 },
        ] {
            let (blob, digests) = roundtrip(compression, &data);
            assert_eq!(digests.diff_id, Digest::of(&data));
            assert_eq!(digests.blob_digest, Digest::of(&blob));
            assert_eq!(digests.size, blob.len() as u64);
            assert_eq!(digests.uncompressed_size, data.len() as u64);
        }
    }

    #[test]
    fn empty_input_gives_a_valid_gzip_member() {
        let (blob, _) = roundtrip(Compression::Gzip { level: 6 }, b"");
        assert_eq!(&blob[..2], &[0x1f, 0x8b]);
    }

    #[test]
    fn gzip_output_does_not_depend_on_the_thread_count() {
        let data = sample(5 * GZIP_CHUNK_SIZE + 7);
        let run = |threads| {
            let pool = Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap(),
            );
            let mut writer =
                LayerWriter::with_pool(Compression::Gzip { level: 1 }, Vec::new(), Some(pool))
                    .unwrap();
            // Odd write sizes, to cross chunk boundaries mid-write.
            for piece in data.chunks(77_777) {
                writer.write_all(piece).unwrap();
            }
            writer.finish().unwrap()
        };
        let (one, d1) = run(1);
        let (two, d2) = run(3);
        assert_eq!(one, two);
        assert_eq!(d1, d2);
    }

    #[test]
    fn plain_streams_pass_through_detection_even_when_short() {
        for data in [&b""[..], b"a", b"abcdef"] {
            let (kind, mut reader) = decompressing_reader(data).unwrap();
            assert_eq!(kind, StreamCompression::Uncompressed);
            let mut back = Vec::new();
            reader.read_to_end(&mut back).unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn bzip2_and_xz_streams_are_decompressed_too() {
        let data = sample(100_000);
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&data).unwrap();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&data).unwrap();
        for (blob, expected) in [
            (bz.finish().unwrap(), StreamCompression::Bzip2),
            (xz.finish().unwrap(), StreamCompression::Xz),
        ] {
            let (kind, mut reader) = decompressing_reader(&blob[..]).unwrap();
            assert_eq!(kind, expected);
            let mut back = Vec::new();
            reader.read_to_end(&mut back).unwrap();
            assert!(back == data, "{expected:?} did not round-trip");
        }
    }

    #[test]
    fn sniffing_gives_back_the_whole_stream() {
        let (kind, mut stream) =
            sniff_compression(&[0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4][..]).unwrap();
        assert_eq!(kind, StreamCompression::Zstd);
        let mut back = Vec::new();
        stream.read_to_end(&mut back).unwrap();
        assert_eq!(back, [0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4]);
    }

    /// CPU seconds used by the whole process so far.
    fn process_cpu_seconds() -> f64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write into.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    }

    /// Throughput of one ordinary gzip stream vs the chunked writer on 1 and 2 threads, 200 MB; run by
    /// hand: `cargo test -p kiln-oci gzip_throughput -- --ignored --nocapture`. Prints wall-clock MB/s
    /// and MB per CPU-second (the latter is robust to other load on the machine).
    #[test]
    #[ignore]
    fn gzip_throughput_single_vs_parallel_200mb() {
        let data = sample(200 * 1000 * 1000);
        let report = |label: &str, wall: f64, cpu: f64, size: u64| {
            let mb = data.len() as f64 / 1e6;
            println!(
                "{label}: {:.0} MB/s wall, {:.0} MB/CPU-s, {size} bytes out",
                mb / wall,
                mb / cpu
            );
        };
        for level in [1, 6] {
            let (wall, cpu) = (std::time::Instant::now(), process_cpu_seconds());
            let mut counter = HashingWriter {
                inner: io::sink(),
                hasher: Sha256::new(),
                written: 0,
            };
            let mut single = GzBuilder::new().write(&mut counter, flate2::Compression::new(level));
            single.write_all(&data).unwrap();
            single.finish().unwrap();
            report(
                &format!("level {level}, one gzip stream"),
                wall.elapsed().as_secs_f64(),
                process_cpu_seconds() - cpu,
                counter.written,
            );
            for threads in [1, 2] {
                let pool = Arc::new(
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap(),
                );
                let (wall, cpu) = (std::time::Instant::now(), process_cpu_seconds());
                let mut writer =
                    LayerWriter::with_pool(Compression::Gzip { level }, io::sink(), Some(pool))
                        .unwrap();
                writer.write_all(&data).unwrap();
                let (_, digests) = writer.finish().unwrap();
                report(
                    &format!(
                        "level {level}, multi-member, {threads} thread(s) (incl. diff id sha256)"
                    ),
                    wall.elapsed().as_secs_f64(),
                    process_cpu_seconds() - cpu,
                    digests.size,
                );
            }
        }
    }
}
