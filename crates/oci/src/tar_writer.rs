//! Our tar writer settings: POSIX ustar headers with PAX extended headers for whatever ustar cannot hold.
//!
//! The `tar` crate's builder writes GNU long-name entries, drops xattrs and may write sparse entries; layer
//! digests depend on every header byte, so kiln writes headers itself and uses the crate only to read.
//! Rules (the same as Go's `archive/tar` in PAX mode, which Docker and BuildKit use):
//! - path / link target longer than 100 bytes, or not ASCII → PAX `path` / `linkpath`;
//! - size ≥ 8 GiB → PAX `size`; uid/gid ≥ 2^21 → PAX `uid`/`gid`; mtime outside 0..8^11 → PAX `mtime`;
//! - xattrs → PAX `SCHILY.xattr.<name>` records, sorted by name;
//! - user and group names are always empty (numeric ids only);
//! - the PAX header entry itself is named `<dir>/PaxHeaders.0/<base>` with mode 0644, ids 0 and mtime 0,
//!   so the same entry always gives the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

const BLOCK: usize = 512;
/// Largest value of an 11-digit octal field (size, mtime).
const MAX_OCTAL_11: u64 = 0o77_777_777_777;
/// Largest value of a 7-digit octal field (uid, gid, device numbers).
const MAX_OCTAL_7: u64 = 0o7_777_777;

/// The type of a tar entry, as kiln writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file with `size` bytes of content.
    File,
    /// A hard link to `link_target`, an earlier entry of the same archive.
    HardLink,
    /// A symbolic link whose target is `link_target`, stored verbatim.
    Symlink,
    /// A character device `device.0:device.1`.
    CharDevice,
    /// A block device `device.0:device.1`.
    BlockDevice,
    /// A directory; its path should end with `/`.
    Directory,
    /// A named pipe.
    Fifo,
}

impl EntryKind {
    fn type_flag(self) -> u8 {
        match self {
            EntryKind::File => b'0',
            EntryKind::HardLink => b'1',
            EntryKind::Symlink => b'2',
            EntryKind::CharDevice => b'3',
            EntryKind::BlockDevice => b'4',
            EntryKind::Directory => b'5',
            EntryKind::Fifo => b'6',
        }
    }
}

/// Everything kiln records about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    /// The path inside the archive, relative, `/`-separated; directories end with `/`.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Content length; only regular files have content.
    pub size: u64,
    /// Target of a symlink or hard link.
    pub link_target: Vec<u8>,
    /// (major, minor) of a device node.
    pub device: (u32, u32),
    /// Extended attributes by name.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl TarEntry {
    /// An entry of `kind` at `path` with mode 0, root ownership, mtime 0 and nothing else.
    pub fn new(path: impl Into<Vec<u8>>, kind: EntryKind) -> TarEntry {
        TarEntry {
            path: path.into(),
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            link_target: Vec::new(),
            device: (0, 0),
            xattrs: BTreeMap::new(),
        }
    }
}

/// Writes tar entries with kiln's settings to `out`; call [`TarWriter::finish`] at the end.
pub struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> TarWriter<W> {
        TarWriter { out }
    }

    /// Appends `entry`, followed by exactly `entry.size` bytes read from `content` for regular files.
    ///
    /// # Errors
    /// Write errors of `out`, read errors of `content`, `UnexpectedEof` when `content` ends before
    /// `entry.size` bytes, and `InvalidInput` for a device number that does not fit a header.
    pub fn append(&mut self, entry: &TarEntry, content: Option<&mut dyn Read>) -> io::Result<()> {
        let pax = pax_records(entry);
        if !pax.is_empty() {
            self.write_pax_header(&entry.path, &pax)?;
        }
        let header = ustar_header(entry)?;
        self.out.write_all(&header)?;
        if entry.kind == EntryKind::File && entry.size > 0 {
            let Some(content) = content else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a regular file entry with a size needs content",
                ));
            };
            let copied = io::copy(&mut content.take(entry.size), &mut self.out)?;
            if copied != entry.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "content ended after {copied} of {} bytes (file changed while being read?)",
                        entry.size
                    ),
                ));
            }
            self.pad(entry.size)?;
        }
        Ok(())
    }

    /// Writes the two zero blocks that end an archive and returns the output.
    ///
    /// # Errors
    /// Write and flush errors of the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; BLOCK * 2])?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// The output, for callers that wrap it (hashers, counters).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    fn write_pax_header(&mut self, path: &[u8], records: &[u8]) -> io::Result<()> {
        let mut header = TarEntry::new(pax_header_name(path), EntryKind::File);
        header.mode = 0o644;
        header.size = records.len() as u64;
        let mut block = ustar_header(&header)?;
        block[156] = b'x';
        set_checksum(&mut block);
        self.out.write_all(&block)?;
        self.out.write_all(records)?;
        self.pad(records.len() as u64)
    }
}

