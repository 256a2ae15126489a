//! What the readers' tests share: finding and running the Debian tools they use, measuring
//! partclone, overwriting what a map leaves out, and pinning the fuzz corpus's hand-built seeds
//! to their generators.

use std::path::Path;
use std::process::Command;

use crate::extent::ExtentMap;

/// Runs `cmd`, asserting it succeeds; its stdout and stderr.
pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

/// Overwrites every byte of `img` outside `used` with 0x5A: what a reader's map leaves out
/// must not matter to the filesystem.
pub(crate) fn scribble_outside(img: &Path, used: &ExtentMap) {
    let mut b = std::fs::read(img).unwrap();
    for g in used.gaps(0, b.len() as u64).iter() {
        b[g.start as usize..g.end() as usize].fill(0x5A);
    }
    std::fs::write(img, b).unwrap();
}

/// The bytes `tool` (a partclone) copies of `img` into its image, counted in the image (in
/// `dir`), not from its "Space in use" line: a 110-byte header, the bitmap and its crc, then
/// the blocks with a crc after each run of them, which add up to less than a block.
pub(crate) fn partclone_copied(tool: &str, img: &Path, dir: &Path) -> u64 {
    let out = dir.join("partclone.img");
    let o = Command::new(tool)
        .args(["-c", "-s"])
        .arg(img)
        .arg("-O")
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr).replace('\r', "\n");
    assert!(o.status.success(), "{tool}: {text}");
    let size = std::fs::metadata(&out).unwrap().len();
    let _ = std::fs::remove_file(&out);
    let field = |name: &str, unit: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|r| r.rsplit('=').next())
            .and_then(|r| r.trim().strip_suffix(unit))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let (block, blocks) = (
        field("Block size:", "Byte"),
        field("Device size:", "Blocks"),
    );
    (size - 110 - blocks.div_ceil(8) - 4) / block * block
}

/// Whether every tool is installed. Outside CI a missing one skips the test (saying so); in
/// CI it is a failure, since deploy/install-test-deps installs them all.
pub(crate) fn have_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(t).exists())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} needed in CI (deploy/install-test-deps installs them)",
        missing.join(", ")
    );
    eprintln!("SKIP: {} missing", missing.join(", "));
    false
}

/// Asserts that the fuzz corpus's seed `name` is `data`, its generator's output;
/// `DROVER_WRITE_SEEDS=1` rewrites it first.
pub(crate) fn pinned_seed(name: &str, data: &[u8]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus/fs_readers")
        .join(name);
    if std::env::var_os("DROVER_WRITE_SEEDS").is_some() {
        std::fs::write(&path, data).unwrap();
    }
    assert!(
        std::fs::read(&path).unwrap() == data,
        "{}: not the generator's output (DROVER_WRITE_SEEDS=1 rewrites it)",
        path.display()
    );
}
