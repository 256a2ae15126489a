//! One partition's image file as Clonezilla and FOG leave it: possibly split into pieces
//! (`.aa`, `.ab`, ... or `.000`, `.001`, ...) and compressed with one of the usual tools. Read as
//! one decompressed stream, remembering which piece each part of it came from, so a damaged or
//! cut-short image names the piece to look at.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// How a stream is compressed, recognised by its first bytes (never by its name: Clonezilla's
/// `dd-img` files carry no suffix and FOG's `.img` files may hold gzip or zstd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// gzip or pigz.
    Gzip,
    /// zstd or zstdmt.
    Zstd,
    /// xz.
    Xz,
    /// The legacy `.lzma` format.
    Lzma,
    /// lz4's frame format.
    Lz4,
    /// bzip2, pbzip2 or lbzip2.
    Bzip2,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "uncompressed",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Xz => "xz",
            Self::Lzma => "lzma",
            Self::Lz4 => "lz4",
            Self::Bzip2 => "bzip2",
        })
    }
}

/// Recognises the compression from a stream's first bytes; an error for the compressors
/// Clonezilla offers that drover does not read (lzop, lzip, lrzip).
pub fn detect(head: &[u8]) -> Result<Compression, String> {
    let starts = |m: &[u8]| head.starts_with(m);
    Ok(if starts(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else if starts(&[0x04, 0x22, 0x4d, 0x18]) {
        Compression::Lz4
    } else if starts(b"BZh") && head.get(3).is_some_and(|c| (b'1'..=b'9').contains(c)) {
        Compression::Bzip2
    } else if starts(&[0x89, b'L', b'Z', b'O']) {
        return Err(
            "compressed with lzop (Clonezilla -z3), which drover does not read: \
             decompress the pieces with `lzop -dc` into one file first"
                .into(),
        );
    } else if starts(b"LZIP") {
        return Err(
            "compressed with lzip (Clonezilla -z6), which drover does not read: \
             decompress the pieces with `lzip -dc` into one file first"
                .into(),
        );
    } else if starts(b"LRZI") {
        return Err(
            "compressed with lrzip (Clonezilla -z7), which drover does not read: \
             decompress the pieces with `lrzip -d` first"
                .into(),
        );
    } else if is_lzma_alone(head) {
        Compression::Lzma
    } else {
        Compression::None
    })
}

/// The legacy `.lzma` ("LZMA alone") header: properties byte 0x5d (lc=3 lp=0 pb=2, what lzma
/// and xz --format=lzma write), a power-of-two-ish dictionary size, then the size (often
/// unknown: all ones).
fn is_lzma_alone(head: &[u8]) -> bool {
    head.len() >= 13
        && head[0] == 0x5d
        && {
            let dict = u32::from_le_bytes(head[1..5].try_into().unwrap());
            dict >= 4096 && dict.is_power_of_two()
        }
        && {
            let size = u64::from_le_bytes(head[5..13].try_into().unwrap());
            size == u64::MAX || size < (1 << 50)
        }
}

/// The pieces of one image file, in order.
#[derive(Debug, Clone)]
pub struct Pieces {
    /// The files, first piece first.
    pub files: Vec<PathBuf>,
}

impl Pieces {
    /// The file's name for messages: the first piece's name without its split suffix.
    pub fn name(&self) -> String {
        self.files
            .first()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Where the reader has got to: which piece it is reading and, for each piece, how far the
/// decompressed output had got when the piece's first byte was read.
#[derive(Debug, Default)]
struct Trail {
    /// (decompressed offset when a read started, piece index) for every read of compressed
    /// bytes, thinned to the reads that changed piece.
    marks: Vec<(u64, usize)>,
    out: u64,
    current: usize,
}

/// The pieces read one after another.
struct Chain {
    files: Vec<PathBuf>,
    idx: usize,
    cur: Option<File>,
    trail: Rc<RefCell<Trail>>,
}

impl Read for Chain {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.cur.is_none() {
                let Some(p) = self.files.get(self.idx) else {
                    return Ok(0);
                };
                self.cur = Some(File::open(p).map_err(|e| {
                    io::Error::new(e.kind(), format!("opening {}: {e}", p.display()))
                })?);
                let mut t = self.trail.borrow_mut();
                let out = t.out;
                t.current = self.idx;
                t.marks.push((out, self.idx));
            }
            let n = self.cur.as_mut().unwrap().read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            self.cur = None;
            self.idx += 1;
        }
    }
}

/// The decompressed stream of a split, compressed image file.
pub struct Stream {
    inner: Box<dyn Read>,
    trail: Rc<RefCell<Trail>>,
    files: Vec<PathBuf>,
    /// How the pieces are compressed.
    pub compression: Compression,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.trail.borrow_mut().out += n as u64;
        Ok(n)
    }
}

