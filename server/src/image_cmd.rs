//! `drover image ...`: the image store from the command line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use imaging::capture::{capture, CaptureOptions};
use imaging::device::FileDevice;
use imaging::fs::FsKind;
use imaging::manifest::{AreaKind, Manifest};
use imaging::relayout::LayoutMode;
use imaging::restore::verify;
use imaging::shrink;
use imaging::store::{Store, StoredImage};
use serde_json::json;

use crate::progress::Bar;
use transport::fmt;

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Capture a disk, partition, disk image file or filesystem image into the store.
    Capture {
        /// The device or file to read.
        source: PathBuf,
        /// Image name; capturing again under a name makes a new version.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Region (chunk) size, e.g. 4M.
        #[arg(long, default_value = "4M", value_parser = fmt::parse_size)]
        chunk_size: u64,
        /// zstd compression level.
        #[arg(long, default_value_t = imaging::store::DEFAULT_ZSTD_LEVEL)]
        zstd_level: i32,
        /// Worker threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Start even when the store's free space is below the source's used bytes.
        #[arg(long)]
        skip_space_check: bool,
        /// A LUKS passphrase, read from FILE as `cryptsetup --key-file` reads it (every byte):
        /// encrypted volumes it opens are stored as the ciphertext of their used blocks.
        /// Repeat for several volumes. The key is never stored.
        #[arg(long, value_name = "FILE")]
        luks_key_file: Vec<PathBuf>,
    },
    /// Write an image onto a disk, partition or file (only the used blocks); onto several at
    /// once, each chunk read once, written to every target and read back from each.
    Restore {
        /// Image name (newest version), NAME@VERSION, or id.
        image: String,
        /// The devices or files to write; each must exist and be large enough.
        #[arg(required = true, num_args = 1.., value_name = "TARGET")]
        targets: Vec<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
        /// Worker threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// On a larger target: `grow` the last partition and its filesystem to the disk's
        /// end, `keep` the captured layout, or scale every partition `proportional`ly.
        #[arg(long, default_value = "grow", value_parser = parse_layout)]
        layout: LayoutMode,
        /// Where a target smaller than the image's disk has its shrinking filesystems restored
        /// first, as sparse files (default: the system's temporary directory).
        #[arg(long, value_name = "DIR")]
        scratch: Option<PathBuf>,
        /// Read one target back after writing it, every chunk against its hash (several
        /// targets, and shrunk ones, are always read back).
        #[arg(long)]
        read_back: bool,
    },
    /// Show an image's partitions, filesystems, used bytes and chunks.
    Inspect {
        /// Image name, NAME@VERSION, or id.
        image: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Find the smallest disk the image shrinks onto: restores each shrinkable partition
        /// into a scratch file and asks its filesystem's tool (without it, a lower bound from
        /// the used bytes is shown).
        #[arg(long)]
        min_size: bool,
        /// Directory for those scratch files (default: the system's temporary directory).
        #[arg(long, value_name = "DIR", requires = "min_size")]
        scratch: Option<PathBuf>,
        /// Worker threads for --min-size (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Re-read and re-hash every chunk of an image; names any bad one.
    Verify {
        /// Image name, NAME@VERSION, or id.
        image: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Worker threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// List every image version in the store.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove one image version (its chunks are freed by `gc`).
    Rm {
        /// Image name (newest version), NAME@VERSION, or id.
        image: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete chunks no image uses any more.
    Gc {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Copy an image into another store (another site's bucket, a backup disk), sending only
    /// the chunks the destination lacks, each checked against its hash; the manifest is
    /// written last. Either store may be encrypted, each with its own key.
    Copy {
        /// Image name (newest version), NAME@VERSION, or id.
        image: String,
        /// The source store.
        #[command(flatten)]
        store: StoreArgs,
        /// The destination store: a directory, s3://, webdav[s]://, sftp://.
        #[arg(long, value_name = "URL")]
        to: String,
        /// The destination's S3 endpoint (default: the source's --s3-endpoint, then
        /// $AWS_ENDPOINT_URL).
        #[arg(long, value_name = "URL")]
        to_s3_endpoint: Option<String>,
        /// The destination's key file (a new destination given one is encrypted).
        #[arg(long, value_name = "FILE")]
        to_encrypt_key_file: Option<PathBuf>,
        /// The destination's passphrase file.
        #[arg(long, value_name = "FILE", conflicts_with = "to_encrypt_key_file")]
        to_encrypt_passphrase_file: Option<PathBuf>,
        /// Chunks moved at once.
        #[arg(long, default_value_t = 8)]
        threads: usize,
    },
    /// Mount an image read-only (FUSE) on DIR: DIR/disk is the whole disk, DIR/p1, DIR/p2, ...
    /// its partitions (`mount -o ro,loop DIR/p2 /mnt` shows a partition's files). Stays in the
    /// foreground until DIR is unmounted or this is interrupted.
    Mount(crate::image_open::MountArgs),
    /// Serve an image read-only over NBD (qemu-img, nbdcopy, nbd-client, QEMU): export `disk`
    /// (the default) and `p1`, `p2`, ... Loopback clients only, unless others are allowed.
    Nbd(crate::image_open::NbdArgs),
    /// List a directory (or show a file) inside an image's partition, without mounting:
    /// `drover image ls NAME p2:/etc`. Reads ext2/3/4, FAT12/16/32 and NTFS.
    Ls(crate::image_open::LsArgs),
    /// Take one file out of an image's partition: `drover image get NAME p2:/etc/hostname
    /// DEST`.
    Get(crate::image_open::GetArgs),
    /// Write an image to a new disk image file: sparse raw, or qcow2.
    Export(crate::image_open::ExportArgs),
    /// Read a raw or qcow2 disk image file into the store as a new image (version).
    Import(crate::image_open::ImportArgs),
    /// Write a new random store key (32 bytes as 64 hex digits) to FILE, readable by its
    /// owner only, for --encrypt-key-file. Keep a copy somewhere safe: without it the images
    /// of a store encrypted with it cannot be read.
    Keygen {
        /// Where to write the key (must not exist).
        file: PathBuf,
    },
}

/// Which store an image command works on.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct StoreArgs {
    /// Image store: a directory (default: DATA_DIR/images; NFS and SMB shares are mounted
    /// and given as theirs), s3://BUCKET/PREFIX, webdav[s]://HOST[:PORT]/PATH or
    /// sftp://[USER@]HOST[:PORT]/PATH.
    #[arg(long, value_name = "URL")]
    pub(crate) store: Option<String>,
    /// The S3 service's URL for s3:// stores (default: $AWS_ENDPOINT_URL, else AWS). Keys
    /// and region come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION.
    #[arg(long, value_name = "URL")]
    pub(crate) s3_endpoint: Option<String>,
    /// The store's key: a file of 64 hex digits (`drover image keygen FILE` makes one).
    /// Chunks and manifests are AES-256-GCM encrypted; a new store given a key is encrypted.
    #[arg(long, value_name = "FILE", env = "DROVER_ENCRYPT_KEY_FILE")]
    pub(crate) encrypt_key_file: Option<PathBuf>,
    /// The store's key as a passphrase (the file's first line), stretched with Argon2id.
    #[arg(
        long,
        value_name = "FILE",
        env = "DROVER_ENCRYPT_PASSPHRASE_FILE",
        conflicts_with = "encrypt_key_file"
    )]
    pub(crate) encrypt_passphrase_file: Option<PathBuf>,
}

impl StoreArgs {
    /// The options for opening the store: these flags, then the environment.
    pub(crate) fn options(&self) -> anyhow::Result<stores::Options> {
        Ok(stores::Options {
            s3_endpoint: self.s3_endpoint.clone(),
            secret: secret(
                self.encrypt_key_file.as_deref(),
                self.encrypt_passphrase_file.as_deref(),
            )?,
            ..Default::default()
        }
        .with_env())
    }
}

/// The store key from a key file or a passphrase file.
pub(crate) fn secret(
    key_file: Option<&Path>,
    passphrase_file: Option<&Path>,
) -> anyhow::Result<Option<imaging::store::Secret>> {
    use imaging::store::Secret;
    Ok(match (key_file, passphrase_file) {
        (Some(_), Some(_)) => {
            bail!("give the store's key as a key file or a passphrase file, not both")
        }
        (Some(k), None) => Some(Secret::key_file(k)?),
        (None, Some(p)) => Some(Secret::passphrase_file(p)?),
        (None, None) => None,
    })
}

pub(crate) fn open_store(store: StoreArgs, data_dir: &Path) -> anyhow::Result<Store> {
    let default = data_dir.join("images");
    let what = store
        .store
        .as_deref()
        .map_or_else(|| default.display().to_string(), stores::redact);
    stores::open(store.store.as_deref(), &default, &store.options()?)
        .with_context(|| format!("opening image store {what}"))
}

pub(crate) fn run(cmd: ImageCommand, data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Capture {
            source,
            name,
            store,
            chunk_size,
            zstd_level,
            threads,
            skip_space_check,
            luks_key_file,
        } => {
            let store = open_store(store, data_dir)?;
            let dev = FileDevice::open_read(&source)
                .with_context(|| format!("opening {}", source.display()))?;
            // A mounted filesystem can change while it is read: say so (capture what is
            // unmounted, or mounted read-only, for a consistent image).
            if let Ok(Some(why)) = imaging::usage::in_use(&source) {
                eprintln!(
                    "warning: {} is {why}; files changing during the capture may be stored inconsistently",
                    source.display()
                );
            }
            let mut luks_keys = Vec::new();
            for f in &luks_key_file {
                let k = std::fs::read(f)
                    .with_context(|| format!("reading the LUKS key file {}", f.display()))?;
                if k.is_empty() {
                    bail!("the LUKS key file {} is empty", f.display());
                }
                luks_keys.push(k);
            }
            let opts = CaptureOptions {
                name,
                chunk_size,
                zstd_level,
                threads,
                check_space: !skip_space_check,
                scan: imaging::fs::ScanOptions::with_luks_keys(luks_keys),
            };
            let bar = Bar::new(json);
            let res = capture(&dev, &source.display().to_string(), &store, &opts, &bar);
            bar.finish();
            let c = res.with_context(|| format!("capturing {}", source.display()))?;
            print_captured(&c, "captured", json);
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Restore {
            image,
            targets,
            store,
            threads,
            layout,
            scratch,
            read_back,
        } => {
            let store = open_store(store, data_dir)?;
            let opts = crate::image_restore::Options {
                threads,
                layout,
                scratch,
                read_back,
                json,
            };
            crate::image_restore::run(&store, &image, &targets, &opts)
        }
        ImageCommand::Inspect {
            image,
            store,
            min_size,
            scratch,
            threads,
        } => {
            let store = open_store(store, data_dir)?;
            let img = store.resolve(&image)?;
            // Count sharing over the readable images: one damaged manifest must not hide this one.
            let refs = imaging::store::chunk_refs_of(&store.scan()?.0);
            let m = &img.manifest;
            let mins = if min_size {
                let label = format!("{}@{}", m.name, m.name_version);
                let parent = scratch.unwrap_or_else(std::env::temp_dir);
                let mut s = shrink::Scratch::new(&parent, threads)?;
                Some(
                    shrink::minimums(&label, m, &store, &mut s, None)
                        .with_context(|| format!("finding how far {label} can shrink"))?,
                )
            } else {
                None
            };
            inspect(&img, &refs, mins.as_deref(), json);
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Verify {
            image,
            store,
            threads,
        } => {
            let store = open_store(store, data_dir)?;
            let img = store.resolve(&image)?;
            let label = format!("{}@{}", img.manifest.name, img.manifest.name_version);
            let bar = Bar::new(json);
            let v = verify(&img.manifest, &store, threads, &bar);
            bar.finish();
            if json {
                println!(
                    "{}",
                    json!({"id": img.id, "name": img.manifest.name, "version": img.manifest.name_version,
                           "chunks": v.chunks, "bad": v.bad, "ok": v.bad.is_empty()})
                );
            } else if v.bad.is_empty() {
                println!(
                    "{label}: all {} chunks verified ({})",
                    v.chunks,
                    fmt::bytes(v.stored_bytes)
                );
            }
            if v.bad.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                for b in &v.bad {
                    eprintln!(
                        "image {label} (id {}): chunk {} at disk offset {}: {}",
                        &img.id[..12],
                        b.hash,
                        b.disk_offset,
                        b.error
                    );
                }
                eprintln!(
                    "error: image {label}: {} of {} chunks are bad",
                    v.bad.len(),
                    v.chunks
                );
                Ok(ExitCode::FAILURE)
            }
        }
        ImageCommand::List { store } => {
            let store = open_store(store, data_dir)?;
            let (all, problems) = store.scan()?;
            let damaged = problems.len();
            // The readable images are listed; each damaged manifest is named, and the exit
            // code says something is wrong.
            for p in problems {
                eprintln!("error: {:#}", anyhow::Error::from(p));
            }
            if json {
                let v: Vec<_> = all
                    .iter()
                    .map(|i| {
                        let m = &i.manifest;
                        json!({"id": i.id, "name": m.name, "version": m.name_version, "created": m.created,
                               "source": m.source, "disk_size": m.disk_size, "used_bytes": m.used_bytes(),
                               "stored_bytes": m.stored_bytes(), "chunks": m.chunks().count()})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else if all.is_empty() {
                println!("no images in {}", store.location());
            } else {
                println!(
                    "{:<24} {:>4}  {:<12}  {:<23}  {:>10}  {:>10}",
                    "NAME", "VER", "ID", "CREATED", "DISK", "USED"
                );
                for i in &all {
                    let m = &i.manifest;
                    println!(
                        "{:<24} {:>4}  {:<12}  {:<23}  {:>10}  {:>10}",
                        m.name,
                        m.name_version,
                        &i.id[..12],
                        fmt::time(m.created),
                        fmt::bytes(m.disk_size),
                        fmt::bytes(m.used_bytes())
                    );
                }
            }
            Ok(if damaged == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        ImageCommand::Rm { image, store } => {
            let store = open_store(store, data_dir)?;
            let img = store.resolve(&image)?;
            store.remove(&img.id)?;
            if json {
                println!(
                    "{}",
                    json!({"removed": img.id, "name": img.manifest.name, "version": img.manifest.name_version})
                );
            } else {
                println!(
                    "removed {}@{} (id {}); run `drover image gc` to free its unshared chunks",
                    img.manifest.name,
                    img.manifest.name_version,
                    &img.id[..12]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Copy {
            image,
            store,
            to,
            to_s3_endpoint,
            to_encrypt_key_file,
            to_encrypt_passphrase_file,
            threads,
        } => {
            let dest_args = StoreArgs {
                store: Some(to.clone()),
                s3_endpoint: to_s3_endpoint.or_else(|| store.s3_endpoint.clone()),
                encrypt_key_file: to_encrypt_key_file,
                encrypt_passphrase_file: to_encrypt_passphrase_file,
            };
            let from = open_store(store, data_dir)?;
            let img = from.resolve(&image)?;
            let dest = open_store(dest_args, data_dir)?;
            let label = format!("{}@{}", img.manifest.name, img.manifest.name_version);
            let r = imaging::store::copy_image(&from, &img, &dest, threads)
                .with_context(|| format!("copying {label} to {}", stores::redact(&to)))?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else if r.already_there {
                println!(
                    "{label} is already in {} as {}@{} (id {})",
                    dest.location(),
                    r.name,
                    r.version,
                    &r.id[..12]
                );
            } else {
                println!(
                    "copied {label} to {} as {}@{} (id {}): {} chunks sent ({}), {} already there",
                    dest.location(),
                    r.name,
                    r.version,
                    &r.id[..12],
                    r.copied_chunks,
                    fmt::bytes(r.copied_bytes),
                    r.present_chunks
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Mount(args) => {
            crate::image_open::mount(args, data_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Nbd(args) => {
            crate::image_open::nbd(args, data_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Ls(args) => {
            crate::image_open::ls(args, data_dir, json)?;
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Get(args) => {
            crate::image_open::get(args, data_dir, json)?;
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Export(args) => {
            crate::image_open::export(args, data_dir, json)?;
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Import(args) => {
            crate::image_open::import(args, data_dir, json)?;
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Keygen { file } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .with_context(|| format!("creating the key file {}", file.display()))?;
            f.write_all(imaging::store::Secret::new_key_hex().as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing the key file {}", file.display()))?;
            eprintln!(
                "wrote a new store key to {}: keep a copy somewhere safe, the images of a \
                 store encrypted with it cannot be read without it",
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Gc { store } => {
            let store = open_store(store, data_dir)?;
            let r = store.gc()?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "removed {} unused chunks, kept {}, freed {}",
                    r.removed_chunks,
                    r.kept_chunks,
                    fmt::bytes(r.freed_bytes)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn inspect(
    img: &StoredImage,
    refs: &HashMap<imaging::manifest::Hash, u32>,
    mins: Option<&[shrink::Minimum]>,
    json: bool,
) {
    let m: &Manifest = &img.manifest;
    // The smallest disk without shrinking, and with it: measured by the filesystems' tools
    // when asked, else a lower bound from the used bytes.
    let bounds = shrink::lower_bounds(m);
    let measured = mins.is_some();
    let mins = mins.unwrap_or(&bounds);
    let min_shrunk = shrink::min_disk(m, mins);
    let total = m.chunks().count();
    let shared = m
        .chunks()
        .filter(|(_, c)| refs.get(&c.hash).copied().unwrap_or(0) > 1)
        .count();
    if json {
        let areas: Vec<_> = m
            .areas
            .iter()
            .map(|a| {
                let part = match a.kind {
                    AreaKind::Partition { number } => {
                        m.table.partitions.iter().find(|p| p.number == number)
                    }
                    _ => None,
                };
                json!({
                    "area": a.kind,
                    "offset": a.offset,
                    "len": a.len,
                    "partition": part,
                    "fs": a.fs,
                    "used_bytes": a.used.total(),
                    "extents": a.used.len(),
                    "chunks": a.chunks.len(),
                    "stored_bytes": a.chunks.iter().map(|c| c.stored).sum::<u64>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "id": img.id,
                "name": m.name,
                "version": m.name_version,
                "created": m.created,
                "source": m.source,
                "disk_size": m.disk_size,
                "sector_size": m.table.sector_size,
                "table": m.table.kind,
                "min_size": m.min_size,
                "min_disk_size": m.min_size,
                (if measured { "min_disk_size_shrunk" } else { "min_disk_size_shrunk_at_least" }): min_shrunk,
                "partition_minimums": mins,
                "chunk_size": m.chunk_size,
                "used_bytes": m.used_bytes(),
                "chunks": total,
                "stored_bytes": m.stored_bytes(),
                "new_chunks": m.stats.new_chunks,
                "new_bytes": m.stats.new_bytes,
                "shared_chunks": shared,
                "areas": areas,
            }))
            .expect("JSON values serialise")
        );
        return;
    }
    println!(
        "image {} version {} (id {})",
        m.name, m.name_version, img.id
    );
    println!("  captured {} from {}", fmt::time(m.created), m.source);
    println!(
        "  disk {} ({} bytes), table {:?}, {}-byte sectors, restores to {} or larger",
        fmt::bytes(m.disk_size),
        m.disk_size,
        m.table.kind,
        m.table.sector_size,
        fmt::bytes(m.min_size)
    );
    if measured {
        println!(
            "  shrinks onto {} ({min_shrunk} bytes) or larger",
            fmt::bytes(min_shrunk)
        );
        for x in mins.iter().filter(|x| x.min < x.size) {
            println!(
                "    partition {}: {} at least ({})",
                x.number,
                fmt::bytes(x.min),
                x.why
            );
        }
    } else if min_shrunk < m.min_size {
        println!(
            "  shrinks onto no less than {} (--min-size measures it)",
            fmt::bytes(min_shrunk)
        );
    }
    println!(
        "  {:<14} {:>10} {:>10}  {:<9} {:>10}  {:<10} {:>6}  LABEL / NOTE",
        "AREA", "START", "SIZE", "FS", "USED", "READ", "CHUNKS"
    );
    // How an area or volume was read: its filesystem's allocation data, or the raw copy.
    let how = |kind: FsKind| {
        if kind == FsKind::Unknown {
            "raw copy"
        } else {
            "allocation"
        }
    };
    for a in &m.areas {
        let name = match a.kind {
            AreaKind::Outside => "outside".to_string(),
            AreaKind::Whole => "whole".to_string(),
            AreaKind::Partition { number } => format!("part {number}"),
        };
        let (fs, read) = a.fs.as_ref().map_or(("-".to_string(), "-"), |f| {
            (f.detected.to_string(), how(f.kind))
        });
        let note =
            a.fs.as_ref()
                .and_then(|f| f.warning.clone().or_else(|| f.label.clone()))
                .unwrap_or_default();
        println!(
            "  {:<14} {:>10} {:>10}  {:<9} {:>10}  {:<10} {:>6}  {}",
            name,
            fmt::bytes(a.offset),
            fmt::bytes(a.len),
            fs,
            fmt::bytes(a.used.total()),
            read,
            a.chunks.len(),
            note
        );
        // An LVM2 PV's logical volumes, each with its own filesystem and how it was read.
        for v in a.fs.iter().flat_map(|f| &f.volumes) {
            let note = v.warning.clone().or_else(|| v.label.clone());
            println!(
                "    {:<12} {:>10} {:>10}  {:<9} {:>10}  {:<10} {:>6}  {}",
                v.name,
                "",
                fmt::bytes(v.size),
                v.detected,
                fmt::bytes(v.used_bytes),
                how(v.kind),
                "",
                note.unwrap_or_default()
            );
        }
    }
    println!(
        "  used {} in {} chunks, stored {}; {} new at capture ({}); {} shared with other images",
        fmt::bytes(m.used_bytes()),
        total,
        fmt::bytes(m.stored_bytes()),
        m.stats.new_chunks,
        fmt::bytes(m.stats.new_bytes),
        shared
    );
}

/// Parses `--layout`.
/// Prints what a capture (or an import, `verb`) stored.
pub(crate) fn print_captured(c: &imaging::capture::Captured, verb: &str, json: bool) {
    let m = &c.manifest;
    if json {
        println!(
            "{}",
            json!({
                "id": c.id,
                "name": m.name,
                "version": m.name_version,
                "disk_size": m.disk_size,
                "used_bytes": m.used_bytes(),
                "chunks": m.chunks().count(),
                "stored_bytes": m.stored_bytes(),
                "new_chunks": m.stats.new_chunks,
                "new_bytes": m.stats.new_bytes,
                "seconds": m.stats.seconds,
                "warnings": c.warnings,
            })
        );
    } else {
        println!(
            "{verb} {} version {} (id {}): {} used of {}, {} chunks, {} new ({}), {:.1} s",
            m.name,
            m.name_version,
            &c.id[..12],
            fmt::bytes(m.used_bytes()),
            fmt::bytes(m.disk_size),
            m.chunks().count(),
            m.stats.new_chunks,
            fmt::bytes(m.stats.new_bytes),
            m.stats.seconds,
        );
    }
}

pub(crate) fn parse_layout(s: &str) -> Result<LayoutMode, String> {
    s.parse()
}

/// Whether two paths name the same file or device.
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => {
            (x.dev(), x.ino()) == (y.dev(), y.ino()) || (x.rdev() != 0 && x.rdev() == y.rdev())
        }
        _ => a == b,
    }
}
