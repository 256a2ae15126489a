//! `drover image mount|nbd|export|import`: images opened without restoring them (a FUSE
//! directory, an NBD export, a raw or qcow2 file) and disk image files read into the store.

mod mount;
mod nbd;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use imaging::capture::CaptureOptions;
use imaging::device::{BlockDevice, FileDevice};
use imaging::explore::export::Format;
use imaging::explore::qcow2::{is_qcow2, Qcow2File};
use imaging::explore::{pieces, ImageDisk};
use imaging::store::Store;
use serde_json::json;
use transport::fmt;

use crate::image_cmd::StoreArgs;
use crate::progress::Bar;

/// What `mount`, `nbd` and `export` share: the image, its store, the chunk cache.
#[derive(Debug, clap::Args)]
pub(crate) struct OpenArgs {
    /// Image name (newest version), NAME@VERSION, or id.
    pub(crate) image: String,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Chunk plaintexts kept in memory, e.g. 64M.
    #[arg(long, default_value = "64M", value_parser = fmt::parse_size)]
    pub(crate) cache_size: u64,
}

/// `drover image mount`.
#[derive(Debug, clap::Args)]
pub(crate) struct MountArgs {
    #[command(flatten)]
    pub(crate) open: OpenArgs,
    /// An existing empty directory to mount on.
    pub(crate) dir: PathBuf,
}

/// `drover image nbd`.
#[derive(Debug, clap::Args)]
pub(crate) struct NbdArgs {
    #[command(flatten)]
    pub(crate) open: OpenArgs,
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:10809", value_name = "ADDR:PORT")]
    pub(crate) listen: SocketAddr,
    /// A client address allowed besides loopback (repeat for several); anyone else is
    /// refused.
    #[arg(long, value_name = "IP")]
    pub(crate) allow: Vec<IpAddr>,
}

/// `drover image export`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    pub(crate) open: OpenArgs,
    /// The file to write (must not exist).
    pub(crate) out: PathBuf,
    /// `raw` (sparse) or `qcow2`.
    #[arg(long, default_value = "raw")]
    pub(crate) format: Format,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
}

/// `drover image ls`.
#[derive(Debug, clap::Args)]
pub(crate) struct LsArgs {
    #[command(flatten)]
    pub(crate) open: OpenArgs,
    /// PIECE[:PATH]: a partition (`p2`, or `2`), `disk` for a bare filesystem's image, or a
    /// logical volume (`vg-lv`); the path in its filesystem (default `/`).
    pub(crate) what: String,
}

/// `drover image get`.
#[derive(Debug, clap::Args)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    pub(crate) open: OpenArgs,
    /// PIECE:PATH, the file to take (`p2:/etc/hostname`).
    pub(crate) what: String,
    /// Where to write it: a new file, a directory (the file keeps its name), or `-` (stdout).
    pub(crate) dest: PathBuf,
}

/// `drover image import`.
#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    /// A raw or qcow2 disk image file, or a Clonezilla image directory.
    pub(crate) source: PathBuf,
    /// Which saved disk to take from a Clonezilla image holding several (e.g. sdb).
    #[arg(long)]
    pub(crate) disk: Option<String>,
    /// Image name; importing again under a name makes a new version.
    #[arg(long)]
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Region (chunk) size, e.g. 4M.
    #[arg(long, default_value = "4M", value_parser = fmt::parse_size)]
    pub(crate) chunk_size: u64,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
}

fn open(args: OpenArgs, data_dir: &Path) -> anyhow::Result<(ImageDisk, String)> {
    let store: Store = crate::image_cmd::open_store(args.store, data_dir)?;
    let img = store.resolve(&args.image)?;
    let m = img.manifest;
    let label = format!("{}@{}", m.name, m.name_version);
    Ok((ImageDisk::new(m, store, args.cache_size), label))
}

/// Opens the filesystem of piece `name` of `disk`.
fn file_tree(
    disk: ImageDisk,
    name: &str,
) -> anyhow::Result<Box<dyn imaging::explore::files::FileTree>> {
    let all = pieces(disk.manifest());
    let Some(piece) = imaging::explore::piece(disk.manifest(), name)
        .or_else(|| all.iter().find(|p| p.name == name).cloned())
    else {
        let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
        bail!("the image has no {name:?} (it has {})", names.join(", "));
    };
    let kind = match piece.fs {
        Some(k) if k != imaging::fs::FsKind::Unknown => k,
        _ => bail!("{name} holds no filesystem drover recognised"),
    };
    let dev = imaging::explore::PieceDevice {
        disk: Arc::new(disk),
        piece,
    };
    imaging::explore::files::open(Box::new(dev), kind).with_context(|| format!("opening {name}"))
}

