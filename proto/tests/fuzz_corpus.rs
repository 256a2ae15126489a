//! Replays the committed fuzz corpus (`fuzz/corpus/{wire,session}/*`) through the entry
//! points the fuzz targets use, as ordinary tests. `cargo run -p proto --example fuzz_seeds`
//! regenerates the seed datagrams from a real session.

use std::fs;
use std::path::{Path, PathBuf};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn replay(target: &str, f: fn(&[u8])) {
    let dir = corpus(target);
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
fn wire_corpus() {
    replay("wire", proto::fuzzing::decoders);
}

#[test]
fn session_corpus() {
    replay("session", proto::fuzzing::session);
}
