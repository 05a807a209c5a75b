//! What a stream's first bytes say it is: its compression (gzip, bzip2, xz, zstd — the magic numbers
//! of Docker's `DetectCompression`) and whether a block is a tar header.
//!
//! This is the one detector behind every place kiln opens an archive of unknown form — a build
//! context on stdin, an `ADD`ed local archive, a layer or image archive — so they all agree on what
//! counts as compressed. It only looks at bytes the caller already read (no I/O); opening the matching
//! decoder is the caller's job.

/// A compression format, as told by a stream's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamCompression {
    /// No known magic number: the stream is taken as it is.
    Uncompressed,
    /// gzip (`1f 8b 08`: deflate, the only method gzip defines).
    Gzip,
    /// bzip2 (`BZh`).
    Bzip2,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b, 0x08];
const BZIP2_MAGIC: &[u8] = b"BZh";
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

impl StreamCompression {
    /// How many leading bytes [`StreamCompression::detect`] needs to tell every format apart (xz's
    /// magic is the longest). Fewer are fine at the end of a short stream.
    pub const MAGIC_LEN: usize = 6;

    /// The compression announced by `head`, the first bytes of a stream (at least
    /// [`StreamCompression::MAGIC_LEN`] of them unless the stream is shorter).
    pub fn detect(head: &[u8]) -> StreamCompression {
        [
            (GZIP_MAGIC, StreamCompression::Gzip),
            (BZIP2_MAGIC, StreamCompression::Bzip2),
            (XZ_MAGIC, StreamCompression::Xz),
            (ZSTD_MAGIC, StreamCompression::Zstd),
        ]
        .into_iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map_or(StreamCompression::Uncompressed, |(_, kind)| kind)
    }
}

/// Size of a tar block (and of a tar header).
pub const TAR_BLOCK_SIZE: usize = 512;

/// Where a tar header keeps its checksum.
const TAR_CHECKSUM_FIELD: std::ops::Range<usize> = 148..156;

/// Whether `block` starts with a tar header whose checksum matches, as Go's `archive/tar` checks a
/// first entry: the checksum is the sum of the header's bytes with its own field counted as spaces,
/// taken as unsigned bytes or — as some old tars wrote it — signed ones. An all-zero block is the
/// end-of-archive marker, not an entry.
pub fn is_tar_header(block: &[u8]) -> bool {
    let Some(header) = block.get(..TAR_BLOCK_SIZE) else {
        return false;
    };
    if header.iter().all(|b| *b == 0) {
        return false;
    }
    let field = &header[TAR_CHECKSUM_FIELD];
    let digits: String = field
        .iter()
        .map(|b| char::from(*b))
        .filter(|c| !matches!(c, '\0' | ' '))
        .collect();
    let Ok(stored) = i64::from_str_radix(&digits, 8) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, byte) in header.iter().enumerate() {
        let byte = if TAR_CHECKSUM_FIELD.contains(&i) {
            b' '
        } else {
            *byte
        };
        unsigned += i64::from(byte);
        signed += i64::from(byte as i8);
    }
    stored == unsigned || stored == signed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_is_told_by_its_magic_bytes() {
        assert_eq!(
            StreamCompression::detect(&[0x1f, 0x8b, 8, 0]),
            StreamCompression::Gzip
        );
        assert_eq!(
            StreamCompression::detect(b"BZh91AY"),
            StreamCompression::Bzip2
        );
        assert_eq!(
            StreamCompression::detect(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
            StreamCompression::Xz
        );
        assert_eq!(
            StreamCompression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            StreamCompression::Zstd
        );
        assert_eq!(
            StreamCompression::detect(b"hello"),
            StreamCompression::Uncompressed
        );
    }

    #[test]
    fn short_or_partial_magic_is_uncompressed() {
        for head in [&b""[..], &[0x1f], &[0x1f, 0x8b], &[0xfd, b'7', b'z'], b"BZ"] {
            assert_eq!(
                StreamCompression::detect(head),
                StreamCompression::Uncompressed,
                "{head:?}"
            );
        }
        // gzip with a method other than deflate is not gzip as Docker sees it.
        assert_eq!(
            StreamCompression::detect(&[0x1f, 0x8b, 0x07]),
            StreamCompression::Uncompressed
        );
    }

    /// A ustar header for a file `name`, its checksum field written by `checksum` from the sum.
    fn header(name: &[u8], checksum: impl Fn(u32) -> String) -> Vec<u8> {
        let mut block = vec![0u8; TAR_BLOCK_SIZE];
        block[..name.len()].copy_from_slice(name);
        block[100..108].copy_from_slice(b"0000644\0");
        block[124..136].copy_from_slice(b"00000000000\0");
        block[257..263].copy_from_slice(b"ustar\0");
        block[TAR_CHECKSUM_FIELD].fill(b' ');
        let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
        let text = checksum(sum);
        block[148..148 + text.len()].copy_from_slice(text.as_bytes());
        block
    }

    #[test]
    fn tar_headers_are_checked_by_checksum() {
        // GNU tar's layout ("0001234\0 ") and the old one ("  1234\0 ").
        assert!(is_tar_header(&header(b"file", |sum| format!(
            "{sum:06o}\0 "
        ))));
        assert!(is_tar_header(&header(b"file", |sum| format!(
            "{sum:6o}\0 "
        ))));
        let mut corrupt = header(b"file", |sum| format!("{sum:06o}\0 "));
        corrupt[0] ^= 1;
        assert!(!is_tar_header(&corrupt));
        assert!(!is_tar_header(&[0u8; TAR_BLOCK_SIZE]));
        assert!(!is_tar_header(
            &header(b"file", |sum| format!("{sum:06o}\0 "))[..511]
        ));
    }

    #[test]
    fn a_signed_checksum_is_accepted() {
        // A name byte above 0x7f makes the signed and unsigned sums differ.
        // Counted as a signed byte, 0xe9 is 0xe9 - 256.
        let signed = header(b"caf\xe9", |sum| format!("{:06o}\0 ", sum - 256));
        assert!(is_tar_header(&signed));
    }
}
