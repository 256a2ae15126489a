//! Encryption at rest: a store whose objects the storage cannot read.
//!
//! With a key, every chunk and manifest is sealed with AES-256-GCM (a random 96-bit nonce per
//! object; the object's key in the store is the associated data, so an object moved to
//! another name does not open) and chunks are named by a keyed BLAKE3 of their plaintext hash,
//! so the names say nothing of the contents while equal chunks still share one object under
//! one key. Manifests are named by a keyed hash of their bytes.
//!
//! The store's `drover-store.json` says it is encrypted, how a passphrase becomes its key
//! (Argon2id and the store's salt) and holds a sealed check value: a wrong key is named as
//! such at open, never read as garbage. The key itself is never stored.
//!
//! ```text
//! sealed object: "DRVE" | nonce (12) | AES-256-GCM ciphertext and tag (16)
//! ```

use std::path::Path;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use crate::manifest::Hash;

/// Magic of a sealed object.
const MAGIC: &[u8; 4] = b"DRVE";
const NONCE: usize = 12;
/// What the check value seals.
const CHECK: &[u8] = b"drover store key check v1";
/// The object holding the store's settings.
pub const CONFIG_KEY: &str = "drover-store.json";

/// Argon2id cost of a passphrase: 64 MiB, 3 passes, 1 lane (about a quarter second).
const ARGON2_M_KIB: u32 = 64 * 1024;
const ARGON2_T: u32 = 3;
const ARGON2_P: u32 = 1;

/// How a store's key is given.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// 32 bytes, from a file of 64 hex digits.
    Key([u8; 32]),
    /// A passphrase, stretched with Argon2id and the store's salt.
    Passphrase(Vec<u8>),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Key(_) => "Secret::Key(..)",
            Self::Passphrase(_) => "Secret::Passphrase(..)",
        })
    }
}

/// Why a key file or passphrase file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not 64 hex digits.
    #[error(
        "{path} is not a key: it must hold 64 hex digits (32 random bytes), e.g. made by \
         `drover image keygen {path}`"
    )]
    NotAKey {
        /// The file.
        path: String,
    },
    /// The passphrase file is empty.
    #[error("{path} holds no passphrase")]
    Empty {
        /// The file.
        path: String,
    },
}

impl Secret {
    /// The key in `path`: 64 hex digits, surrounding whitespace ignored.
    pub fn key_file(path: &Path) -> Result<Self, SecretError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: p.clone(),
            source,
        })?;
        let hex = text.trim();
        if hex.len() != 64 {
            return Err(SecretError::NotAKey { path: p });
        }
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| SecretError::NotAKey { path: p.clone() })?;
        }
        Ok(Self::Key(key))
    }

    /// The passphrase in `path`: its first line.
    pub fn passphrase_file(path: &Path) -> Result<Self, SecretError> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
            path: p.clone(),
            source,
        })?;
        let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Err(SecretError::Empty { path: p });
        }
        Ok(Self::Passphrase(line.to_vec()))
    }

    /// A new random key as 64 hex digits and a newline (what `key_file` reads).
    pub fn new_key_hex() -> String {
        let k = Aes256Gcm::generate_key(&mut OsRng);
        let mut s: String = k.iter().map(|b| format!("{b:02x}")).collect();
        s.push('\n');
        s
    }
}

/// The store's settings object.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoreConfig {
    /// Layout version.
    pub(crate) format: u32,
    /// Present when the store is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) encryption: Option<Encryption>,
}

/// How an encrypted store's key is made and checked.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Encryption {
    /// Always `aes-256-gcm`.
    pub(crate) cipher: String,
    /// `argon2id` when the key is a passphrase's, `key` when given as 32 bytes.
    pub(crate) kdf: String,
    /// Argon2id salt, hex.
    #[serde(default)]
    pub(crate) salt: String,
    /// Argon2id memory (KiB), passes, lanes.
    #[serde(default)]
    pub(crate) m_kib: u32,
    #[serde(default)]
    pub(crate) t: u32,
    #[serde(default)]
    pub(crate) p: u32,
    /// [`CHECK`] sealed with the key, hex.
    pub(crate) check: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// An open key: seals and opens objects, names chunks and manifests.
#[derive(Clone)]
pub struct Crypt {
    names: [u8; 32],
    aead: Aes256Gcm,
}

impl std::fmt::Debug for Crypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crypt(..)")
    }
}

/// Why a store's key did not open it.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key does not open the store.
    #[error("the key given does not open this store (it was encrypted with another key)")]
    Wrong,
    /// The store's settings are damaged or of an unknown kind.
    #[error("the store's {CONFIG_KEY} is not one drover reads: {0}")]
    BadConfig(String),
}

impl Crypt {
    fn from_master(master: &[u8; 32]) -> Self {
        let names = blake3::derive_key("drover 2026-12 store object names", master);
        let enc = blake3::derive_key("drover 2026-12 store AES-256-GCM", master);
        Self {
            names,
            aead: Aes256Gcm::new((&enc).into()),
        }
    }

    fn master(secret: &Secret, e: &Encryption) -> Result<[u8; 32], KeyError> {
        match secret {
            Secret::Key(k) => Ok(*k),
            Secret::Passphrase(p) => {
                let salt = unhex(&e.salt).ok_or_else(|| KeyError::BadConfig("salt".into()))?;
                let params = argon2::Params::new(e.m_kib, e.t, e.p, Some(32))
                    .map_err(|err| KeyError::BadConfig(format!("argon2 settings: {err}")))?;
                let mut out = [0u8; 32];
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                    .hash_password_into(p, &salt, &mut out)
                    .map_err(|err| KeyError::BadConfig(format!("argon2: {err}")))?;
                Ok(out)
            }
        }
    }

