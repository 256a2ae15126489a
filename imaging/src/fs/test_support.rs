//! What the readers' tests share: finding the Debian tools they run, and pinning the fuzz
//! corpus's hand-built seeds to their generators.

use std::path::Path;

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
