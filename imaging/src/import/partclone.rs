//! partclone's image format (what Clonezilla and FOG store for each partition), read as a
//! stream: the header (format 0001 or 0002), the bitmap of used blocks, then the used blocks in
//! order with a checksum after every `blocks_per_checksum` of them. [`restore`] writes the used
//! blocks at their offsets and checks every checksum the image carries; the blocks partclone
//! left out are not written (they read as zeros in a sparse target).
//!
//! Format 0002: a 110-byte description (magic "partclone-image\0", partclone's version,
//! "0002", endianness 0xC0DE; fs name, device size, total/used block counts, block size; the
//! options: checksum mode and size, blocks per checksum, reseed, bitmap mode; a CRC32 of all
//! that), a bit-per-block bitmap plus its CRC32, then the data. Format 0001: a 4160-byte head, a
//! byte-per-block bitmap ending in "BiTmAgIc", then each block followed by a 4-byte checksum
//! of partclone 0.1's CRC (which only ever looked at a block's first byte), 8 bytes on images
//! an old 64-bit partclone wrote. This module does not write partclone images.

use std::io::{self, Read};

use xxhash_rust::xxh3::Xxh3;
use xxhash_rust::xxh64::Xxh64;

/// The magic every partclone image starts with.
pub const MAGIC: &[u8; 15] = b"partclone-image";
const V2_DESC: usize = 110;
const V1_DESC: usize = 36 + 28 + 4096;
const BIT_MAGIC: &[u8; 8] = b"BiTmAgIc";
/// partclone refuses larger blocks; so do we (a hostile header must not size our buffers).
const MAX_BLOCK_SIZE: u32 = 64 << 20;

/// What went wrong reading a partclone image.
#[derive(Debug, thiserror::Error)]
pub enum PartcloneError {
    /// The stream does not start with partclone's magic.
    #[error("not a partclone image (no \"partclone-image\" magic)")]
    NotPartclone,
    /// The description makes no sense (block size, counts, modes).
    #[error("malformed partclone header: {0}")]
    Header(String),
    /// The description's CRC differs.
    #[error("the partclone header's checksum does not match: the header is damaged")]
    HeaderChecksum,
    /// The bitmap's CRC differs, or it is cut short.
    #[error("the partclone bitmap is damaged ({0})")]
    Bitmap(String),
    /// A group of blocks does not match its checksum.
    #[error(
        "partclone checksum mismatch over blocks {first}..={last} \
         (image bytes {start}..{end} after decompression): the image is damaged"
    )]
    Checksum {
        /// First block of the group.
        first: u64,
        /// Last block of the group.
        last: u64,
        /// Where the group's bytes start in the decompressed stream.
        start: u64,
        /// Where its checksum ends.
        end: u64,
    },
    /// The data ends before the last used block.
    #[error("the image ends early, in block {block} of {used} used blocks: a piece is missing or cut short")]
    Truncated {
        /// Blocks read whole.
        block: u64,
        /// Blocks the bitmap promises.
        used: u64,
    },
    /// Reading (or decompressing) failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Which checksum the data carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumMode {
    /// No checksums.
    None,
    /// CRC-32 (partclone's default).
    Crc32,
    /// Format 0001's CRC (first byte of each block only, seed carried over).
    Crc32V1,
    /// XXH64, seed 0.
    Xxh64,
    /// XXH3-128.
    Xxh128,
}

/// A partclone image's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 1 or 2.
    pub version: u16,
    /// The filesystem partclone read ("EXTFS", "NTFS", "FAT", "raw", ...).
    pub fs: String,
    /// Size of the partition it was taken from.
    pub device_size: u64,
    /// Blocks in the filesystem.
    pub total_blocks: u64,
    /// Blocks in use, as the header counts them.
    pub used_blocks: u64,
    /// Bytes per block.
    pub block_size: u32,
    /// The data's checksum.
    pub checksum: ChecksumMode,
    /// Bytes per checksum.
    pub checksum_size: usize,
    /// Blocks each checksum covers.
    pub blocks_per_checksum: u32,
    /// Whether each checksum starts afresh (else it carries on from the previous one).
    pub reseed: bool,
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// partclone's CRC32: the reflected 0xEDB88320 polynomial from a seed of all ones, without the
/// final inversion (so the running value is the complement of the usual CRC-32 state).
fn crc32(seed: u32, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(!seed);
    h.update(data);
    !h.finalize()
}

