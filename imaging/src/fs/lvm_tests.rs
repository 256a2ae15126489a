//! The LVM2 reader: a PV made by Debian's lvm2 on a loop device (no device-mapper: LVs created
//! with `--activate n --zero n`), filesystems written into the LVs' extents at the offsets LVM
//! reports, then every byte outside the map overwritten and each LV's filesystem checked by its
//! own checker, files compared. A synthetic PV covers what lvm2 cannot make without
//! device-mapper (thin pools, LVs on other PVs) and the refusals.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::device::{FileDevice, MemDevice};
use crate::fs::scan;

const MIB: u64 = 1 << 20;

fn have(t: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(t).exists())
}

/// Root, lvm2, e2fsprogs and dosfstools/mtools, or (outside CI) `None` and a skip message.
fn tools() -> Option<()> {
    let root = unsafe { libc::geteuid() } == 0;
    if root
        && [
            "pvcreate",
            "mkfs.ext4",
            "mkfs.vfat",
            "mcopy",
            "debugfs",
            "losetup",
        ]
        .iter()
        .all(|t| have(t))
    {
        return Some(());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "root, lvm2, e2fsprogs, dosfstools and mtools are needed in CI \
         (deploy/install-test-deps installs them)"
    );
    eprintln!("SKIP: not root or lvm2/e2fsprogs/dosfstools/mtools missing");
    None
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device over a file, detached when dropped.
struct Loop(String);

impl Loop {
    fn new(file: &Path) -> Self {
        Self(
            run(Command::new("losetup").args(["-f", "--show"]).arg(file))
                .trim()
                .to_string(),
        )
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// LVM's tools confined to one device and a private configuration directory, without
/// device-mapper or udev.
struct Lvm {
    dev: String,
    sys: PathBuf,
}

impl Lvm {
    fn cmd(&self, tool: &str, args: &[&str]) -> String {
        let conf = format!(
            "devices {{ filter=[\"a|^{}$|\",\"r|.*|\"] obtain_device_list_from_udev=0 }} \
             activation {{ udev_sync=0 udev_rules=0 }} global {{ locking_dir=\"{}\" }}",
            self.dev,
            self.sys.join("lock").display()
        );
        run(Command::new(tool)
            .env("LVM_SYSTEM_DIR", &self.sys)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .args(["--config", &conf])
            .args(args))
    }
    fn lvcreate(&self, args: &[&str]) {
        let mut a = vec!["--driverloaded", "n", "--activate", "n", "--zero", "n"];
        a.extend(args);
        self.cmd("lvcreate", &a);
    }
    fn lvextend(&self, args: &[&str]) {
        let mut a = vec!["--driverloaded", "n"];
        a.extend(args);
        self.cmd("lvextend", &a);
    }
    /// Each LV's runs on the PV, as LVM reports them: `(lv offset, pv offset, len)` in bytes.
    fn runs(&self, lv: &str) -> Vec<(u64, u64, u64)> {
        let q = |tool: &str, field: &str| -> u64 {
            self.cmd(
                tool,
                &["--noheadings", "--nosuffix", "--units", "b", "-o", field],
            )
            .trim()
            .parse()
            .unwrap()
        };
        let pe_start = q("pvs", "pe_start");
        let extent = q("vgs", "vg_extent_size");
        let out = self.cmd(
            "lvs",
            &[
                "--noheadings",
                "--segments",
                "-o",
                "lv_name,seg_start_pe,seg_pe_ranges",
                "--driverloaded",
                "n",
            ],
        );
        let mut runs = Vec::new();
        for line in out.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.first() != Some(&lv) {
                continue;
            }
            let le: u64 = f[1].parse().unwrap();
            let range = f[2].rsplit(':').next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            runs.push((le * extent, pe_start + a * extent, (b - a + 1) * extent));
        }
        runs.sort_unstable();
        assert!(!runs.is_empty(), "no segments for {lv} in {out}");
        runs
    }
}

/// Writes `data` into the LV's runs on the PV file.
fn write_lv(pv: &mut [u8], runs: &[(u64, u64, u64)], data: &[u8]) {
    for &(l, p, n) in runs {
        let (l, p, n) = (l as usize, p as usize, n as usize);
        pv[p..p + n].copy_from_slice(&data[l..l + n]);
    }
}

fn read_lv(pv: &[u8], runs: &[(u64, u64, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(_, p, n) in runs {
        out.extend_from_slice(&pv[p as usize..(p + n) as usize]);
    }
    out
}

fn pattern(size: usize, seed: usize) -> Vec<u8> {
    (0..size)
        .map(|j| (j * 31 + seed * 7 + j / 509) as u8)
        .collect()
}

/// An ext4 image of `len` bytes holding two files, one written and deleted first (stale data).
fn ext4(dir: &Path, len: u64) -> Vec<u8> {
    let img = dir.join("ext4.img");
    std::fs::write(&img, vec![0xC3u8; len as usize]).unwrap();
    let root = dir.join("ext4root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a"), pattern(2_000_000, 1)).unwrap();
    std::fs::write(root.join("b"), pattern(70_000, 2)).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "nodiscard", "-d"])
        .arg(&root)
        .arg(&img));
    std::fs::read(&img).unwrap()
}