/// Splits `PIECE[:PATH]`; the path is made absolute.
fn split_what(what: &str) -> (&str, String) {
    match what.split_once(':') {
        Some((p, path)) if path.starts_with('/') => (p, path.to_string()),
        Some((p, path)) => (p, format!("/{path}")),
        None => (what, "/".to_string()),
    }
}

pub(crate) fn ls(args: LsArgs, data_dir: &Path, json: bool) -> anyhow::Result<()> {
    use imaging::explore::files::EntryKind;
    let (disk, _) = open(args.open, data_dir)?;
    let (piece, path) = split_what(&args.what);
    let tree = file_tree(disk, piece)?;
    let at = tree.stat(&path)?;
    let entries = if at.kind == EntryKind::Dir {
        tree.list(&path)?
    } else {
        vec![at]
    };
    if json {
        println!("{}", serde_json::to_string(&entries)?);
        return Ok(());
    }
    for e in entries {
        let (c, tail) = match e.kind {
            EntryKind::Dir => ('d', "/"),
            EntryKind::Symlink => ('l', ""),
            EntryKind::File => ('-', ""),
            EntryKind::Other => ('?', ""),
        };
        let mode = e.mode.map_or_else(|| "----".into(), |m| format!("{m:04o}"));
        println!("{c}{mode} {:>14} {}{tail}", e.size, e.name);
    }
    Ok(())
}

pub(crate) fn get(args: GetArgs, data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let (disk, label) = open(args.open, data_dir)?;
    let (piece, path) = match args.what.split_once(':') {
        Some(_) => split_what(&args.what),
        None => bail!("give the file as PIECE:PATH (for example p2:/etc/hostname)"),
    };
    let tree = file_tree(disk, piece)?;
    let at = tree.stat(&path)?;
    if at.kind != imaging::explore::files::EntryKind::File {
        bail!("{piece}:{path} is not a regular file");
    }
    if args.dest.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        tree.copy(&path, &mut out)?;
        return Ok(());
    }
    let dest = if args.dest.is_dir() {
        args.dest.join(&at.name)
    } else {
        args.dest.clone()
    };
    if dest.symlink_metadata().is_ok() {
        bail!("{} exists; get writes a new file", dest.display());
    }
    let tmp = {
        let mut n = dest.file_name().unwrap_or_default().to_os_string();
        n.push(format!(".part-{}", std::process::id()));
        dest.with_file_name(n)
    };
    let res = (|| -> anyhow::Result<u64> {
        let f = std::fs::File::create_new(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let n = tree.copy(&path, &mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)?;
        Ok(n)
    })();
    let n = match res {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if json {
        println!(
            "{}",
            json!({"image": label, "piece": piece, "path": path, "dest": dest, "bytes": n})
        );
    } else {
        println!(
            "{piece}:{path} of {label} -> {} ({})",
            dest.display(),
            fmt::bytes(n)
        );
    }
    Ok(())
}

pub(crate) fn mount(args: MountArgs, data_dir: &Path) -> anyhow::Result<()> {
    let (disk, label) = open(args.open, data_dir)?;
    let pieces = pieces(disk.manifest());
    let names: Vec<&str> = pieces.iter().map(|p| p.name.as_str()).collect();
    eprintln!(
        "mounted {label} read-only on {}: {}; umount it (or interrupt this) to stop",
        args.dir.display(),
        names.join(", ")
    );
    mount::run(disk, pieces, &args.dir, &label)
}

pub(crate) fn nbd(args: NbdArgs, data_dir: &Path) -> anyhow::Result<()> {
    let (disk, label) = open(args.open, data_dir)?;
    let exports = pieces(disk.manifest());
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let at = listener.local_addr()?;
    if !at.ip().is_loopback() && args.allow.is_empty() {
        eprintln!("warning: listening on {at}, but only loopback clients are served: give the others with --allow IP");
    }
    let names: Vec<&str> = exports.iter().map(|e| e.name.as_str()).collect();
    println!(
        "serving {label} read-only over NBD on {at}: exports {} (the default export is disk)",
        names.join(", ")
    );
    // Stopped by a signal, the command ends cleanly: nothing is held that needs undoing.
    on_stop_signal(|| std::process::exit(0))?;
    let srv = Arc::new(nbd::Server {
        dev: Arc::new(disk),
        exports,
        allow: args.allow,
    });
    srv.serve(listener).context("accepting NBD clients")
}

/// Blocks INT, TERM and HUP in this thread and every thread it starts later, and runs `then`
/// on a thread of its own when one arrives.
fn on_stop_signal(
    then: impl FnOnce() + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the mask is set
    // before the threads that must inherit it are started.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("blocking signals: {}", std::io::Error::last_os_error());
        }
        set
    };
    Ok(std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: `set` is a valid signal set and `sig` a valid out pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            then();
        }
    }))
}

