//! The files inside a piece of an image, read without mounting anything: list a directory,
//! take one file. ext2, ext3 and ext4 are read with `ext4-view` (Google's read-only ext4
//! reader, which checks what it reads); the other filesystems are not read here yet and are
//! refused by name (`drover image mount` and the filesystem's own driver open them).
//!
//! Paths are absolute within the filesystem (`/etc/hostname`); symbolic links are followed
//! by `get`, and listed as links by `ls`.

use std::io::{self, Read, Write};

use crate::device::BlockDevice;
use crate::fs::FsKind;

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device node, FIFO or socket.
    Other,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// Its name in the directory.
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
    /// Its size in bytes.
    pub size: u64,
    /// Its permission bits, where the filesystem has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// Why files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The filesystem is not one this reads.
    #[error(
        "{0} filesystems are not browsed here (mount the image and use the filesystem's driver)"
    )]
    Unsupported(FsKind),
    /// The path names nothing.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// A file was asked of a directory, or a listing of a file.
    #[error("{path}: {why}")]
    Kind {
        /// The path.
        path: String,
        /// What it is instead.
        why: &'static str,
    },
    /// The filesystem is damaged or the read failed.
    #[error("{0}")]
    Read(String),
}

/// A filesystem opened for reading files.
pub trait FileTree {
    /// The entries of directory `path`, by name (without `.` and `..`).
    fn list(&self, path: &str) -> Result<Vec<Entry>, FilesError>;
    /// What `path` is (following a final symbolic link).
    fn stat(&self, path: &str) -> Result<Entry, FilesError>;
    /// Copies regular file `path` into `out`; returns its size.
    fn copy(&self, path: &str, out: &mut dyn Write) -> Result<u64, FilesError>;
}

/// Opens the `kind` filesystem on `dev` (a piece of an image).
pub fn open(dev: Box<dyn BlockDevice>, kind: FsKind) -> Result<Box<dyn FileTree>, FilesError> {
    match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => Ok(Box::new(Ext::load(dev)?)),
        other => Err(FilesError::Unsupported(other)),
    }
}

/// A device as ext4-view reads it.
struct ExtSource(Box<dyn BlockDevice>);

impl ext4_view::Ext4Read for ExtSource {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(self.0.read_at(dst, start_byte)?)
    }
}

struct Ext(ext4_view::Ext4);

impl Ext {
    fn load(dev: Box<dyn BlockDevice>) -> Result<Self, FilesError> {
        ext4_view::Ext4::load(Box::new(ExtSource(dev)))
            .map(Self)
            .map_err(|e| FilesError::Read(format!("ext4: {e}")))
    }

    fn err(path: &str, e: ext4_view::Ext4Error) -> FilesError {
        match e {
            ext4_view::Ext4Error::NotFound => FilesError::NotFound(path.into()),
            ext4_view::Ext4Error::NotADirectory => FilesError::Kind {
                path: path.into(),
                why: "not a directory",
            },
            ext4_view::Ext4Error::IsADirectory => FilesError::Kind {
                path: path.into(),
                why: "a directory",
            },
            ext4_view::Ext4Error::IsASpecialFile => FilesError::Kind {
                path: path.into(),
                why: "a special file",
            },
            e => FilesError::Read(format!("{path}: {e}")),
        }
    }

    fn entry(name: String, m: &ext4_view::Metadata) -> Entry {
        let t = m.file_type();
        Entry {
            name,
            kind: if t.is_dir() {
                EntryKind::Dir
            } else if t.is_symlink() {
                EntryKind::Symlink
            } else if t.is_regular_file() {
                EntryKind::File
            } else {
                EntryKind::Other
            },
            size: m.len(),
            mode: Some(u32::from(m.mode()) & 0o7777),
        }
    }
}

impl FileTree for Ext {
    fn list(&self, path: &str) -> Result<Vec<Entry>, FilesError> {
        let mut out = Vec::new();
        for e in self.0.read_dir(path).map_err(|e| Self::err(path, e))? {
            let e = e.map_err(|e| Self::err(path, e))?;
            let name = e.file_name().display().to_string();
            if name == "." || name == ".." {
                continue;
            }
            let m = e.metadata().map_err(|e| Self::err(path, e))?;
            out.push(Self::entry(name, &m));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn stat(&self, path: &str) -> Result<Entry, FilesError> {
        let m = self.0.metadata(path).map_err(|e| Self::err(path, e))?;
        let name = path.rsplit('/').next().unwrap_or(path).to_string();
        Ok(Self::entry(name, &m))
    }

    fn copy(&self, path: &str, out: &mut dyn Write) -> Result<u64, FilesError> {
        let mut f = self.0.open(path).map_err(|e| Self::err(path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FilesError::Read(format!("{path}: {e}"))),
            };
            out.write_all(&buf[..n])
                .map_err(|e| FilesError::Read(format!("writing {path}: {e}")))?;
            total += n as u64;
        }
    }
}
