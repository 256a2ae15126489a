//! LUKS1 and LUKS2: with a key, the inner filesystem's used blocks, stored as ciphertext.
//!
//! Without a key nothing inside can be read: the header and key slots are kept and the
//! encrypted area is the raw copy (the caller's fallback, with a warning that says so). With a
//! key (a passphrase, as `cryptsetup --key-file` reads one: the file's bytes, whole) the reader
//! unlocks a key slot (PBKDF2 or Argon2, the anti-forensic merge, AES-XTS), checks the volume key
//! against the header's digest, and reads the inner filesystem through a decrypting view with
//! that filesystem's own reader. What is stored is the header, every key slot area and the
//! *ciphertext* of the encryption sectors that hold used blocks: plaintext never leaves the
//! reader, and the restored volume opens with the same passphrases.
//!
//! Supported: the `aes-xts-plain64` cipher (the default of both versions) with 256- or 512-bit
//! keys, 512- to 4096-byte encryption sectors, one crypt segment. Anything else (another cipher,
//! LUKS2 integrity, a reencryption in progress) is refused by name, and the raw copy takes over.
//! The LUKS2 header's own checksum (SHA-256) is checked before its JSON is trusted.

use aes::cipher::KeyInit;
use aes::{Aes128, Aes256};
use serde_json::Value as Json;
use sha2::Digest;
use xts_mode::Xts128;

use super::{corrupt, FsError, FsKind, FsReport, ScanOptions, Volume};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const FS: FsKind = FsKind::Luks;
const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";

#[allow(clippy::big_endian_bytes)] // LUKS's binary headers are big-endian.
fn be_u64(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8)
        .map_or(0, |s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
}

#[allow(clippy::big_endian_bytes)] // LUKS's binary headers are big-endian.
fn be_u32(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map_or(0, |s| u32::from_be_bytes(s.try_into().expect("4 bytes")))
}

/// A NUL-padded string field.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap_or_default()).into_owned()
}

fn unsupported(feature: impl Into<String>) -> FsError {
    FsError::Unsupported {
        fs: FS,
        feature: feature.into(),
    }
}

/// The hashes LUKS names (PBKDF2's and the AF splitter's).
#[derive(Clone, Copy)]
enum Hash {
    Sha1,
    Sha256,
    Sha512,
}

impl Hash {
    fn parse(name: &str) -> Result<Self, FsError> {
        match name {
            "sha1" => Ok(Self::Sha1),
            "sha256" => Ok(Self::Sha256),
            "sha512" => Ok(Self::Sha512),
            other => Err(unsupported(format!("hash {other}"))),
        }
    }

    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut h = D::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().to_vec()
        }
        match self {
            Self::Sha1 => run::<sha1::Sha1>(parts),
            Self::Sha256 => run::<sha2::Sha256>(parts),
            Self::Sha512 => run::<sha2::Sha512>(parts),
        }
    }

    fn pbkdf2(self, pass: &[u8], salt: &[u8], rounds: u32, out: &mut [u8]) {
        use pbkdf2::pbkdf2_hmac;
        match self {
            Self::Sha1 => pbkdf2_hmac::<sha1::Sha1>(pass, salt, rounds, out),
            Self::Sha256 => pbkdf2_hmac::<sha2::Sha256>(pass, salt, rounds, out),
            Self::Sha512 => pbkdf2_hmac::<sha2::Sha512>(pass, salt, rounds, out),
        }
    }
}

/// AES-XTS with a 256- or 512-bit key (two AES-128 or AES-256 keys).
enum Xts {
    A128(Box<Xts128<Aes128>>),
    A256(Box<Xts128<Aes256>>),
}

impl Xts {
    fn new(cipher: &str, key: &[u8]) -> Result<Self, FsError> {
        if cipher != "aes-xts-plain64" {
            return Err(unsupported(format!("cipher {cipher}")));
        }
        let (a, b) = key.split_at(key.len() / 2);
        match key.len() {
            32 => Ok(Self::A128(Box::new(Xts128::new(
                Aes128::new_from_slice(a).expect("16 bytes"),
                Aes128::new_from_slice(b).expect("16 bytes"),
            )))),
            64 => Ok(Self::A256(Box::new(Xts128::new(
                Aes256::new_from_slice(a).expect("32 bytes"),
                Aes256::new_from_slice(b).expect("32 bytes"),
            )))),
            n => Err(unsupported(format!("a {}-bit XTS key", n * 8))),
        }
    }