/// `dir/PaxHeaders.0/base` cut to the 100 bytes of the name field, as Go names PAX headers.
fn pax_header_name(path: &[u8]) -> Vec<u8> {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    let (dir, base) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => (&trimmed[..=i], &trimmed[i + 1..]),
        None => (&b""[..], trimmed),
    };
    let mut name = Vec::with_capacity(100);
    name.extend_from_slice(dir);
    name.extend_from_slice(b"PaxHeaders.0/");
    name.extend_from_slice(base);
    name.truncate(100);
    name
}

fn fits_name_field(bytes: &[u8]) -> bool {
    bytes.len() <= 100 && bytes.iter().all(|&b| b.is_ascii() && b != 0)
}

/// The PAX records `entry` needs, concatenated; empty when plain ustar holds everything.
fn pax_records(entry: &TarEntry) -> Vec<u8> {
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if !fits_name_field(&entry.path) {
        records.push((b"path".to_vec(), entry.path.clone()));
    }
    if !fits_name_field(&entry.link_target) {
        records.push((b"linkpath".to_vec(), entry.link_target.clone()));
    }
    if entry.size > MAX_OCTAL_11 {
        records.push((b"size".to_vec(), entry.size.to_string().into_bytes()));
    }
    if entry.uid > MAX_OCTAL_7 {
        records.push((b"uid".to_vec(), entry.uid.to_string().into_bytes()));
    }
    if entry.gid > MAX_OCTAL_7 {
        records.push((b"gid".to_vec(), entry.gid.to_string().into_bytes()));
    }
    if entry.mtime < 0 || entry.mtime as u64 > MAX_OCTAL_11 {
        records.push((b"mtime".to_vec(), entry.mtime.to_string().into_bytes()));
    }
    for (name, value) in &entry.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        records.push((key, value.clone()));
    }
    records.sort();
    let mut out = Vec::new();
    for (key, value) in records {
        out.extend_from_slice(&pax_record(&key, &value));
    }
    out
}

/// One `"<len> <key>=<value>\n"` record, where `<len>` counts the whole record including itself.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // space, '=', newline
    // The length prefix counts its own digits: iterate until the digit count is stable.
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    let mut record = Vec::with_capacity(len);
    record.extend_from_slice(len.to_string().as_bytes());
    record.push(b' ');
    record.extend_from_slice(key);
    record.push(b'=');
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// Writes `value` as zero-padded octal filling `field` but its last byte, which stays NUL.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    let text = text.as_bytes();
    // Values too large for the field are carried by a PAX record; the field then holds its maximum.
    if text.len() > digits {
        field[..digits].fill(b'7');
    } else {
        field[..digits].copy_from_slice(text);
    }
    field[digits] = 0;
}

fn put_bytes(field: &mut [u8], bytes: &[u8]) {
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

fn ustar_header(entry: &TarEntry) -> io::Result<[u8; BLOCK]> {
    let mut block = [0u8; BLOCK];
    put_bytes(&mut block[0..100], &entry.path);
    put_octal(&mut block[100..108], u64::from(entry.mode & 0o7777));
    put_octal(&mut block[108..116], entry.uid.min(MAX_OCTAL_7));
    put_octal(&mut block[116..124], entry.gid.min(MAX_OCTAL_7));
    let size = if entry.kind == EntryKind::File {
        entry.size
    } else {
        0
    };
    put_octal(&mut block[124..136], size.min(MAX_OCTAL_11));
    put_octal(
        &mut block[136..148],
        u64::try_from(entry.mtime).unwrap_or(0).min(MAX_OCTAL_11),
    );
    block[156] = entry.kind.type_flag();
    put_bytes(&mut block[157..257], &entry.link_target);
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    if matches!(entry.kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
        let (major, minor) = entry.device;
        if u64::from(major) > MAX_OCTAL_7 || u64::from(minor) > MAX_OCTAL_7 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("device number {major}:{minor} does not fit a tar header"),
            ));
        }
        put_octal(&mut block[329..337], u64::from(major));
        put_octal(&mut block[337..345], u64::from(minor));
    } else {
        put_octal(&mut block[329..337], 0);
        put_octal(&mut block[337..345], 0);
    }
    set_checksum(&mut block);
    Ok(block)
}

fn set_checksum(block: &mut [u8; BLOCK]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(text.as_bytes());
}