    /// New settings for a store encrypted with `secret` (a fresh salt for a passphrase).
    pub(crate) fn create(secret: &Secret) -> (Self, StoreConfig) {
        let mut e = Encryption {
            cipher: "aes-256-gcm".into(),
            kdf: "key".into(),
            salt: String::new(),
            m_kib: 0,
            t: 0,
            p: 0,
            check: String::new(),
        };
        if let Secret::Passphrase(_) = secret {
            let salt = Aes256Gcm::generate_nonce(&mut OsRng);
            let more = Aes256Gcm::generate_nonce(&mut OsRng);
            e.kdf = "argon2id".into();
            e.salt = hex(&[&salt[..], &more[..4]].concat());
            (e.m_kib, e.t, e.p) = (ARGON2_M_KIB, ARGON2_T, ARGON2_P);
        }
        let master = Self::master(secret, &e).expect("fresh argon2 settings are valid");
        let c = Self::from_master(&master);
        e.check = hex(&c.seal(CHECK, CONFIG_KEY));
        (
            c,
            StoreConfig {
                format: 1,
                encryption: Some(e),
            },
        )
    }

    /// Opens the store described by `e` with `secret`.
    pub(crate) fn open_with(secret: &Secret, e: &Encryption) -> Result<Self, KeyError> {
        if e.cipher != "aes-256-gcm" {
            return Err(KeyError::BadConfig(format!("cipher {:?}", e.cipher)));
        }
        match (e.kdf.as_str(), secret) {
            ("key", Secret::Key(_)) | ("argon2id", Secret::Passphrase(_)) => {}
            ("key", Secret::Passphrase(_)) | ("argon2id", Secret::Key(_)) => {
                return Err(KeyError::Wrong)
            }
            (k, _) => return Err(KeyError::BadConfig(format!("kdf {k:?}"))),
        }
        let c = Self::from_master(&Self::master(secret, e)?);
        let sealed = unhex(&e.check).ok_or_else(|| KeyError::BadConfig("check".into()))?;
        match c.open(&sealed, CONFIG_KEY) {
            Some(p) if p == CHECK => Ok(c),
            _ => Err(KeyError::Wrong),
        }
    }

    /// The name of chunk `h` in the store.
    pub fn chunk_name(&self, h: &Hash) -> Hash {
        Hash(*blake3::keyed_hash(&self.names, &h.0).as_bytes())
    }

    /// The id of a manifest whose plaintext is `bytes`.
    pub fn manifest_id(&self, bytes: &[u8]) -> Hash {
        Hash(*blake3::keyed_hash(&self.names, bytes).as_bytes())
    }

    /// `plain` sealed for the object `key`.
    pub fn seal(&self, plain: &[u8], key: &str) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: key.as_bytes(),
                },
            )
            .expect("AES-GCM seals any length an object has");
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE + ct.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// The plaintext of object `key`, or `None` when it was not sealed by this key for this
    /// name (tampered, truncated, another key, or not sealed at all).
    pub fn open(&self, sealed: &[u8], key: &str) -> Option<Vec<u8>> {
        let rest = sealed.strip_prefix(MAGIC)?;
        if rest.len() < NONCE + 16 {
            return None;
        }
        let (nonce, ct) = rest.split_at(NONCE);
        self.aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: key.as_bytes(),
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_objects_open_only_with_their_key_and_name() {
        let (c, cfg) = Crypt::create(&Secret::Key([7; 32]));
        let sealed = c.seal(b"plain text", "chunks/ab/x");
        assert!(!sealed.windows(5).any(|w| w == b"plain"));
        assert_eq!(c.open(&sealed, "chunks/ab/x").unwrap(), b"plain text");
        assert!(c.open(&sealed, "chunks/ab/y").is_none());
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert!(c.open(&bad, "chunks/ab/x").is_none());
        let e = cfg.encryption.unwrap();
        assert!(Crypt::open_with(&Secret::Key([7; 32]), &e).is_ok());
        assert!(matches!(
            Crypt::open_with(&Secret::Key([8; 32]), &e),
            Err(KeyError::Wrong)
        ));
        let other = Crypt::open_with(&Secret::Key([7; 32]), &e).unwrap();
        let h = Hash::of(b"chunk");
        assert_eq!(c.chunk_name(&h), other.chunk_name(&h));
        assert_ne!(c.chunk_name(&h), h);
    }

    #[test]
    fn passphrases_go_through_the_stores_salt() {
        let pass = Secret::Passphrase(b"correct horse".to_vec());
        let (c, cfg) = Crypt::create(&pass);
        let e = cfg.encryption.unwrap();
        assert_eq!(e.kdf, "argon2id");
        let again = Crypt::open_with(&pass, &e).unwrap();
        assert_eq!(
            c.chunk_name(&Hash::of(b"x")),
            again.chunk_name(&Hash::of(b"x"))
        );
        assert!(matches!(
            Crypt::open_with(&Secret::Passphrase(b"wrong".to_vec()), &e),
            Err(KeyError::Wrong)
        ));
        assert!(matches!(
            Crypt::open_with(&Secret::Key([0; 32]), &e),
            Err(KeyError::Wrong)
        ));
    }

    #[test]
    fn key_files_hold_64_hex_digits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, Secret::new_key_hex()).unwrap();
        assert!(matches!(Secret::key_file(&p), Ok(Secret::Key(_))));
        std::fs::write(&p, "abc\n").unwrap();
        let e = Secret::key_file(&p).unwrap_err().to_string();
        assert!(e.contains("64 hex digits"), "{e}");
        std::fs::write(&p, "zz".repeat(32)).unwrap();
        assert!(Secret::key_file(&p).is_err());
    }
}