    /// Decrypts whole `sector`-byte units in place; the first one's IV is `iv`, and the IV
    /// counts 512-byte sectors (plain64), whatever the unit.
    fn decrypt(&self, buf: &mut [u8], sector: usize, iv: u64) {
        for (i, s) in buf.chunks_exact_mut(sector).enumerate() {
            let tweak = u128::from(iv + (i * sector / 512) as u64).to_le_bytes();
            match self {
                Self::A128(x) => x.decrypt_sector(s, tweak),
                Self::A256(x) => x.decrypt_sector(s, tweak),
            }
        }
    }
}

/// LUKS's anti-forensic merge: `stripes` blocks of `len` bytes to one key.
#[allow(clippy::big_endian_bytes)] // the diffusion hashes a big-endian block index
fn af_merge(material: &[u8], len: usize, stripes: usize, hash: Hash) -> Vec<u8> {
    let mut d = vec![0u8; len];
    for i in 0..stripes {
        for (a, b) in d.iter_mut().zip(&material[i * len..(i + 1) * len]) {
            *a ^= b;
        }
        if i + 1 < stripes {
            // Diffuse: each hash-sized block replaced by hash(block index, block).
            let mut out = Vec::with_capacity(len);
            for (j, block) in d.chunks(hash.digest(&[]).len()).enumerate() {
                let h = hash.digest(&[&(j as u32).to_be_bytes(), block]);
                out.extend_from_slice(&h[..block.len()]);
            }
            d = out;
        }
    }
    d
}

/// The most work a header may ask of a KDF before drover refuses it as implausible: a
/// damaged or hostile header must not keep a capture busy for hours or exhaust the agent's
/// memory. cryptsetup's own ceilings are 4 GiB of Argon2 memory and PBKDF2 rounds
/// benchmarked to about 2 s (a few million).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KdfLimit {
    /// PBKDF2 rounds (key slots and the volume key digest).
    pub(crate) iterations: u32,
    /// Argon2 memory, KiB.
    pub(crate) memory_kib: u32,
    /// Argon2 passes.
    pub(crate) time: u32,
    /// Argon2 lanes.
    pub(crate) lanes: u32,
}

impl KdfLimit {
    /// For real volumes.
    pub(crate) const REAL: Self = Self {
        iterations: 100_000_000,
        memory_kib: 4 << 20,
        time: 1000,
        lanes: 64,
    };
    /// For the fuzz entry points: a few milliseconds of work at most.
    pub(crate) const FUZZ: Self = Self {
        iterations: 1000,
        memory_kib: 64,
        time: 4,
        lanes: 4,
    };

    fn check(&self, what: &str, iterations: u32) -> Result<(), FsError> {
        if iterations == 0 || iterations > self.iterations {
            return Err(corrupt(FS, format!("{what}: {iterations} PBKDF2 rounds")));
        }
        Ok(())
    }
}

impl Default for KdfLimit {
    fn default() -> Self {
        Self::REAL
    }
}

/// What a key slot needs to be tried.
struct Slot {
    kdf: Kdf,
    /// Key material: where, how long, and its cipher and key size.
    offset: u64,
    key_size: usize,
    cipher: String,
    stripes: usize,
    af_hash: Hash,
}

enum Kdf {
    Pbkdf2 {
        hash: Hash,
        iterations: u32,
        salt: Vec<u8>,
    },
    Argon2 {
        id: bool,
        time: u32,
        memory: u32,
        cpus: u32,
        salt: Vec<u8>,
    },
}

/// How the volume key is checked.
struct KeyDigest {
    hash: Hash,
    iterations: u32,
    salt: Vec<u8>,
    digest: Vec<u8>,
}

/// A parsed header: the encrypted segment and the ways to its key.
struct Header {
    version: u16,
    /// Bytes kept whole: header(s) and key slot areas.
    meta_end: u64,
    data_offset: u64,
    /// Bytes of the segment (`None`: to the device's end).
    data_size: Option<u64>,
    sector: usize,
    iv_tweak: u64,
    cipher: String,
    key_size: usize,
    slots: Vec<Slot>,
    digest: KeyDigest,
    uuid: String,
    label: Option<String>,
}

fn b64(v: &Json, what: &str) -> Result<Vec<u8>, FsError> {
    use base64::Engine;
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or_else(|| corrupt(FS, format!("{what} is not base64")))
}

/// A JSON number, or a decimal string as LUKS2 writes its 64-bit fields.
fn num(v: &Json, what: &str) -> Result<u64, FsError> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| corrupt(FS, format!("{what} is not a number")))
}

