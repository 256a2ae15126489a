//! Helpers for drover's end-to-end tests: finding (or building) the `drover` binary, running the
//! real mkfs/fsck/partclone tools, making deterministic file trees, loop devices and FUSE mounts
//! that clean up after themselves.
//!
//! Tests that need a tool, root or FUSE call [`require`]: in CI (`CI=true`) a missing
//! requirement fails the test; elsewhere the test is skipped with a printed reason.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod browser;
pub mod deploy;
pub mod evil_peer;
pub mod lab;
pub mod object_store;
pub mod postgres;
pub mod server;
pub mod vm;

use imaging::extent::ExtentMap;
use imaging::manifest::Manifest;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// Whether we run in CI, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether we are root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn have_tool(t: &str) -> bool {
    if t == "root" {
        return is_root();
    }
    if t == "fuse" {
        return Path::new("/dev/fuse").exists() && is_root();
    }
    if t == "qemu" {
        return vm::have_qemu();
    }
    let paths = std::env::var("PATH").unwrap_or_default();
    let found = paths
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .any(|d| Path::new(d).join(t).exists());
    found
}

/// Checks that every requirement (a program name, `root` or `fuse`) is present. Returns false
/// (after printing why) when the test should be skipped; panics in CI instead.
pub fn require(test: &str, needs: &[&str]) -> bool {
    let missing: Vec<&str> = needs.iter().copied().filter(|t| !have_tool(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: needs {} (install with deploy/install-test-deps, run as root)",
        missing.join(", ")
    );
    if in_ci() {
        panic!("{msg}; a skip in CI is a failure");
    }
    eprintln!("SKIPPED {msg}");
    note_skip(&msg);
    false
}

/// Appends a skipped test's reason to `$DROVER_SKIP_LOG` (scripts/test.sh sets it and prints
/// the file in the run's summary, since a test runner shows nothing of a passing test).
fn note_skip(msg: &str) {
    let Some(path) = std::env::var_os("DROVER_SKIP_LOG") else {
        return;
    };
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
        // One short write per line: concurrent test processes append whole lines.
        let _ = f.write_all(format!("{msg}\n").as_bytes());
    }
}

/// The `drover` binary of this workspace, built if it is not there yet.
pub fn drover_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("server", "drover"))
}

/// The `drover-agent` binary of this workspace, built if it is not there yet.
pub fn agent_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("client-agent", "drover-agent"))
}

fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    // scripts/test.sh builds the workspace once and says so: every test process then takes
    // the binaries as they are instead of asking cargo again.
    if let Some(dir) = std::env::var_os("DROVER_PREBUILT_BIN_DIR") {
        let path = PathBuf::from(dir).join(bin);
        assert!(path.exists(), "{} was not built", path.display());
        return path;
    }
    // Otherwise ask cargo: it is a no-op when the binary is fresh, and never tests a stale one.
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .current_dir(&root)
        .status()
        .expect("running cargo build");
    assert!(st.success(), "building {bin} failed");
    target.join("debug").join(bin)
}

/// A command's stdout and stderr, for a failure message.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a program, panicking with its output if it fails.
pub fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a program and returns its whole output, whatever its status.
pub fn run_any(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"))
}

/// A scratch directory with a drover data directory inside.
pub struct Env {
    /// The scratch directory (removed on drop).
    pub dir: tempfile::TempDir,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    /// A new scratch directory.
    pub fn new() -> Self {
        let base = std::env::var_os("DROVER_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        Self {
            dir: tempfile::Builder::new()
                .prefix("drover-test-")
                .tempdir_in(base)
                .expect("tempdir"),
        }
    }

    /// A path inside the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.path("data")
    }

    /// Runs `drover --data-dir DATA ARGS`.
    pub fn drover(&self, args: &[&str]) -> Output {
        Command::new(drover_bin())
            .arg("--data-dir")
            .arg(self.data())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running drover")
    }

    /// Runs drover, expecting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.drover(args);
        assert!(
            out.status.success(),
            "drover {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs drover, expecting failure with exit code 1; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.drover(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "drover {args:?} should have failed with 1:\nstdout: {}\nstderr: {err}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!err.contains("panicked"), "drover panicked: {err}");
        err
    }

    /// `drover --json ARGS`, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let s = self.ok(&a);
        serde_json::from_str(&s)
            .unwrap_or_else(|e| panic!("drover {args:?} printed bad JSON ({e}): {s}"))
    }

    /// Captures `src` as `name`; returns the JSON result.
    pub fn capture(&self, src: &Path, name: &str) -> serde_json::Value {
        self.json(&["image", "capture", src.to_str().unwrap(), "--name", name])
    }

    /// Restores `name` onto `target`; returns the JSON result.
    pub fn restore(&self, name: &str, target: &Path) -> serde_json::Value {
        self.json(&["image", "restore", name, target.to_str().unwrap()])
    }

    /// The store.
    pub fn store(&self) -> imaging::store::Store {
        imaging::store::Store::open(&self.data().join("images")).expect("open store")
    }

    /// The manifest of image `reference`.
    pub fn manifest(&self, reference: &str) -> Manifest {
        self.store()
            .resolve(reference)
            .expect("image exists")
            .manifest
    }
}