fn fat(dir: &Path, len: u64) -> Vec<u8> {
    let img = dir.join("fat.img");
    std::fs::write(&img, vec![0x3Cu8; len as usize]).unwrap();
    run(Command::new("mkfs.vfat").arg("-F").arg("32").arg(&img));
    let f = dir.join("c");
    std::fs::write(&f, pattern(500_000, 3)).unwrap();
    run(Command::new("mcopy").arg("-i").arg(&img).arg(&f).arg("::c"));
    std::fs::read(&img).unwrap()
}

#[test]
fn logical_volumes_are_read_through_their_filesystems() {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pv_file = d.join("pv.img");
    // Stale bytes everywhere before LVM and the filesystems arrive.
    std::fs::write(&pv_file, vec![0xEEu8; (300 * MIB) as usize]).unwrap();
    let runs = {
        let lo = Loop::new(&pv_file);
        let lvm = Lvm {
            dev: lo.0.clone(),
            sys: d.join("lvm"),
        };
        std::fs::create_dir_all(d.join("lvm/lock")).unwrap();
        lvm.cmd("pvcreate", &[&lo.0]);
        lvm.cmd("vgcreate", &["tvg", &lo.0]);
        lvm.lvcreate(&["-n", "root", "-L", "100M", "tvg"]);
        lvm.lvcreate(&["-n", "efi", "-L", "40M", "tvg"]);
        lvm.lvcreate(&["-n", "blob", "-L", "8M", "tvg"]);
        // root grows past efi and blob: two runs, not adjacent on the PV.
        lvm.lvextend(&["-L", "+20M", "tvg/root"]);
        ["root", "efi", "blob"].map(|lv| lvm.runs(lv))
    };
    assert_eq!(runs[0].len(), 2, "root in two runs: {:?}", runs[0]);
    let mut pv = std::fs::read(&pv_file).unwrap();
    write_lv(&mut pv, &runs[0], &ext4(d, 120 * MIB));
    write_lv(&mut pv, &runs[1], &fat(d, 40 * MIB));
    // blob: no filesystem, a few non-zero bytes in a sea of zeros.
    let mut blob = vec![0u8; (8 * MIB) as usize];
    blob[5 * MIB as usize..5 * MIB as usize + 100].fill(0x77);
    write_lv(&mut pv, &runs[2], &blob);
    std::fs::write(&pv_file, &pv).unwrap();

    let dev = FileDevice::open_read(&pv_file).unwrap();
    assert_eq!(super::super::probe(&dev).unwrap(), FsKind::Lvm2);
    let rep = read(&dev, MIB).unwrap();
    assert_eq!(rep.label.as_deref(), Some("tvg"));
    let names: Vec<(&str, FsKind)> = rep
        .volumes
        .iter()
        .map(|v| (v.name.as_str(), v.kind))
        .collect();
    assert_eq!(
        names,
        [
            ("tvg/root", FsKind::Ext4),
            ("tvg/efi", FsKind::Fat32),
            ("tvg/blob", FsKind::Unknown)
        ]
    );
    assert_eq!(rep.volumes[0].size, 120 * MIB);
    assert!(rep.volumes[0].warning.is_none() && rep.volumes[1].warning.is_none());
    assert!(rep.volumes[2]
        .warning
        .as_ref()
        .unwrap()
        .contains("raw copy"));
    // blob's raw copy: the one 1 MiB region holding its bytes.
    assert_eq!(rep.volumes[2].used_bytes, MIB);
    // Far less than the PV: the filesystems' used blocks, the label and metadata areas.
    let used = rep.used.total();
    assert!(used < 40 * MIB, "{used} bytes used");
    let s = scan(&dev, MIB).unwrap();
    assert!(
        s.warning
            .as_ref()
            .is_some_and(|w| w.starts_with("tvg/blob: ")),
        "{:?}",
        s.warning
    );
    drop(dev);

    // Everything outside the map overwritten: each LV still checks and holds its files.
    for gap in rep.used.gaps(0, pv.len() as u64).iter() {
        pv[gap.start as usize..gap.end() as usize].fill(0x5A);
    }
    let root = d.join("root.img");
    std::fs::write(&root, read_lv(&pv, &runs[0])).unwrap();
    run(Command::new("e2fsck").args(["-f", "-n"]).arg(&root));
    for (name, seed, size) in [("a", 1, 2_000_000), ("b", 2, 70_000)] {
        let out = d.join(format!("out-{name}"));
        run(Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump /{name} {}", out.display()))
            .arg(&root));
        assert!(
            std::fs::read(&out).unwrap() == pattern(size, seed),
            "{name}"
        );
    }
    let efi = d.join("efi.img");
    std::fs::write(&efi, read_lv(&pv, &runs[1])).unwrap();
    run(Command::new("fsck.vfat").arg("-n").arg(&efi));
    let out = d.join("out-c");
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&efi)
        .arg("::c")
        .arg(&out));
    assert!(std::fs::read(&out).unwrap() == pattern(500_000, 3));
    // The PV itself: LVM still reads its label and metadata.
    std::fs::write(&pv_file, &pv).unwrap();
    let lo = Loop::new(&pv_file);
    let lvm = Lvm {
        dev: lo.0.clone(),
        sys: d.join("lvm"),
    };
    assert_eq!(lvm.runs("root"), runs[0]);
}