/// partclone 0.1's CRC: `size` rounds over the block's first byte.
fn crc32_v1(seed: u32, block: &[u8]) -> u32 {
    let first = [block.first().copied().unwrap_or(0)];
    let mut crc = seed;
    for _ in 0..block.len() {
        crc = crc32(crc, &first);
    }
    crc
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn header_err(s: impl Into<String>) -> PartcloneError {
    PartcloneError::Header(s.into())
}

/// Reads the description and the bitmap (checking their CRCs). `head` is the start of the
/// stream, already read by the caller to recognise the magic (at most the description's size).
pub fn read_header(r: &mut dyn Read) -> Result<(Header, Vec<u8>), PartcloneError> {
    let mut desc = vec![0u8; V2_DESC];
    if read_full(r, &mut desc)? < 36 || &desc[..15] != MAGIC {
        return Err(PartcloneError::NotPartclone);
    }
    if desc.len() < V2_DESC {
        return Err(header_err("cut short"));
    }
    let version = &desc[30..34];
    let h = match version {
        b"0002" => {
            let want = u32_at(&desc, V2_DESC - 4);
            if crc32(!0, &desc[..V2_DESC - 4]) != want {
                return Err(PartcloneError::HeaderChecksum);
            }
            if u16_at(&desc, 34) != 0xC0DE {
                return Err(header_err(
                    "made on a big-endian machine (endianness mark is not 0xC0DE)",
                ));
            }
            let fi = 36;
            let op = fi + 52;
            let mode = u16_at(&desc, op + 8);
            let checksum = match mode {
                0x00 => ChecksumMode::None,
                0x20 => ChecksumMode::Crc32,
                0x30 => ChecksumMode::Xxh64,
                0x31 => ChecksumMode::Xxh128,
                m => return Err(header_err(format!("unknown checksum mode {m:#x}"))),
            };
            let bitmap_mode = desc[op + 17];
            if bitmap_mode != 0x01 {
                return Err(header_err(format!(
                    "bitmap mode {bitmap_mode:#x} (only the bit-per-block bitmap of format 0002 exists in images partclone writes)"
                )));
            }
            Header {
                version: 2,
                fs: cstr(&desc[fi..fi + 16]),
                device_size: u64_at(&desc, fi + 16),
                total_blocks: u64_at(&desc, fi + 24),
                used_blocks: u64_at(&desc, fi + 40),
                block_size: u32_at(&desc, fi + 48),
                checksum,
                checksum_size: u16_at(&desc, op + 10) as usize,
                blocks_per_checksum: u32_at(&desc, op + 12),
                reseed: desc[op + 16] != 0,
            }
        }
        b"0001" => {
            desc.resize(V1_DESC, 0);
            if read_full(r, &mut desc[V2_DESC..])? < V1_DESC - V2_DESC {
                return Err(header_err("format 0001 head cut short"));
            }
            let fi = 36;
            Header {
                version: 1,
                fs: cstr(&desc[15..30]),
                block_size: u32_at(&desc, fi),
                device_size: u64_at(&desc, fi + 4),
                total_blocks: u64_at(&desc, fi + 12),
                used_blocks: u64_at(&desc, fi + 20),
                checksum: ChecksumMode::Crc32V1,
                checksum_size: 4,
                blocks_per_checksum: 1,
                reseed: false,
            }
        }
        v => {
            return Err(header_err(format!(
                "image format {:?} (partclone writes 0001 and 0002)",
                String::from_utf8_lossy(v)
            )));
        }
    };
    validate(&h)?;
    let bitmap = read_bitmap(r, &h)?;
    Ok((h, bitmap))
}

fn validate(h: &Header) -> Result<(), PartcloneError> {
    if h.block_size == 0 || h.block_size > MAX_BLOCK_SIZE {
        return Err(header_err(format!("block size {}", h.block_size)));
    }
    if h.used_blocks > h.total_blocks {
        return Err(header_err(format!(
            "{} used blocks of {}",
            h.used_blocks, h.total_blocks
        )));
    }
    let fs_bytes = h
        .total_blocks
        .checked_mul(h.block_size as u64)
        .ok_or_else(|| header_err("block count overflows"))?;
    if fs_bytes > h.device_size {
        return Err(header_err(format!(
            "{} blocks of {} bytes do not fit the {}-byte device",
            h.total_blocks, h.block_size, h.device_size
        )));
    }
    let want = match h.checksum {
        ChecksumMode::None => 0,
        ChecksumMode::Crc32 | ChecksumMode::Crc32V1 => 4,
        ChecksumMode::Xxh64 => 8,
        ChecksumMode::Xxh128 => 16,
    };
    if h.checksum_size != want {
        return Err(header_err(format!(
            "checksum size {} for {:?}",
            h.checksum_size, h.checksum
        )));
    }
    if h.checksum != ChecksumMode::None && h.blocks_per_checksum == 0 {
        return Err(header_err("a checksum every 0 blocks"));
    }
    Ok(())
}

/// The bitmap as one bit per block (bit `i % 8` of byte `i / 8`, as partclone stores it).
fn read_bitmap(r: &mut dyn Read, h: &Header) -> Result<Vec<u8>, PartcloneError> {
    let bytes = h.total_blocks.div_ceil(8);
    // Read in pieces so a lying header cannot make us allocate before the data is there.
    let mut bits = Vec::new();
    if h.version == 2 {
        read_exact_growing(r, &mut bits, bytes, "bitmap")?;
        let mut crc = [0u8; 4];
        if read_full(r, &mut crc)? < 4 {
            return Err(PartcloneError::Bitmap("cut short".into()));
        }
        if crc32(!0, &bits) != u32::from_le_bytes(crc) {
            return Err(PartcloneError::Bitmap("its checksum does not match".into()));
        }
    } else {
        let mut bytemap = Vec::new();
        read_exact_growing(r, &mut bytemap, h.total_blocks, "bitmap")?;
        bits = vec![0u8; bytes as usize];
        for (i, &b) in bytemap.iter().enumerate() {
            if b == 1 {
                bits[i / 8] |= 1 << (i % 8);
            }
        }
        let mut magic = [0u8; 8];
        if read_full(r, &mut magic)? < 8 || &magic != BIT_MAGIC {
            return Err(PartcloneError::Bitmap(
                "no \"BiTmAgIc\" after the format 0001 bitmap".into(),
            ));
        }
    }
    Ok(bits)
}

fn read_exact_growing(
    r: &mut dyn Read,
    out: &mut Vec<u8>,
    len: u64,
    what: &str,
) -> Result<(), PartcloneError> {
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        if read_full(r, &mut buf[..n])? < n {
            return Err(PartcloneError::Bitmap(format!("the {what} is cut short")));
        }
        out.extend_from_slice(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

fn is_used(bits: &[u8], i: u64) -> bool {
    bits[(i / 8) as usize] & (1 << (i % 8)) != 0
}

/// The running checksum of a group of blocks.
enum Running {
    None,
    Crc(u32),
    CrcV1(u32),
    X64(Box<Xxh64>),
    X128(Box<Xxh3>),
}

impl Running {
    fn new(mode: ChecksumMode) -> Self {
        match mode {
            ChecksumMode::None => Self::None,
            ChecksumMode::Crc32 => Self::Crc(!0),
            ChecksumMode::Crc32V1 => Self::CrcV1(!0),
            ChecksumMode::Xxh64 => Self::X64(Box::new(Xxh64::new(0))),
            ChecksumMode::Xxh128 => Self::X128(Box::new(Xxh3::new())),
        }
    }
    fn update(&mut self, block: &[u8]) {
        match self {
            Self::None => {}
            Self::Crc(c) => *c = crc32(*c, block),
            Self::CrcV1(c) => *c = crc32_v1(*c, block),
            Self::X64(h) => h.update(block),
            Self::X128(h) => h.update(block),
        }
    }
    fn digest(&self) -> Vec<u8> {
        match self {
            Self::None => Vec::new(),
            Self::Crc(c) | Self::CrcV1(c) => c.to_le_bytes().to_vec(),
            Self::X64(h) => h.digest().to_le_bytes().to_vec(),
            Self::X128(h) => {
                let d = h.digest128();
                let mut v = (d as u64).to_le_bytes().to_vec();
                v.extend_from_slice(&((d >> 64) as u64).to_le_bytes());
                v
            }
        }
    }
}

/// What [`restore`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Blocks written.
    pub blocks: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Checksums compared (0 for an image without them).
    pub checksums: u64,
}

/// The stream after the header: counts the bytes read (so a failure can say where it lies)
/// and can take back bytes read ahead.
struct Src<'a> {
    inner: &'a mut dyn Read,
    /// Bytes read from `inner` so far.
    pos: u64,
    back: Vec<u8>,
}

impl Src<'_> {
    /// Position of the next byte a read returns.
    fn at(&self) -> u64 {
        self.pos - self.back.len() as u64
    }
    fn unread(&mut self, bytes: &[u8]) {
        let mut v = bytes.to_vec();
        v.extend_from_slice(&self.back);
        self.back = v;
    }
}