/// Creates a sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) {
    let f = fs::File::create(path).expect("create");
    f.set_len(size).expect("set_len");
}

/// Creates a file of `size` pseudo-random bytes (so a missed block shows up as garbage).
pub fn random_file(path: &Path, size: u64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::new(fs::File::create(path).expect("create"));
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    f.flush().expect("flush");
}

/// A deterministic tree of files of mixed sizes and kinds (random, text, zeros, empty) in
/// nested folders, totalling about `total` bytes. Names are 8.3-safe for FAT. Returns the
/// relative paths of the files.
pub fn make_tree(dir: &Path, total: u64, seed: u64) -> Vec<PathBuf> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut files = Vec::new();
    let mut written = 0u64;
    let mut i = 0;
    while written < total {
        let sub = match i % 4 {
            0 => PathBuf::new(),
            1 => PathBuf::from("DIRA"),
            2 => PathBuf::from("DIRA/SUBB"),
            _ => PathBuf::from("DIRC"),
        };
        fs::create_dir_all(dir.join(&sub)).unwrap();
        let rel = sub.join(format!("F{i:05}.BIN"));
        let size: u64 = match rng.gen_range(0..10) {
            0 => 0,
            1..=5 => rng.gen_range(1..64 << 10),
            6..=8 => rng.gen_range(64 << 10..1 << 20),
            _ => rng.gen_range(1 << 20..(4 << 20)),
        }
        .min(total - written + 1);
        let mut data = vec![0u8; size as usize];
        match rng.gen_range(0..3) {
            0 => rng.fill_bytes(&mut data),
            1 => {
                for (k, b) in data.iter_mut().enumerate() {
                    *b = b"drover images the lab; "[k % 23];
                }
                // Make it not entirely repetitive.
                for _ in 0..size / 512 {
                    let k = rng.gen_range(0..size as usize);
                    data[k] = rng.gen();
                }
            }
            _ => {} // zeros: must still be restored as zeros, not as old garbage
        }
        fs::write(dir.join(&rel), &data).unwrap();
        written += size + 1;
        files.push(rel);
        i += 1;
    }
    files
}

/// Every regular file under `dir`, by relative path, with its contents.
pub fn read_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(root, &p, out);
            } else if ft.is_file() {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Asserts that `got` holds exactly the files of `want` (names compared case-insensitively,
/// as FAT and NTFS tools may change case), byte for byte.
pub fn assert_same_files(
    want: &BTreeMap<PathBuf, Vec<u8>>,
    got: &BTreeMap<PathBuf, Vec<u8>>,
    what: &str,
) {
    let norm = |m: &BTreeMap<PathBuf, Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
        m.iter()
            .filter(|(p, _)| !p.starts_with("lost+found"))
            .map(|(p, v)| (p.to_string_lossy().to_ascii_uppercase(), v.clone()))
            .collect()
    };
    let (w, g) = (norm(want), norm(got));
    let wk: Vec<_> = w.keys().collect();
    let gk: Vec<_> = g.keys().collect();
    assert_eq!(wk, gk, "{what}: file lists differ");
    for (k, v) in &w {
        assert!(g[k] == *v, "{what}: contents of {k} differ");
    }
}

/// Parses the `+` ranges of a ddrescue domain log (what `partclone.X -D` writes).
pub fn parse_domain_log(text: &str) -> ExtentMap {
    let mut m = ExtentMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 3 && f[2] == "+" {
            let p = u64::from_str_radix(f[0].trim_start_matches("0x"), 16).unwrap();
            let s = u64::from_str_radix(f[1].trim_start_matches("0x"), 16).unwrap();
            m.push(p, s);
        }
    }
    m.normalize();
    m
}

/// partclone's used ranges for the filesystem in `img` (its `-D` domain log).
pub fn partclone_used(tool: &str, img: &Path, scratch: &Path) -> ExtentMap {
    let log = scratch.join(format!("{tool}.domain"));
    run(
        tool,
        &[
            "-q",
            "-D",
            "-s",
            img.to_str().unwrap(),
            "-o",
            log.to_str().unwrap(),
        ],
    );
    parse_domain_log(&fs::read_to_string(&log).unwrap())
}

/// A loop device over (part of) a file, detached on drop.
pub struct Loop {
    /// `/dev/loopN`.
    pub dev: PathBuf,
}