/// A PV of `mib` MiB with one metadata area holding `text`: label in sector 1, metadata area
/// from 4 KiB, extents from 1 MiB, the uuid `PVUUIDabcd...`.
fn synthetic_pv(mib: u64, text: &str) -> Vec<u8> {
    pv_with(mib * MIB, MIB, text)
}

/// A PV of `len` bytes whose extents start at `data` (the metadata area fills the space from
/// 4 KiB up to there).
fn pv_with(len: u64, data: u64, text: &str) -> Vec<u8> {
    let mut d = vec![0u8; len as usize];
    let l = &mut d[512..1024];
    l[..8].copy_from_slice(b"LABELONE");
    l[8..16].copy_from_slice(&1u64.to_le_bytes());
    l[20..24].copy_from_slice(&32u32.to_le_bytes());
    l[24..32].copy_from_slice(b"LVM2 001");
    l[32..64].copy_from_slice(b"PVUUIDabcdefghijklmnopqrstuvwxyz");
    l[64..72].copy_from_slice(&len.to_le_bytes());
    l[72..80].copy_from_slice(&data.to_le_bytes()); // data area, to the end
    l[104..112].copy_from_slice(&4096u64.to_le_bytes()); // metadata area
    l[112..120].copy_from_slice(&(data - 4096).to_le_bytes());
    l[136..140].copy_from_slice(&1u32.to_le_bytes()); // extension, no boot loader area
    let c = lvm_crc(CRC_INIT, &l[20..]);
    l[16..20].copy_from_slice(&c.to_le_bytes());
    let h = &mut d[4096..4608];
    h[4..20].copy_from_slice(MDA_MAGIC);
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[24..32].copy_from_slice(&4096u64.to_le_bytes());
    h[32..40].copy_from_slice(&(data - 4096).to_le_bytes());
    h[40..48].copy_from_slice(&512u64.to_le_bytes());
    h[48..56].copy_from_slice(&(text.len() as u64).to_le_bytes());
    h[56..60].copy_from_slice(&lvm_crc(CRC_INIT, text.as_bytes()).to_le_bytes());
    let c = lvm_crc(CRC_INIT, &h[4..]);
    h[..4].copy_from_slice(&c.to_le_bytes());
    d[4608..4608 + text.len()].copy_from_slice(text.as_bytes());
    d
}