impl Read for Src<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.back.is_empty() {
            let n = buf.len().min(self.back.len());
            buf[..n].copy_from_slice(&self.back[..n]);
            self.back.drain(..n);
            return Ok(n);
        }
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Writes every used block of the image read from `r` (header included) through `write(offset,
/// bytes)`, offsets relative to the partition's start, checking the checksums as it goes.
pub fn restore(
    r: &mut dyn Read,
    write: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> Result<(Header, Restored), PartcloneError> {
    let mut c = Src {
        inner: r,
        pos: 0,
        back: Vec::new(),
    };
    let (h, bits) = read_header(&mut c)?;
    let done = restore_blocks(&mut c, &h, &bits, write)?;
    Ok((h, done))
}

fn restore_blocks(
    c: &mut Src,
    h: &Header,
    bits: &[u8],
    write: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> Result<Restored, PartcloneError> {
    let bs = h.block_size as usize;
    let cs = h.checksum_size;
    let per = h.blocks_per_checksum as u64;
    // Gather runs of adjacent used blocks so writes are large.
    let run_blocks = ((4usize << 20) / bs).max(1);
    let mut run: Vec<u8> = Vec::with_capacity(run_blocks * bs);
    let mut run_start = 0u64;
    let mut block = vec![0u8; bs];
    let mut sum = vec![0u8; cs];
    let mut running = Running::new(h.checksum);
    let mut in_group = 0u64;
    let mut group_first = 0u64;
    let mut group_start = c.at();
    let mut done = Restored::default();
    // Format 0001 images from an old 64-bit partclone store each checksum in 8 bytes; the first
    // checksum decides.
    let mut v1_pad: Option<usize> = (h.version != 1).then_some(0);
    let used_total = bits.iter().map(|b| b.count_ones() as u64).sum::<u64>();
    let truncated = |done: &Restored| PartcloneError::Truncated {
        block: done.blocks,
        used: used_total,
    };
    for i in (0..h.total_blocks).filter(|&i| is_used(bits, i)) {
        if read_full(c, &mut block)? < bs {
            return Err(truncated(&done));
        }
        if in_group == 0 {
            group_first = i;
        }
        running.update(&block);
        in_group += 1;
        if per > 0 && in_group == per {
            if read_full(c, &mut sum)? < cs {
                return Err(truncated(&done));
            }
            check_group(&running, &sum, group_first, i, group_start, c.at())?;
            done.checksums += 1;
            let pad = match v1_pad {
                Some(p) => p,
                None => {
                    let p = v1_padding(c, &running, bs, done.blocks + 1 < used_total)?;
                    v1_pad = Some(p);
                    p
                }
            };
            if pad > 0 && read_full(c, &mut sum[..pad.min(cs)])? < pad {
                return Err(truncated(&done));
            }
            if h.reseed {
                running = Running::new(h.checksum);
            }
            in_group = 0;
            group_start = c.at();
        }
        push_block(
            &mut run,
            &mut run_start,
            i * bs as u64,
            &block,
            run_blocks * bs,
            write,
        )?;
        done.blocks += 1;
        done.bytes += bs as u64;
    }
    if per > 0 && in_group > 0 {
        if read_full(c, &mut sum)? < cs {
            return Err(truncated(&done));
        }
        let last = (0..h.total_blocks)
            .rev()
            .find(|&i| is_used(bits, i))
            .unwrap_or(0);
        check_group(&running, &sum, group_first, last, group_start, c.at())?;
        done.checksums += 1;
    }
    flush_run(&mut run, run_start, write)?;
    Ok(done)
}

/// Whether a format 0001 image carries four bytes of padding after each checksum (old 64-bit
/// partclone wrote them as 8-byte longs): they are zeros, and the next block's checksum only
/// matches when they are skipped. Reads ahead and puts back what is not padding.
fn v1_padding(c: &mut Src, running: &Running, bs: usize, more: bool) -> io::Result<usize> {
    if !more {
        return Ok(0);
    }
    let mut ahead = vec![0u8; 4 + bs + 4];
    let got = read_full(c, &mut ahead)?;
    let seed = u32::from_le_bytes(running.digest()[..4].try_into().unwrap());
    let padded = got == ahead.len() && ahead[..4] == [0; 4] && {
        let next = crc32_v1(seed, &ahead[4..4 + bs]);
        next.to_le_bytes() == ahead[4 + bs..]
    };
    let unpadded = got >= bs + 4 && {
        let next = crc32_v1(seed, &ahead[..bs]);
        next.to_le_bytes() == ahead[bs..bs + 4]
    };
    c.unread(&ahead[..got]);
    Ok(if padded && !unpadded { 4 } else { 0 })
}

fn check_group(
    running: &Running,
    sum: &[u8],
    first: u64,
    last: u64,
    start: u64,
    end: u64,
) -> Result<(), PartcloneError> {
    if running.digest() != sum {
        return Err(PartcloneError::Checksum {
            first,
            last,
            start,
            end,
        });
    }
    Ok(())
}

fn push_block(
    run: &mut Vec<u8>,
    run_start: &mut u64,
    off: u64,
    block: &[u8],
    max: usize,
    write: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    if !run.is_empty() && (*run_start + run.len() as u64 != off || run.len() >= max) {
        flush_run(run, *run_start, write)?;
    }
    if run.is_empty() {
        *run_start = off;
    }
    run.extend_from_slice(block);
    Ok(())
}

fn flush_run(
    run: &mut Vec<u8>,
    start: u64,
    write: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    if !run.is_empty() {
        write(start, run)?;
        run.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partclone image of `blocks` (None: unused) written the way partclone writes one.
    fn image(
        version: u16,
        bs: usize,
        blocks: &[Option<Vec<u8>>],
        per: u32,
        mode: u16,
        pad: bool,
    ) -> Vec<u8> {
        let total = blocks.len() as u64;
        let used = blocks.iter().filter(|b| b.is_some()).count() as u64;
        let mut out = Vec::new();
        if version == 2 {
            out.extend_from_slice(b"partclone-image\0");
            out.extend_from_slice(b"0.3.23\0\0\0\0\0\0\0\0");
            out.extend_from_slice(b"0002");
            out.extend_from_slice(&0xC0DEu16.to_le_bytes());
            let mut fs = [0u8; 16];
            fs[..5].copy_from_slice(b"EXTFS");
            out.extend_from_slice(&fs);
            out.extend_from_slice(&(total * bs as u64).to_le_bytes());
            out.extend_from_slice(&total.to_le_bytes());
            out.extend_from_slice(&used.to_le_bytes());
            out.extend_from_slice(&used.to_le_bytes());
            out.extend_from_slice(&(bs as u32).to_le_bytes());
            out.extend_from_slice(&18u32.to_le_bytes());
            out.extend_from_slice(&2u16.to_le_bytes());
            out.extend_from_slice(&64u16.to_le_bytes());
            out.extend_from_slice(&mode.to_le_bytes());
            let size: u16 = match mode {
                0 => 0,
                0x20 => 4,
                0x30 => 8,
                _ => 16,
            };
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&per.to_le_bytes());
            out.push(1);
            out.push(1);
            let c = crc32(!0, &out);
            out.extend_from_slice(&c.to_le_bytes());
            let mut bits = vec![0u8; total.div_ceil(8) as usize];
            for (i, b) in blocks.iter().enumerate() {
                if b.is_some() {
                    bits[i / 8] |= 1 << (i % 8);
                }
            }
            out.extend_from_slice(&bits);
            out.extend_from_slice(&crc32(!0, &bits).to_le_bytes());
        } else {
            out.extend_from_slice(b"partclone-image");
            let mut fs = [0u8; 15];
            fs[..5].copy_from_slice(b"EXTFS");
            out.extend_from_slice(&fs);
            out.extend_from_slice(b"0001\0\0");
            out.extend_from_slice(&(bs as i32).to_le_bytes());
            out.extend_from_slice(&(total * bs as u64).to_le_bytes());
            out.extend_from_slice(&total.to_le_bytes());
            out.extend_from_slice(&used.to_le_bytes());
            out.extend_from_slice(&[0u8; 4096]);
            for b in blocks {
                out.push(b.is_some() as u8);
            }
            out.extend_from_slice(BIT_MAGIC);
        }
        let mode = if version == 1 {
            ChecksumMode::Crc32V1
        } else {
            match mode {
                0 => ChecksumMode::None,
                0x20 => ChecksumMode::Crc32,
                0x30 => ChecksumMode::Xxh64,
                _ => ChecksumMode::Xxh128,
            }
        };
        let mut run = Running::new(mode);
        let mut n = 0;
        for b in blocks.iter().flatten() {
            out.extend_from_slice(b);
            run.update(b);
            n += 1;
            if per > 0 && n == per {
                out.extend_from_slice(&run.digest());
                if pad {
                    out.extend_from_slice(&[0; 4]);
                }
                if version == 2 {
                    run = Running::new(mode);
                }
                n = 0;
            }
        }
        if per > 0 && n > 0 {
            out.extend_from_slice(&run.digest());
        }
        out
    }

    fn blocks(bs: usize) -> Vec<Option<Vec<u8>>> {
        (0..20u8)
            .map(|i| {
                (i % 3 != 1).then(|| {
                    (0..bs)
                        .map(|j| i.wrapping_mul(31).wrapping_add(j as u8))
                        .collect()
                })
            })
            .collect()
    }

    fn restore_all(img: &[u8]) -> Result<(Header, Restored, Vec<u8>), PartcloneError> {
        let mut disk = Vec::new();
        let mut w = |off: u64, data: &[u8]| {
            let end = off as usize + data.len();
            if disk.len() < end {
                disk.resize(end, 0);
            }
            disk[off as usize..end].copy_from_slice(data);
            Ok(())
        };
        let (h, r) = restore(&mut &img[..], &mut w)?;
        Ok((h, r, disk))
    }

    fn want(bs: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for b in blocks(bs) {
            v.extend(b.unwrap_or(vec![0; bs]));
        }
        v
    }

    #[test]
    fn format_0002_with_each_checksum_restores_the_used_blocks() {
        for (mode, per) in [(0x20u16, 4u32), (0x20, 1), (0x00, 0), (0x30, 3), (0x31, 5)] {
            let img = image(2, 512, &blocks(512), per, mode, false);
            let (h, r, disk) = restore_all(&img).unwrap();
            assert_eq!(h.fs, "EXTFS");
            assert_eq!(r.blocks, 13);
            let mut expect = want(512);
            expect.truncate(disk.len());
            assert_eq!(disk, expect, "mode {mode:#x}");
            assert_eq!(
                r.checksums,
                if per == 0 {
                    0
                } else {
                    13u64.div_ceil(per as u64)
                }
            );
        }
    }

    #[test]
    fn format_0001_and_its_64_bit_padding_restore() {
        for pad in [false, true] {
            let img = image(1, 512, &blocks(512), 1, 0, pad);
            let (h, r, disk) = restore_all(&img).unwrap();
            assert_eq!(h.version, 1);
            assert_eq!(r.checksums, 13, "pad {pad}");
            let mut expect = want(512);
            expect.truncate(disk.len());
            assert_eq!(disk, expect, "pad {pad}");
        }
    }

    #[test]
    fn damage_is_named_never_written_through() {
        let img = image(2, 512, &blocks(512), 4, 0x20, false);
        // A flipped data byte: the group's checksum differs.
        let mut bad = img.clone();
        let n = bad.len();
        bad[n - 700] ^= 1;
        assert!(matches!(
            restore_all(&bad),
            Err(PartcloneError::Checksum { .. })
        ));
        // Cut short.
        assert!(matches!(
            restore_all(&img[..img.len() - 600]),
            Err(PartcloneError::Truncated { .. })
        ));
        // The header and the bitmap carry their own checksums.
        let mut bad = img.clone();
        bad[60] ^= 1;
        assert!(matches!(
            restore_all(&bad),
            Err(PartcloneError::HeaderChecksum)
        ));
        let mut bad = img.clone();
        bad[V2_DESC] ^= 1;
        assert!(matches!(restore_all(&bad), Err(PartcloneError::Bitmap(_))));
        assert!(matches!(
            restore_all(b"not an image at all"),
            Err(PartcloneError::NotPartclone)
        ));
    }
}
