//! Replays the committed fuzz corpus (`fuzz/corpus/TARGET/*`) through the same entry points
//! the fuzz targets use, as ordinary tests: CI runs them without fuzzing.

use std::fs;
use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let data = fs::read(&p).unwrap();
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "{target}: {} panics", p.display());
        n += 1;
    }
    assert!(n > 0, "{target}: empty corpus in {}", dir.display());
    eprintln!("{target}: replayed {n} inputs");
}

#[test]
fn manifest_corpus() {
    replay("manifest", imaging::fuzzing::manifest);
}

#[test]
fn fs_readers_corpus() {
    replay("fs_readers", imaging::fuzzing::fs_readers);
}

#[test]
fn table_corpus() {
    replay("table", imaging::fuzzing::table);
}