/// Metadata for an 8 MiB synthetic PV (`pv0`, 7 extents of 1 MiB): a plain LV, a thin pool's
/// hidden data LV and its thin volume, an LV partly on another PV, one wholly there.
pub(crate) const THIN_AND_SPREAD: &str = r#"vg0 {
id = "vg"
seqno = 3
extent_size = 2048 # 1 MiB
physical_volumes {
pv0 { id = "PVUUID-abcd-efgh-ijkl-mnop-qrst-uvwxyz" pe_start = 2048 pe_count = 7 }
pv1 { id = "other" pe_start = 2048 pe_count = 100 }
}
logical_volumes {
plain { status = ["READ", "WRITE", "VISIBLE"] segment_count = 1
  segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv0", 0] } }
pool { status = ["READ", "WRITE", "VISIBLE"] segment_count = 1
  segment1 { start_extent = 0 extent_count = 2 type = "thin-pool" metadata = "pool_tmeta" pool = "pool_tdata" } }
pool_tdata { status = ["READ", "WRITE"] segment_count = 1
  segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 1] } }
thin { status = ["READ", "WRITE", "VISIBLE"] segment_count = 1
  segment1 { start_extent = 0 extent_count = 4 type = "thin" thin_pool = "pool" device_id = 1 } }
spread { status = ["READ", "WRITE", "VISIBLE"] segment_count = 2
  segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv1", 0] }
  segment2 { start_extent = 1 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 3] } }
elsewhere { status = ["READ", "WRITE", "VISIBLE"] segment_count = 1
  segment1 { start_extent = 0 extent_count = 5 type = "striped" stripe_count = 1 stripes = ["pv1", 10] } }
}
}
contents = "Text Format Volume Group"
version = 1
"#;

#[test]
fn volumes_that_are_not_filesystems_here_are_raw_copies_by_name() {
    let mut d = synthetic_pv(8, THIN_AND_SPREAD);
    // Bytes in the pool's data (extent 1, at PV byte 2 MiB) and in spread's part (extent 3).
    d[(2 * MIB + 10) as usize] = 1;
    d[(4 * MIB + 10) as usize] = 2;
    // Stale bytes in a free extent (6) are not kept.
    d[(7 * MIB + 10) as usize] = 3;
    let dev = MemDevice::new(d);
    let rep = read(&dev, 512 * 1024).unwrap();
    let v: Vec<(&str, FsKind, u64)> = rep
        .volumes
        .iter()
        .map(|v| (v.name.as_str(), v.kind, v.used_bytes))
        .collect();
    assert_eq!(
        v,
        [
            ("vg0/plain", FsKind::Unknown, 0),
            ("vg0/pool_tdata", FsKind::Unknown, 512 * 1024),
            ("vg0/spread", FsKind::Unknown, 512 * 1024),
        ]
    );
    let w = |i: usize| rep.volumes[i].warning.clone().unwrap();
    assert!(w(0).contains("every byte is zero"), "{}", w(0));
    assert!(w(1).contains("hidden volume of a thin pool"), "{}", w(1));
    assert!(w(2).contains("spans other physical volumes"), "{}", w(2));
    assert_eq!(rep.volumes[2].extents.total(), 2 * MIB);
    // Label and metadata area (the first MiB), the two raw regions; not the free extent.
    let got: Vec<(u64, u64)> = rep.used.iter().map(|e| (e.start, e.len)).collect();
    assert_eq!(got, [(0, MIB), (2 * MIB, MIB / 2), (4 * MIB, MIB / 2)]);
}