fn luks1(h: &[u8]) -> Result<Header, FsError> {
    let cipher = format!("{}-{}", text(&h[8..40]), text(&h[40..72]));
    let hash = Hash::parse(&text(&h[72..104]))?;
    let key_size = be_u32(h, 108) as usize;
    let mut slots = Vec::new();
    let mut meta_end = 4096;
    for i in 0..8 {
        let s = &h[208 + i * 48..208 + (i + 1) * 48];
        if be_u32(s, 0) != 0x00AC_71F3 {
            continue;
        }
        let offset = u64::from(be_u32(s, 40)) * 512;
        let stripes = be_u32(s, 44) as usize;
        meta_end = meta_end.max(offset + (key_size * stripes) as u64);
        slots.push(Slot {
            kdf: Kdf::Pbkdf2 {
                hash,
                iterations: be_u32(s, 4),
                salt: s[8..40].to_vec(),
            },
            offset,
            key_size,
            cipher: cipher.clone(),
            stripes,
            af_hash: hash,
        });
    }
    Ok(Header {
        version: 1,
        meta_end,
        data_offset: u64::from(be_u32(h, 104)) * 512,
        data_size: None,
        sector: 512,
        iv_tweak: 0,
        cipher,
        key_size,
        slots,
        digest: KeyDigest {
            hash,
            iterations: be_u32(h, 164),
            salt: h[132..164].to_vec(),
            digest: h[112..132].to_vec(),
        },
        uuid: text(&h[168..208]),
        label: None,
    })
}

