//! `drover image mount`: an image as a read-only FUSE directory holding `disk` (the whole
//! disk), `p1`, `p2`, ... (its partitions) and `vg-lv` (its plain LVM logical volumes), each a regular file read on demand through an
//! [`ImageDisk`]. `mount -o ro,loop DIR/p2 /mnt` then shows a partition's files.
//!
//! The directory is the mounting user's alone (FUSE's default: no `allow_other`), files are
//! mode 0444 and every write is refused by the mount itself (`ro`). The command stays in the
//! foreground until the directory is unmounted (`umount DIR`, `fusermount3 -u DIR`) or it is
//! interrupted, and then unmounts it (lazily, when a loop device still holds a file).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    Request,
};
use imaging::explore::{ImageDisk, Piece};

/// How long the kernel may keep names and attributes: they never change.
const TTL: Duration = Duration::from_secs(3600);

struct ImageFs {
    disk: Arc<ImageDisk>,
    pieces: Vec<Piece>,
    created: SystemTime,
    uid: u32,
    gid: u32,
}

impl ImageFs {
    fn root_attr(&self) -> FileAttr {
        self.attr(INodeNo::ROOT, FileType::Directory, 0, 0o555, 2)
    }

    fn attr(&self, ino: INodeNo, kind: FileType, size: u64, perm: u16, nlink: u32) -> FileAttr {
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            crtime: self.created,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Inode 2 is the first piece.
    fn piece(&self, ino: INodeNo) -> Option<&Piece> {
        ino.0
            .checked_sub(2)
            .and_then(|i| self.pieces.get(usize::try_from(i).ok()?))
    }

    fn piece_attr(&self, i: usize) -> FileAttr {
        let p = &self.pieces[i];
        self.attr(
            INodeNo(i as u64 + 2),
            FileType::RegularFile,
            p.len,
            0o444,
            1,
        )
    }
}

impl Filesystem for ImageFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        match self.pieces.iter().position(|p| OsStr::new(&p.name) == name) {
            Some(i) => reply.entry(&TTL, &self.piece_attr(i), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT {
            return reply.attr(&TTL, &self.root_attr());
        }
        match self.piece(ino) {
            Some(_) => reply.attr(&TTL, &self.piece_attr((ino.0 - 2) as usize)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.piece(ino).is_none() {
            return reply.error(Errno::ENOENT);
        }
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        // The bytes never change: the kernel may keep them in its page cache across opens.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(p) = self.piece(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let n = (size as u64).min(p.len.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; n];
        match p.read(self.disk.as_ref(), &mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(e) => {
                tracing::error!(file = %p.name, offset, size, "read failed: {e}");
                eprintln!(
                    "error: reading {} bytes at {offset} of {}: {e}",
                    size, p.name
                );
                reply.error(Errno::EIO)
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries = vec![
            (INodeNo::ROOT, FileType::Directory, ".".to_string()),
            (INodeNo::ROOT, FileType::Directory, "..".to_string()),
        ];
        for (i, p) in self.pieces.iter().enumerate() {
            entries.push((INodeNo(i as u64 + 2), FileType::RegularFile, p.name.clone()));
        }
        for (k, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, k as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok()
    }
}

/// Mounts `disk`'s pieces on `dir` and serves them until the directory is unmounted or a
/// signal (INT, TERM, HUP) asks to stop.
pub(crate) fn run(
    disk: ImageDisk,
    pieces: Vec<Piece>,
    dir: &Path,
    label: &str,
) -> anyhow::Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| format!("mount point {}", dir.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("mount point {} is not a directory", dir.display());
    }
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let fs = ImageFs {
        disk: Arc::new(disk),
        pieces,
        created: SystemTime::now(),
        uid,
        gid,
    };
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("drover:{label}")),
        MountOption::Subtype("drover".into()),
        MountOption::NoExec,
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    // Several readers at once (a loop device reads ahead while another file is read).
    cfg.n_threads = Some(4);
    let dir: PathBuf = std::fs::canonicalize(dir)?;
    let stop = {
        let dir = dir.clone();
        super::on_stop_signal(move || unmount(&dir))?
    };
    let res =
        fuser::mount2(fs, &dir, &cfg).with_context(|| format!("mounting on {}", dir.display()));
    drop(stop);
    res
}

/// Unmounts `dir`: directly as root (lazily, so a loop device over a file does not keep it),
/// else through fusermount3.
fn unmount(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return;
    }
    let _ = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(dir)
        .status();
}
