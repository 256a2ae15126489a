//! The files inside a piece of an image, read without mounting anything: list a directory,
//! take one file. ext2, ext3 and ext4 are read with `ext4-view` (Google's read-only ext4
//! reader, which checks what it reads), FAT12/16/32 with `fatfs` (long names included) over a
//! device that refuses every write, NTFS with `ntfs` (Colin Finck's read-only reader: a file's
//! unnamed data stream; NTFS's own `$` files are not listed), exFAT with our own small reader
//! ([`super::exfat_files`]: the `exfat-fs` crate refuses subdirectories Linux's exfat-fuse
//! writes); the other
//! filesystems are not read here yet and are refused by name (`drover image mount` and the
//! filesystem's own driver open them).
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
        FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32 => Ok(Box::new(Fat::load(dev)?)),
        FsKind::Ntfs => Ok(Box::new(Ntfs::load(dev)?)),
        FsKind::Exfat => Ok(Box::new(super::exfat_files::Exfat::load(dev)?)),
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
        copy_all(path, &mut f, out)
    }
}

/// A device as a read-only stream (what `fatfs` reads through): every write fails.
struct Stream {
    dev: Box<dyn BlockDevice>,
    pos: u64,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.dev.len().saturating_sub(self.pos)) as usize;
        self.dev.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Stream {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(crate::device::read_only("an image"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Seek for Stream {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let base = match to {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(d) => self.dev.len().checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = base.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

struct Fat(fatfs::FileSystem<Stream>);

impl Fat {
    fn load(dev: Box<dyn BlockDevice>) -> Result<Self, FilesError> {
        let opts = fatfs::FsOptions::new().update_accessed_date(false);
        fatfs::FileSystem::new(Stream { dev, pos: 0 }, opts)
            .map(Self)
            .map_err(|e| FilesError::Read(format!("FAT: {e}")))
    }

    /// `path` as fatfs takes it: relative to the root, without empty components.
    fn rel(path: &str) -> String {
        path.split('/')
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
            .join("/")
    }

    fn err(path: &str, e: io::Error) -> FilesError {
        match e.kind() {
            io::ErrorKind::NotFound => FilesError::NotFound(path.into()),
            _ => FilesError::Read(format!("{path}: {e}")),
        }
    }

    fn entry(e: &fatfs::DirEntry<'_, Stream>) -> Entry {
        Entry {
            name: e.file_name(),
            kind: if e.is_dir() {
                EntryKind::Dir
            } else {
                EntryKind::File
            },
            size: if e.is_dir() { 0 } else { e.len() },
            mode: None,
        }
    }

    /// The entry `path` names, looked up in its parent directory (case-insensitively, as FAT
    /// does).
    fn find(&self, path: &str) -> Result<Entry, FilesError> {
        let rel = Self::rel(path);
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
        if name.is_empty() {
            return Ok(Entry {
                name: "/".into(),
                kind: EntryKind::Dir,
                size: 0,
                mode: None,
            });
        }
        let root = self.0.root_dir();
        let dir = if parent.is_empty() {
            root
        } else {
            root.open_dir(parent).map_err(|e| Self::err(path, e))?
        };
        for e in dir.iter() {
            let e = e.map_err(|e| Self::err(path, e))?;
            if e.file_name().eq_ignore_ascii_case(name) {
                return Ok(Self::entry(&e));
            }
        }
        Err(FilesError::NotFound(path.into()))
    }
}

impl FileTree for Fat {
    fn list(&self, path: &str) -> Result<Vec<Entry>, FilesError> {
        let rel = Self::rel(path);
        let root = self.0.root_dir();
        let dir = if rel.is_empty() {
            root
        } else {
            if self.find(path)?.kind != EntryKind::Dir {
                return Err(FilesError::Kind {
                    path: path.into(),
                    why: "not a directory",
                });
            }
            root.open_dir(&rel).map_err(|e| Self::err(path, e))?
        };
        let mut out = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(|e| Self::err(path, e))?;
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            out.push(Self::entry(&e));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn stat(&self, path: &str) -> Result<Entry, FilesError> {
        self.find(path)
    }

    fn copy(&self, path: &str, out: &mut dyn Write) -> Result<u64, FilesError> {
        if self.find(path)?.kind == EntryKind::Dir {
            return Err(FilesError::Kind {
                path: path.into(),
                why: "a directory",
            });
        }
        let mut f = self
            .0
            .root_dir()
            .open_file(&Self::rel(path))
            .map_err(|e| Self::err(path, e))?;
        copy_all(path, &mut f, out)
    }
}

struct Ntfs {
    fs: ntfs::Ntfs,
    io: std::sync::Mutex<Stream>,
}

fn ntfs_err(path: &str, e: ntfs::NtfsError) -> FilesError {
    FilesError::Read(format!("{path}: {e}"))
}

impl Ntfs {
    fn load(dev: Box<dyn BlockDevice>) -> Result<Self, FilesError> {
        let mut io = Stream { dev, pos: 0 };
        let mut fs = ntfs::Ntfs::new(&mut io).map_err(|e| ntfs_err("NTFS", e))?;
        fs.read_upcase_table(&mut io)
            .map_err(|e| ntfs_err("NTFS $UpCase", e))?;
        Ok(Self {
            fs,
            io: std::sync::Mutex::new(io),
        })
    }

    /// The file `path` names (case-insensitively, as Windows looks names up).
    fn walk<'n>(&'n self, io: &mut Stream, path: &str) -> Result<ntfs::NtfsFile<'n>, FilesError> {
        let mut f = self.fs.root_directory(io).map_err(|e| ntfs_err(path, e))?;
        for name in path.split('/').filter(|c| !c.is_empty()) {
            if !f.is_directory() {
                return Err(FilesError::Kind {
                    path: path.into(),
                    why: "not a directory",
                });
            }
            let next = {
                let index = f.directory_index(io).map_err(|e| ntfs_err(path, e))?;
                let mut finder = index.finder();
                let entry = ntfs::indexes::NtfsFileNameIndex::find(&mut finder, &self.fs, io, name)
                    .ok_or_else(|| FilesError::NotFound(path.into()))?
                    .map_err(|e| ntfs_err(path, e))?;
                entry.to_file(&self.fs, io).map_err(|e| ntfs_err(path, e))?
            };
            f = next;
        }
        Ok(f)
    }

    /// The length of a file's unnamed data stream.
    fn data_len(
        &self,
        io: &mut Stream,
        f: &ntfs::NtfsFile<'_>,
        path: &str,
    ) -> Result<u64, FilesError> {
        match f.data(io, "") {
            None => Ok(0),
            Some(item) => {
                let item = item.map_err(|e| ntfs_err(path, e))?;
                let attr = item.to_attribute().map_err(|e| ntfs_err(path, e))?;
                Ok(attr.value_length())
            }
        }
    }

    fn entry(
        &self,
        io: &mut Stream,
        f: &ntfs::NtfsFile<'_>,
        name: String,
        path: &str,
    ) -> Result<Entry, FilesError> {
        let dir = f.is_directory();
        Ok(Entry {
            name,
            kind: if dir { EntryKind::Dir } else { EntryKind::File },
            size: if dir { 0 } else { self.data_len(io, f, path)? },
            mode: None,
        })
    }
}

impl FileTree for Ntfs {
    fn list(&self, path: &str) -> Result<Vec<Entry>, FilesError> {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let io = &mut *io;
        let f = self.walk(io, path)?;
        if !f.is_directory() {
            return Err(FilesError::Kind {
                path: path.into(),
                why: "not a directory",
            });
        }
        let root = path.split('/').all(|c| c.is_empty());
        let index = f.directory_index(io).map_err(|e| ntfs_err(path, e))?;
        let mut entries = index.entries();
        let mut out = Vec::new();
        while let Some(e) = entries.next(io) {
            let e = e.map_err(|e| ntfs_err(path, e))?;
            let Some(key) = e.key() else { continue };
            let key = key.map_err(|e| ntfs_err(path, e))?;
            // A long name's 8.3 alias is a second entry for the same file.
            if key.namespace() == ntfs::structured_values::NtfsFileNamespace::Dos {
                continue;
            }
            let name = key.name().to_string_lossy();
            if name == "." || (root && name.starts_with('$')) {
                continue;
            }
            let file = e.to_file(&self.fs, io).map_err(|e| ntfs_err(path, e))?;
            out.push(self.entry(io, &file, name, path)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn stat(&self, path: &str) -> Result<Entry, FilesError> {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let io = &mut *io;
        let f = self.walk(io, path)?;
        let name = path.rsplit('/').next().unwrap_or(path).to_string();
        self.entry(io, &f, name, path)
    }

    fn copy(&self, path: &str, out: &mut dyn Write) -> Result<u64, FilesError> {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let io = &mut *io;
        let f = self.walk(io, path)?;
        if f.is_directory() {
            return Err(FilesError::Kind {
                path: path.into(),
                why: "a directory",
            });
        }
        let Some(item) = f.data(io, "") else {
            return Ok(0);
        };
        let item = item.map_err(|e| ntfs_err(path, e))?;
        let attr = item.to_attribute().map_err(|e| ntfs_err(path, e))?;
        let value = attr.value(io).map_err(|e| ntfs_err(path, e))?;
        copy_all(path, &mut value.attach(io), out)
    }
}

/// Copies `from` into `out` in 1 MiB pieces; returns the bytes copied.
pub(super) fn copy_all(
    path: &str,
    from: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<u64, FilesError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{capture, CaptureOptions};
    use crate::device::FileDevice;
    use crate::explore::{piece, ImageDisk, PieceDevice};
    use crate::fs::test_support::{have_tools, run};
    use crate::progress::NoProgress;
    use crate::store::Store;
    use std::path::Path;
    use std::process::Command;
    use std::sync::Arc;

    /// Files with long and nested names, one large enough to span many clusters.
    fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut x = 7u32;
        let mut bytes = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (x >> 24) as u8
                })
                .collect()
        };
        let files = vec![
            ("hello.txt".to_string(), b"hello\n".to_vec()),
            ("A Long File Name.bin".to_string(), bytes(3 << 20)),
            ("sub/deeper/notes.txt".to_string(), bytes(5000)),
            ("sub/empty".to_string(), Vec::new()),
        ];
        for (p, d) in &files {
            let f = dir.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, d).unwrap();
        }
        files
    }

    /// `img` (a bare filesystem) captured and opened as files.
    fn opened(img: &Path, kind: FsKind) -> Box<dyn FileTree> {
        let store = Store::open(&img.with_extension("store")).unwrap();
        let mut o = CaptureOptions::new("fs");
        o.check_space = false;
        let dev = FileDevice::open_read(img).unwrap();
        let m = capture(&dev, "fs", &store, &o, &NoProgress)
            .unwrap()
            .manifest;
        let p = piece(&m, "disk").unwrap();
        assert_eq!(p.fs, Some(kind));
        let disk = Arc::new(ImageDisk::new(m, store, 8 << 20));
        open(Box::new(PieceDevice { disk, piece: p }), kind).unwrap()
    }

    fn check(t: &dyn FileTree, files: &[(String, Vec<u8>)]) {
        let root: Vec<String> = t
            .list("/")
            .unwrap()
            .into_iter()
            .filter(|e| e.name != "lost+found")
            .map(|e| e.name)
            .collect();
        assert_eq!(root, ["A Long File Name.bin", "hello.txt", "sub"]);
        for (p, d) in files {
            let path = format!("/{p}");
            let st = t.stat(&path).unwrap();
            assert_eq!((st.kind, st.size), (EntryKind::File, d.len() as u64), "{p}");
            let mut out = Vec::new();
            assert_eq!(t.copy(&path, &mut out).unwrap(), d.len() as u64);
            assert!(out == *d, "{p}");
        }
        let sub = t.list("/sub").unwrap();
        assert_eq!(sub.len(), 2);
        assert_eq!(t.stat("/sub/deeper").unwrap().kind, EntryKind::Dir);
        assert!(matches!(t.stat("/nope"), Err(FilesError::NotFound(_))));
        assert!(matches!(
            t.copy("/sub", &mut Vec::new()),
            Err(FilesError::Kind { .. })
        ));
        assert!(t.list("/hello.txt").is_err());
    }

    #[test]
    fn ext4_files_read_back_through_the_image() {
        if !have_tools(&["mkfs.ext4"]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let files = tree(&src);
        let img = dir.path().join("ext4.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&src)
            .arg(&img));
        check(opened(&img, FsKind::Ext4).as_ref(), &files);
    }

    #[test]
    fn fat_files_read_back_through_the_image() {
        if !have_tools(&["mkfs.vfat", "mcopy"]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let files = tree(&src);
        let img = dir.path().join("fat.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        run(Command::new("mkfs.vfat").args(["-F", "16"]).arg(&img));
        for e in std::fs::read_dir(&src).unwrap() {
            run(Command::new("mcopy")
                .args(["-s", "-i"])
                .arg(&img)
                .arg(e.unwrap().path())
                .arg("::/"));
        }
        let t = opened(&img, FsKind::Fat16);
        check(t.as_ref(), &files);
        // FAT names match whatever their case.
        assert_eq!(t.stat("/HELLO.TXT").unwrap().size, 6);
    }

    #[test]
    fn ntfs_files_read_back_through_the_image() {
        if !have_tools(&["mkntfs", "ntfscp"]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let files: Vec<(String, Vec<u8>)> = tree(&src)
            .into_iter()
            .filter(|(p, _)| !p.contains('/'))
            .collect();
        let img = dir.path().join("ntfs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        run(Command::new("mkntfs").args(["-Q", "-F", "-q"]).arg(&img));
        for (p, _) in &files {
            run(Command::new("ntfscp")
                .arg("-q")
                .arg(&img)
                .arg(src.join(p))
                .arg(p));
        }
        let t = opened(&img, FsKind::Ntfs);
        let root: Vec<String> = t.list("/").unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(
            root,
            ["A Long File Name.bin", "hello.txt"],
            "NTFS's $ files are not listed"
        );
        for (p, d) in &files {
            let path = format!("/{p}");
            let st = t.stat(&path).unwrap();
            assert_eq!((st.kind, st.size), (EntryKind::File, d.len() as u64), "{p}");
            let mut out = Vec::new();
            assert_eq!(t.copy(&path, &mut out).unwrap(), d.len() as u64);
            assert!(out == *d, "{p}");
        }
        assert_eq!(
            t.stat("/HELLO.TXT").unwrap().size,
            6,
            "names match whatever their case"
        );
        assert!(matches!(t.stat("/nope"), Err(FilesError::NotFound(_))));
        assert!(matches!(
            t.copy("/", &mut Vec::new()),
            Err(FilesError::Kind { .. })
        ));
        assert!(t.list("/hello.txt").is_err());
    }

    #[test]
    fn exfat_files_read_back_through_the_image() {
        if !have_tools(&["mkfs.exfat", "mount.exfat-fuse", "losetup"]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let files = tree(&src);
        let img = dir.path().join("exfat.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        run(Command::new("mkfs.exfat").arg(&img));
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        // exfat-fuse run as root wants a block device.
        let lo = run(Command::new("losetup").args(["-f", "--show"]).arg(&img));
        let lo = lo.trim().to_string();
        let mounted = Command::new("mount.exfat-fuse").arg(&lo).arg(&mnt).status();
        let copied = mounted.as_ref().is_ok_and(|s| s.success())
            && Command::new("cp")
                .arg("-r")
                .arg(format!("{}/.", src.display()))
                .arg(&mnt)
                .status()
                .is_ok_and(|s| s.success());
        let _ = Command::new("umount").arg(&mnt).status();
        let _ = Command::new("losetup").arg("-d").arg(&lo).status();
        assert!(
            copied,
            "filling the exFAT volume through exfat-fuse ({mounted:?})"
        );
        let t = opened(&img, FsKind::Exfat);
        check(t.as_ref(), &files);
        assert_eq!(
            t.stat("/HELLO.TXT").unwrap().size,
            6,
            "names match whatever their case"
        );
    }
}