impl Stream {
    /// Opens the pieces and the decompressor their first bytes call for.
    pub fn open(pieces: &Pieces) -> Result<Self, String> {
        let first = pieces.files.first().ok_or("no image file")?;
        let mut head = [0u8; 16];
        let n = File::open(first)
            .and_then(|mut f| {
                let mut n = 0;
                while n < head.len() {
                    let k = f.read(&mut head[n..])?;
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                Ok(n)
            })
            .map_err(|e| format!("reading {}: {e}", first.display()))?;
        let compression = detect(&head[..n]).map_err(|e| format!("{}: {e}", pieces.name()))?;
        let trail = Rc::new(RefCell::new(Trail::default()));
        let chain = BufReader::with_capacity(
            64 << 10,
            Chain {
                files: pieces.files.clone(),
                idx: 0,
                cur: None,
                trail: trail.clone(),
            },
        );
        let inner: Box<dyn Read> = match compression {
            Compression::None => Box::new(chain),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(chain)),
            Compression::Zstd => Box::new(
                zstd::Decoder::with_buffer(chain)
                    .map_err(|e| format!("{}: zstd: {e}", pieces.name()))?,
            ),
            Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(chain)),
            Compression::Lzma => {
                let s = liblzma::stream::Stream::new_lzma_decoder(u64::MAX)
                    .map_err(|e| format!("{}: lzma: {e}", pieces.name()))?;
                Box::new(liblzma::bufread::XzDecoder::new_stream(chain, s))
            }
            Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(chain)),
            Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(chain)),
        };
        Ok(Self {
            inner,
            trail,
            files: pieces.files.clone(),
            compression,
        })
    }

    /// The decompressed bytes handed out so far.
    pub fn position(&self) -> u64 {
        self.trail.borrow().out
    }

    /// The piece being read now (for an error the decompressor raised).
    pub fn current_piece(&self) -> &Path {
        &self.files[self.trail.borrow().current.min(self.files.len() - 1)]
    }

    /// The pieces whose compressed bytes produced decompressed offsets `start..end`: from the
    /// piece being read when the output reached `start` (a decompressor reads ahead, so the
    /// bytes may come from the piece before that) to the one being read when it reached `end`.
    pub fn pieces_for(&self, start: u64, end: u64) -> Vec<&Path> {
        let t = self.trail.borrow();
        let at = |pos: u64| {
            t.marks
                .iter()
                .take_while(|(out, _)| *out <= pos)
                .last()
                .map(|m| m.1)
                .unwrap_or(0)
        };
        let mut lo = at(start);
        let hi = at(end).max(lo);
        // A piece that started after the output passed `start` may still hold its bytes only
        // when it started within the read-ahead; step back when that piece began right at it.
        if lo > 0 && t.marks.iter().any(|(out, i)| *i == lo && *out == start) {
            lo -= 1;
        }
        (lo..=hi).map(|i| self.files[i].as_path()).collect()
    }
}