pub(crate) fn export(args: ExportArgs, data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let (disk, label) = open(args.open, data_dir)?;
    let bar = Bar::new(json);
    let r = imaging::explore::export::export(&disk, &args.out, args.format, args.threads, &bar);
    bar.finish();
    let r = r.with_context(|| format!("exporting {label} to {}", args.out.display()))?;
    if json {
        println!(
            "{}",
            json!({
                "image": label,
                "out": args.out,
                "disk_size": r.disk_size,
                "data_bytes": r.data_bytes,
                "file_size": r.file_size,
            })
        );
    } else {
        println!(
            "exported {label} to {}: a {} disk, {} of data, file of {}",
            args.out.display(),
            fmt::bytes(r.disk_size),
            fmt::bytes(r.data_bytes),
            fmt::bytes(r.file_size),
        );
    }
    Ok(())
}

/// The device an import reads: a qcow2 file through its tables, anything else as raw bytes.
fn source_device(path: &Path) -> anyhow::Result<Box<dyn BlockDevice>> {
    let dev = FileDevice::open_read(path).with_context(|| format!("opening {}", path.display()))?;
    let mut head = [0u8; 4];
    if dev.len() >= 4 {
        dev.read_at(&mut head, 0)?;
    }
    if is_qcow2(&head) {
        return Ok(Box::new(
            Qcow2File::open(path).with_context(|| format!("reading {}", path.display()))?,
        ));
    }
    Ok(Box::new(dev))
}

/// Lays a Clonezilla image directory out as a sparse disk file in the data directory (only
/// the saved data takes space), for capture to read like any disk.
fn assemble_dir(
    dir: &Path,
    disk: Option<&str>,
    data_dir: &Path,
    json: bool,
) -> anyhow::Result<tempfile::NamedTempFile> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(".import-")
        .suffix(".img")
        .tempfile_in(data_dir)
        .with_context(|| format!("creating a scratch disk file in {}", data_dir.display()))?;
    let a = imaging::import::assemble(dir, disk, scratch.as_file())
        .with_context(|| format!("reading {}", dir.display()))?;
    if !json {
        eprintln!(
            "{}: disk {} ({})",
            dir.display(),
            a.disk,
            fmt::bytes(a.disk_size)
        );
        for p in &a.parts {
            eprintln!("  {}: {} ({})", p.name, p.from, fmt::bytes(p.bytes));
        }
        for n in &a.notes {
            eprintln!("  note: {n}");
        }
    }
    Ok(scratch)
}

pub(crate) fn import(args: ImportArgs, data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let meta = std::fs::metadata(&args.source)
        .with_context(|| format!("reading {}", args.source.display()))?;
    let mut scratch = None;
    let dev: Box<dyn BlockDevice> = if meta.is_dir() {
        let f = assemble_dir(&args.source, args.disk.as_deref(), data_dir, json)?;
        let dev = FileDevice::open_read(f.path())
            .with_context(|| format!("opening {}", f.path().display()))?;
        scratch = Some(f);
        Box::new(dev)
    } else {
        if args.disk.is_some() {
            bail!(
                "--disk chooses a disk in a Clonezilla image directory, not in a disk image file"
            );
        }
        source_device(&args.source)?
    };
    let store = crate::image_cmd::open_store(args.store, data_dir)?;
    let mut opts = CaptureOptions::new(args.name);
    opts.chunk_size = args.chunk_size;
    opts.threads = args.threads;
    let bar = Bar::new(json);
    let source = args.source.display().to_string();
    let res = imaging::capture::capture(dev.as_ref(), &source, &store, &opts, &bar);
    bar.finish();
    drop(dev);
    drop(scratch);
    let c = res.with_context(|| format!("importing {source}"))?;
    crate::image_cmd::print_captured(&c, "imported", json);
    Ok(())
}