/// Reads the PAX records of an entry into (key, value) pairs; used by tests and the extractor through
/// the `tar` crate's own parser, so this only serves as the reverse of [`pax_records`] in unit tests.
#[cfg(test)]
fn parse_pax(mut bytes: &[u8]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut map = BTreeMap::new();
    while !bytes.is_empty() {
        let space = bytes.iter().position(|&b| b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&bytes[..space])
            .unwrap()
            .parse()
            .unwrap();
        let record = &bytes[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').unwrap();
        map.insert(record[..eq].to_vec(), record[eq + 1..].to_vec());
        bytes = &bytes[len..];
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself_across_digit_boundaries() {
        for value_len in 0..200 {
            let value = vec![b'a'; value_len];
            let record = pax_record(b"path", &value);
            let space = record.iter().position(|&b| b == b' ').unwrap();
            let declared: usize = std::str::from_utf8(&record[..space])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(declared, record.len(), "value length {value_len}");
        }
    }

    #[test]
    fn short_ascii_entries_need_no_pax_header() {
        let mut entry = TarEntry::new("etc/passwd", EntryKind::File);
        entry.size = 10;
        assert!(pax_records(&entry).is_empty());
    }

    #[test]
    fn big_values_long_and_unicode_names_and_xattrs_go_to_pax() {
        let mut entry = TarEntry::new("dir/ünïcode", EntryKind::File);
        entry.size = MAX_OCTAL_11 + 1;
        entry.uid = MAX_OCTAL_7 + 1;
        entry.gid = 5;
        entry.mtime = -1;
        entry.link_target = vec![b'x'; 101];
        entry
            .xattrs
            .insert(b"security.capability".to_vec(), vec![1, 0, 0, 2]);
        let records = parse_pax(&pax_records(&entry));
        assert_eq!(records[&b"path"[..]], "dir/ünïcode".as_bytes());
        assert_eq!(
            records[&b"size"[..]],
            (MAX_OCTAL_11 + 1).to_string().as_bytes()
        );
        assert_eq!(
            records[&b"uid"[..]],
            (MAX_OCTAL_7 + 1).to_string().as_bytes()
        );
        assert!(!records.contains_key(&b"gid"[..]));
        assert_eq!(records[&b"mtime"[..]], b"-1");
        assert_eq!(records[&b"linkpath"[..]].len(), 101);
        assert_eq!(
            records[&b"SCHILY.xattr.security.capability"[..]],
            vec![1, 0, 0, 2]
        );
    }

    #[test]
    fn header_round_trips_through_the_tar_crate_reader() {
        let mut out = TarWriter::new(Vec::new());
        let long = format!("{}/file", "d".repeat(150));
        let mut entry = TarEntry::new(long.clone(), EntryKind::File);
        entry.size = 3;
        entry.mode = 0o4755;
        entry.uid = 3_000_000;
        entry.mtime = 1_700_000_000;
        entry.xattrs.insert(b"user.k".to_vec(), b"v".to_vec());
        out.append(&entry, Some(&mut &b"abc"[..])).unwrap();
        let mut dev = TarEntry::new("dev/null", EntryKind::CharDevice);
        dev.device = (1, 3);
        out.append(&dev, None).unwrap();
        let bytes = out.finish().unwrap();
        assert_eq!(bytes.len() % BLOCK, 0);

        let mut archive = tar::Archive::new(&bytes[..]);
        let mut entries = archive.entries().unwrap();
        let mut first = entries.next().unwrap().unwrap();
        assert_eq!(&*first.path_bytes(), long.as_bytes());
        assert_eq!(first.header().mode().unwrap(), 0o4755);
        assert_eq!(first.header().mtime().unwrap(), 1_700_000_000);
        let pax: Vec<_> = first
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|e| e.unwrap().key().unwrap().to_string())
            .collect();
        assert!(pax.contains(&"uid".to_string()));
        assert!(pax.contains(&"SCHILY.xattr.user.k".to_string()));
        let mut content = String::new();
        first.read_to_string(&mut content).unwrap();
        assert_eq!(content, "abc");
        let second = entries.next().unwrap().unwrap();
        assert_eq!(second.header().device_major().unwrap(), Some(1));
        assert_eq!(second.header().device_minor().unwrap(), Some(3));
        assert!(entries.next().is_none());
    }

    #[test]
    fn short_content_is_an_error() {
        let mut out = TarWriter::new(Vec::new());
        let mut entry = TarEntry::new("f", EntryKind::File);
        entry.size = 10;
        let err = out.append(&entry, Some(&mut &b"abc"[..])).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