fn luks2(dev: &dyn BlockDevice, h: &[u8]) -> Result<Header, FsError> {
    let hdr_size = be_u64(h, 8);
    if !(4096 + 1024..=4 << 20).contains(&hdr_size) || hdr_size > dev.len() {
        return Err(corrupt(FS, format!("header of {hdr_size} bytes")));
    }
    let mut area = read_vec(dev, 0, hdr_size as usize)?;
    let alg = text(&area[72..104]);
    if alg != "sha256" {
        return Err(unsupported(format!("header checksum {alg}")));
    }
    let want = area[448..480].to_vec();
    area[448..512].fill(0);
    if Hash::Sha256.digest(&[&area]) != want {
        return Err(corrupt(FS, "header checksum mismatch"));
    }
    let json_text = text(&area[4096..]);
    let j: Json =
        serde_json::from_str(&json_text).map_err(|e| corrupt(FS, format!("header JSON: {e}")))?;
    let segs = j["segments"]
        .as_object()
        .ok_or_else(|| corrupt(FS, "no segments"))?;
    let [(_, seg)] = segs.iter().collect::<Vec<_>>()[..] else {
        return Err(unsupported(format!(
            "{} data segments (a reencryption in progress?)",
            segs.len()
        )));
    };
    if seg["type"] != "crypt" {
        return Err(unsupported(format!("segment type {}", seg["type"])));
    }
    if !seg["integrity"].is_null() {
        return Err(unsupported("authenticated encryption (dm-integrity)"));
    }
    let cipher = seg["encryption"].as_str().unwrap_or_default().to_string();
    let sector = num(&seg["sector_size"], "sector_size")? as usize;
    if !(512..=4096).contains(&sector) || !sector.is_power_of_two() {
        return Err(corrupt(FS, format!("encryption sector of {sector} bytes")));
    }
    let data_size = match &seg["size"] {
        Json::String(s) if s == "dynamic" => None,
        v => Some(num(v, "segment size")?),
    };
    // The one digest, and the key slots it covers.
    let (_, dg) = j["digests"]
        .as_object()
        .and_then(|d| d.iter().next())
        .ok_or_else(|| corrupt(FS, "no digest"))?;
    if dg["type"] != "pbkdf2" {
        return Err(unsupported(format!("digest type {}", dg["type"])));
    }
    let digest = KeyDigest {
        hash: Hash::parse(dg["hash"].as_str().unwrap_or_default())?,
        iterations: num(&dg["iterations"], "digest iterations")? as u32,
        salt: b64(&dg["salt"], "digest salt")?,
        digest: b64(&dg["digest"], "digest")?,
    };
    let mut slots = Vec::new();
    let mut key_size = 0;
    for (_, ks) in j["keyslots"].as_object().into_iter().flatten() {
        if ks["type"] != "luks2" || ks["af"]["type"] != "luks1" {
            continue;
        }
        let kdf = &ks["kdf"];
        let kdf = match kdf["type"].as_str() {
            Some("pbkdf2") => Kdf::Pbkdf2 {
                hash: Hash::parse(kdf["hash"].as_str().unwrap_or_default())?,
                iterations: num(&kdf["iterations"], "iterations")? as u32,
                salt: b64(&kdf["salt"], "key slot salt")?,
            },
            Some(t @ ("argon2i" | "argon2id")) => Kdf::Argon2 {
                id: t == "argon2id",
                time: num(&kdf["time"], "argon2 time")? as u32,
                memory: num(&kdf["memory"], "argon2 memory")? as u32,
                cpus: num(&kdf["cpus"], "argon2 cpus")? as u32,
                salt: b64(&kdf["salt"], "key slot salt")?,
            },
            other => return Err(unsupported(format!("key slot KDF {other:?}"))),
        };
        key_size = num(&ks["key_size"], "key size")? as usize;
        slots.push(Slot {
            kdf,
            offset: num(&ks["area"]["offset"], "key slot offset")?,
            key_size: num(&ks["area"]["key_size"], "key slot key size")? as usize,
            cipher: ks["area"]["encryption"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            stripes: num(&ks["af"]["stripes"], "stripes")? as usize,
            af_hash: Hash::parse(ks["af"]["hash"].as_str().unwrap_or_default())?,
        });
    }
    let keyslots_size = num(&j["config"]["keyslots_size"], "keyslots_size")?;
    let label = text(&area[24..72]);
    Ok(Header {
        version: 2,
        // Both header copies, then the key slot area.
        meta_end: 2 * hdr_size + keyslots_size,
        data_offset: num(&seg["offset"], "segment offset")?,
        data_size,
        sector,
        iv_tweak: num(&seg["iv_tweak"], "iv_tweak")?,
        cipher,
        key_size,
        slots,
        digest,
        uuid: text(&area[168..208]),
        label: (!label.is_empty()).then_some(label),
    })
}

fn header(dev: &dyn BlockDevice) -> Result<Header, FsError> {
    let h = read_vec(dev, 0, 4096.min(dev.len() as usize))?;
    if h.len() < 592 || &h[..6] != MAGIC {
        return Err(corrupt(FS, "no LUKS header"));
    }
    match be_u32(&h, 4) & 0xFFFF {
        1 => luks1(&h),
        2 => luks2(dev, &h),
        v => Err(unsupported(format!("LUKS version {v}"))),
    }
}

/// The volume key, from the first key slot `pass` opens.
fn unlock(
    dev: &dyn BlockDevice,
    h: &Header,
    pass: &[u8],
    limit: KdfLimit,
) -> Result<Option<Vec<u8>>, FsError> {
    limit.check("the volume key digest", h.digest.iterations)?;
    for s in &h.slots {
        if s.key_size == 0 || s.key_size > 128 || s.stripes == 0 || s.stripes > 64_000 {
            return Err(corrupt(FS, "key slot geometry"));
        }
        let mut derived = vec![0u8; s.key_size];
        match &s.kdf {
            Kdf::Pbkdf2 {
                hash,
                iterations,
                salt,
            } => {
                limit.check("a key slot", *iterations)?;
                hash.pbkdf2(pass, salt, *iterations, &mut derived);
            }
            Kdf::Argon2 {
                id,
                time,
                memory,
                cpus,
                salt,
            } => {
                if *memory > limit.memory_kib || *time > limit.time || *cpus > limit.lanes {
                    return Err(corrupt(
                        FS,
                        format!(
                            "a key slot asks Argon2 for {memory} KiB, {time} passes, {cpus} lanes"
                        ),
                    ));
                }
                let params = argon2::Params::new(*memory, *time, *cpus, Some(s.key_size))
                    .map_err(|e| corrupt(FS, format!("argon2 parameters: {e}")))?;
                let alg = if *id {
                    argon2::Algorithm::Argon2id
                } else {
                    argon2::Algorithm::Argon2i
                };
                argon2::Argon2::new(alg, argon2::Version::V0x13, params)
                    .hash_password_into(pass, salt, &mut derived)
                    .map_err(|e| corrupt(FS, format!("argon2: {e}")))?;
            }
        }
        let vk_len = h.key_size;
        let len = (vk_len * s.stripes).div_ceil(512) * 512;
        if s.offset
            .checked_add(len as u64)
            .is_none_or(|e| e > dev.len())
        {
            return Err(corrupt(FS, "key slot area past the device"));
        }
        let mut material = read_vec(dev, s.offset, len)?;
        Xts::new(&s.cipher, &derived)?.decrypt(&mut material, 512, 0);
        let key = af_merge(&material, vk_len, s.stripes, s.af_hash);
        let d = &h.digest;
        let mut check = vec![0u8; d.digest.len()];
        d.hash.pbkdf2(&key, &d.salt, d.iterations, &mut check);
        if check == d.digest {
            return Ok(Some(key));
        }
    }
    Ok(None)
}

/// The decrypted segment, read through the volume key.
struct Plain<'a> {
    dev: &'a dyn BlockDevice,
    xts: Xts,
    offset: u64,
    len: u64,
    sector: u64,
    iv_tweak: u64,
}