impl Loop {
    /// Attaches `file` (from `offset`, `size` bytes if given).
    pub fn attach(file: &Path, offset: u64, size: Option<u64>) -> Self {
        let mut args = vec![
            "-f".to_string(),
            "--show".into(),
            "-o".into(),
            offset.to_string(),
        ];
        if let Some(s) = size {
            args.push("--sizelimit".into());
            args.push(s.to_string());
        }
        args.push(file.to_str().unwrap().into());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let dev = run("losetup", &a).trim().to_string();
        Self {
            dev: PathBuf::from(dev),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A mount, unmounted on drop (lazily, so a failing test never leaves it behind).
pub struct Mount {
    /// The mount point.
    pub dir: PathBuf,
}

impl Mount {
    /// Runs `prog args... dir` to mount, e.g. `ntfs-3g IMG` or `mount -o loop IMG`.
    ///
    /// A mount refused as busy is tried again for a few seconds: the kernel may still hold
    /// a filesystem with the same identity that was just unmounted (btrfs keeps a restored
    /// copy's fsid registered until the earlier copy's last reference goes, which a parallel
    /// test's new mount namespace can delay) or udev may be probing the new loop device.
    pub fn new(prog: &str, args: &[&str], dir: &Path) -> Self {
        fs::create_dir_all(dir).unwrap();
        let mut a: Vec<&str> = args.to_vec();
        a.push(dir.to_str().unwrap());
        let mut tries = 0;
        loop {
            let out = run_any(prog, &a);
            if out.status.success() {
                break;
            }
            let busy = String::from_utf8_lossy(&out.stderr).contains("busy");
            tries += 1;
            if !busy || tries == 40 {
                let dmesg = run_any("dmesg", &[]);
                let dmesg = String::from_utf8_lossy(&dmesg.stdout);
                let tail: Vec<&str> = dmesg.lines().rev().take(15).collect();
                panic!(
                    "{prog} {a:?} failed ({tries} tries): {}\n{}\nkernel log, newest first:\n{}",
                    out.status,
                    text(&out),
                    tail.join("\n")
                );
            }
            eprintln!("{prog} {a:?}: busy, trying again");
            std::thread::sleep(Duration::from_millis(250));
        }
        Self {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Mount {
    /// Unmounts, trying again for a few seconds while the mount is busy (something on the
    /// machine may hold it for a moment): a lazy unmount would leave the filesystem mounted —
    /// and its image not cleanly unmounted — for as long as it stays busy. Only then lazily.
    fn drop(&mut self) {
        let _ = Command::new("sync").status();
        for _ in 0..50 {
            let mounted = Command::new("mountpoint")
                .arg("-q")
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success());
            let ok = !mounted
                || Command::new("umount")
                    .arg(&self.dir)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("{} stays busy: unmounting it lazily", self.dir.display());
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Sum of bytes in `m` that `other` does not cover.
pub fn uncovered(m: &ExtentMap, other: &ExtentMap) -> u64 {
    m.iter().map(|e| other.gaps(e.start, e.end()).total()).sum()
}

/// The used map of area `i` of a manifest, in disk coordinates.
pub fn area_used_on_disk(m: &Manifest, i: usize) -> ExtentMap {
    m.areas[i].used.shifted(m.areas[i].offset)
}

/// Copies the whole of `src` into `disk` at byte `offset`.
pub fn write_into(disk: &Path, offset: u64, src: &Path) {
    use std::os::unix::fs::FileExt;
    let data = fs::read(src).unwrap();
    let f = fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&data, offset).unwrap();
}

/// Copies `len` bytes of `disk` from `offset` into a new file `dst`.
pub fn extract(disk: &Path, offset: u64, len: u64, dst: &Path) {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(disk).unwrap();
    let mut data = vec![0u8; len as usize];
    f.read_exact_at(&mut data, offset).unwrap();
    fs::write(dst, data).unwrap();
}

/// Bytes `offset..offset+len` of a file.
pub fn read_range(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(path).unwrap();
    let mut data = vec![0u8; len as usize];
    f.read_exact_at(&mut data, offset).unwrap();
    data
}

/// Writes `data` into `path` at `offset`.
pub fn patch(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

/// Runs a program with `input` on its stdin; panics on failure.
pub fn run_stdin(prog: &str, args: &[&str], input: &str) -> String {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A drover command left running (mount, nbd), stopped on drop.
pub struct Bg(pub Child);

impl Bg {
    /// Starts `drover --data-dir DATA ARGS`, its output kept for [`Bg::output`].
    pub fn start(env: &Env, args: &[&str]) -> Self {
        let c = Command::new(drover_bin())
            .arg("--data-dir")
            .arg(env.data())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting drover");
        Self(c)
    }

    /// Waits for `ready`, failing with the command's output if it exits first.
    pub fn wait_for(&mut self, what: &str, ready: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !ready() {
            if let Some(st) = self.0.try_wait().unwrap() {
                let out = self.output();
                panic!("drover exited ({st}) before {what}: {out}");
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "no {what} in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it printed (once it has exited).
    pub fn output(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(o) = self.0.stdout.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        if let Some(e) = self.0.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// SIGTERM, then the exit status (killed after 20 s).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = self.0.kill();
                panic!("drover did not stop on SIGTERM: {}", self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            // SAFETY: as above.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if self.0.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