/// Lists a split image's pieces from its first piece's path or its unsplit name: `NAME`, or
/// `NAME.aa`, `NAME.ab`, ... (two or more letters, as `split` names them), or `NAME.000`,
/// `NAME.001`, ... (FOG). A gap in the sequence is an error naming the missing piece.
pub fn find(dir: &Path, name: &str) -> Result<Option<Pieces>, String> {
    let whole = dir.join(name);
    if whole.is_file() {
        return Ok(Some(Pieces { files: vec![whole] }));
    }
    let prefix = format!("{name}.");
    let mut suffixes: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let s = n.strip_prefix(&prefix)?.to_string();
            let letters = s.len() >= 2 && s.bytes().all(|c| c.is_ascii_lowercase());
            let digits = s.len() >= 3 && s.bytes().all(|c| c.is_ascii_digit());
            (letters || digits).then_some(s)
        })
        .collect();
    if suffixes.is_empty() {
        return Ok(None);
    }
    // `split` names pieces with a fixed width (Clonezilla: 2 or 3 letters; FOG: 3 digits);
    // GNU split's widening past "yz" to "zaaa" sorts after by length.
    suffixes.sort_by_key(|s| (s.len(), split_value(s)));
    let width = suffixes[0].len();
    if suffixes.iter().all(|s| s.len() == width) {
        let digits = suffixes[0].as_bytes()[0].is_ascii_digit();
        for (want, s) in suffixes.iter().enumerate() {
            if split_value(s) != want as u64 {
                let missing = split_suffix(want as u64, width, digits);
                return Err(format!("piece {name}.{missing} is missing"));
            }
        }
    }
    Ok(Some(Pieces {
        files: suffixes
            .iter()
            .map(|s| dir.join(format!("{prefix}{s}")))
            .collect(),
    }))
}

/// A suffix's value: decimal digits, or letters in base 26 (`aa` is 0, `ab` 1, `ba` 26).
fn split_value(s: &str) -> u64 {
    if s.bytes().all(|c| c.is_ascii_digit()) {
        return s.parse().unwrap_or(u64::MAX);
    }
    s.bytes().fold(0u64, |v, c| {
        v.saturating_mul(26).saturating_add((c - b'a') as u64)
    })
}

fn split_suffix(mut i: u64, width: usize, digits: bool) -> String {
    if digits {
        return format!("{i:0width$}");
    }
    let mut out = vec![b'a'; width];
    for c in out.iter_mut().rev() {
        *c = b'a' + (i % 26) as u8;
        i /= 26;
    }
    String::from_utf8(out).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_suffixes_order_and_gaps() {
        assert_eq!(split_value("aa"), 0);
        assert_eq!(split_value("ab"), 1);
        assert_eq!(split_value("ba"), 26);
        assert_eq!(split_value("aab"), 1);
        assert_eq!(split_value("012"), 12);
        assert_eq!(split_suffix(1, 2, false), "ab");
        assert_eq!(split_suffix(27, 3, false), "abb");
        assert_eq!(split_suffix(2, 3, true), "002");
        let d = tempfile::tempdir().unwrap();
        for s in ["aa", "ab", "ad"] {
            std::fs::write(d.path().join(format!("sda1.ext4-ptcl-img.gz.{s}")), b"x").unwrap();
        }
        let e = find(d.path(), "sda1.ext4-ptcl-img.gz").unwrap_err();
        assert_eq!(e, "piece sda1.ext4-ptcl-img.gz.ac is missing");
        std::fs::write(d.path().join("sda1.ext4-ptcl-img.gz.ac"), b"x").unwrap();
        let p = find(d.path(), "sda1.ext4-ptcl-img.gz").unwrap().unwrap();
        assert_eq!(p.files.len(), 4);
        assert!(p.files[3].ends_with("sda1.ext4-ptcl-img.gz.ad"));
        assert!(find(d.path(), "sda2.ext4-ptcl-img.gz").unwrap().is_none());
    }

    #[test]
    fn compression_is_told_by_the_first_bytes() {
        assert_eq!(detect(&[0x1f, 0x8b, 8]).unwrap(), Compression::Gzip);
        assert_eq!(
            detect(&[0x28, 0xb5, 0x2f, 0xfd]).unwrap(),
            Compression::Zstd
        );
        assert_eq!(detect(b"BZh9").unwrap(), Compression::Bzip2);
        assert_eq!(detect(b"partclone-image\0").unwrap(), Compression::None);
        assert!(detect(&[0x89, b'L', b'Z', b'O', 0])
            .unwrap_err()
            .contains("lzop"));
    }
}