impl BlockDevice for Plain<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        // Whole encryption sectors around the request.
        let (s, e) = (
            offset / self.sector * self.sector,
            end.div_ceil(self.sector) * self.sector,
        );
        let mut tmp = read_vec(self.dev, self.offset + s, (e - s) as usize)?;
        self.xts
            .decrypt(&mut tmp, self.sector as usize, self.iv_tweak + s / 512);
        buf.copy_from_slice(&tmp[(offset - s) as usize..(end - s) as usize]);
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "a decrypted view is read only",
        ))
    }
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn len(&self) -> u64 {
        self.len
    }
}

pub(super) fn read(
    dev: &dyn BlockDevice,
    region: u64,
    opts: &ScanOptions,
) -> Result<FsReport, FsError> {
    let h = header(dev)?;
    let name = format!("LUKS{} volume {}", h.version, h.uuid);
    if opts.luks_keys.is_empty() {
        return Err(FsError::Locked {
            reason: format!(
                "{name}, opened without a key (give --luks-key-file to store only its used \
                 blocks); its header and key slots are kept"
            ),
        });
    }
    if h.meta_end > h.data_offset || h.data_offset >= dev.len() || h.sector as u64 > dev.len() {
        return Err(corrupt(
            FS,
            format!(
                "key slots end at {}, data starts at {}",
                h.meta_end, h.data_offset
            ),
        ));
    }
    let mut key = None;
    for k in &opts.luks_keys {
        if let Some(v) = unlock(dev, &h, k, opts.kdf_limit)? {
            key = Some(v);
            break;
        }
    }
    let key =
        key.ok_or_else(|| unsupported(format!("{name}: no key given opens any of its key slots")))?;
    let sector = h.sector as u64;
    let len = h
        .data_size
        .unwrap_or(dev.len() - h.data_offset)
        .min(dev.len() - h.data_offset)
        / sector
        * sector;
    let plain = Plain {
        dev,
        xts: Xts::new(&h.cipher, &key)?,
        offset: h.data_offset,
        len,
        sector,
        iv_tweak: h.iv_tweak,
    };
    let inner = super::scan_with(&plain, region, opts)?;
    if inner.report.kind == FsKind::Unknown {
        // The raw copy of plaintext would keep its zeros as holes, but their ciphertext is not
        // zero: only the whole encrypted area is exact.
        return Err(unsupported(format!(
            "{name} opened, but {}",
            inner
                .warning
                .unwrap_or_else(|| "its contents are not read".into())
        )));
    }
    // Header and key slots whole; the encryption sectors under the inner used blocks.
    let mut used = ExtentMap::new();
    used.push(0, h.data_offset);
    for e in inner.report.used.iter() {
        let s = e.start / sector * sector;
        let end = e.end().div_ceil(sector) * sector;
        used.push(h.data_offset + s, end.min(len) - s);
    }
    used.normalize();
    let mut extents = ExtentMap::new();
    extents.push(h.data_offset, len);
    let volume = Volume {
        name: format!("luks-{}", h.uuid),
        kind: inner.report.kind,
        detected: inner.detected,
        size: len,
        used_bytes: inner.report.used.total(),
        extents,
        label: inner.report.label.clone(),
        warning: inner.warning,
        // Ciphertext on the disk: nothing to open on its own.
        segments: Vec::new(),
    };
    let mut volumes = vec![volume];
    // An LVM PV inside: its volumes too, placed in this container's coordinates.
    for mut v in inner.report.volumes {
        v.extents = v.extents.shifted(h.data_offset);
        // Its bytes on the disk are ciphertext: it does not open on its own.
        v.segments.clear();
        volumes.push(v);
    }
    Ok(FsReport {
        kind: FS,
        block_size: h.sector as u32,
        fs_size: h.data_offset + len,
        used,
        label: h.label,
        volumes,
    })
}

#[cfg(test)]
#[path = "luks_tests.rs"]
mod tests;