#[test]
fn damaged_labels_and_metadata_are_refused_by_name() {
    let good = synthetic_pv(8, THIN_AND_SPREAD);
    let err = |d: Vec<u8>| read(&MemDevice::new(d), MIB).unwrap_err().to_string();
    let mut d = good.clone();
    d[600] ^= 1; // inside the label's crc range
    assert!(err(d).contains("label checksum"));
    let mut d = good.clone();
    d[4096 + 100] ^= 1; // inside the metadata header
    assert!(err(d).contains("metadata header at 4096: checksum"));
    let mut d = good.clone();
    d[4608 + 20] ^= 1; // the text
    assert!(err(d).contains("metadata text checksum"));
    // Valid crcs, but metadata that does not name this PV, or puts an LV past it.
    let e = err(synthetic_pv(
        8,
        &THIN_AND_SPREAD.replace("PVUUID-abcd", "XXXXXX-abcd"),
    ));
    assert!(e.contains("does not list this PV"), "{e}");
    let e = err(synthetic_pv(
        8,
        &THIN_AND_SPREAD.replace("[\"pv0\", 3]", "[\"pv0\", 6]"),
    ));
    assert!(e.contains("past the PV"), "{e}");
    let e = err(synthetic_pv(8, &THIN_AND_SPREAD.replace("pv0 {", "pv0 [")));
    assert!(e.contains("metadata text, byte"), "{e}");
    // Through scan: the raw copy with the reason.
    let mut d = good;
    d[600] ^= 1;
    let s = scan(&MemDevice::new(d), MIB).unwrap();
    assert_eq!(s.detected, FsKind::Lvm2);
    assert!(s.warning.unwrap().contains("label checksum"));
}

#[test]
fn the_text_format_parses_lvm_s_own_output() {
    let v = parse(
        "# comment\nvg {\nid = \"a-b\"\nseqno = 12\nflags = []\nx = [\"A\", \"B\"] # trailing\n\
         sub { n = -3 f = 1.5 s = \"q\\\"uote\" }\n}\ncontents = \"Text\"\n\0\0",
    )
    .unwrap();
    let vg = v.get("vg").unwrap();
    assert_eq!(vg.str("id"), Some("a-b"));
    assert_eq!(vg.num("seqno").unwrap(), 12);
    assert!(vg.has_flag("x", "B") && !vg.has_flag("x", "C"));
    let sub = vg.get("sub").unwrap();
    assert_eq!(sub.get("n"), Some(&Value::Num(-3)));
    assert_eq!(sub.str("s"), Some("q\"uote"));
    assert!(parse("vg { a = }").is_err());
    assert!(parse("vg { a = \"open").is_err());
    assert!(parse(&"a { ".repeat(100)).is_err());
}

#[test]
fn metadata_wrapping_round_the_area_end_is_read() {
    // The committed text starts 100 bytes before the area's end and continues after its header.
    let text = THIN_AND_SPREAD;
    let mut d = synthetic_pv(8, text);
    let size = MIB - 4096;
    let off = size - 100;
    d[4608..4608 + text.len()].fill(0);
    let (a, b) = text.as_bytes().split_at(100);
    let at = (4096 + off) as usize;
    d[at..at + 100].copy_from_slice(a);
    d[4608..4608 + b.len()].copy_from_slice(b);
    let h = &mut d[4096..4608];
    h[40..48].copy_from_slice(&off.to_le_bytes());
    let c = lvm_crc(CRC_INIT, &h[4..]);
    h[..4].copy_from_slice(&c.to_le_bytes());
    let rep = read(&MemDevice::new(d), MIB).unwrap();
    assert_eq!(rep.volumes.len(), 3);
}

/// The fuzz seed: a 144 KiB PV (extents of 16 KiB from 64 KiB) with an empty plain LV, a thin
/// pool's data and an LV partly on another PV.
fn seed() -> Vec<u8> {
    let text = THIN_AND_SPREAD
        .replace("extent_size = 2048 # 1 MiB", "extent_size = 32")
        .replace(
            "pe_start = 2048 pe_count = 7",
            "pe_start = 128 pe_count = 5",
        );
    let mut d = pv_with(144 << 10, 64 << 10, &text);
    d[(64 << 10) + 16 * 1024 + 5] = 0xAA;
    d
}

#[test]
fn the_fuzz_corpus_holds_the_synthetic_pv() {
    let d = seed();
    let rep = read(&MemDevice::new(d.clone()), 1 << 14).unwrap();
    assert_eq!(rep.volumes.len(), 3);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/fs_readers/seed-lvm2");
    if std::env::var_os("DROVER_WRITE_SEEDS").is_some() {
        std::fs::write(&path, &d).unwrap();
    }
    assert!(
        std::fs::read(&path).unwrap() == d,
        "{}: not the generator's output (DROVER_WRITE_SEEDS=1 rewrites it)",
        path.display()
    );
}
