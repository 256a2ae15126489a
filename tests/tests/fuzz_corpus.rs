//! Replays the committed fuzz corpus (`fuzz/corpus/TARGET/*`) of every fuzz target through the
//! same entry points the targets use, as ordinary tests: CI runs them without fuzzing.
//! `cargo run -p proto --example fuzz_seeds` regenerates the `wire` and `session` seeds.

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

#[test]
fn wire_corpus() {
    replay("wire", proto::fuzzing::decoders);
}

#[test]
fn session_corpus() {
    replay("session", proto::fuzzing::session);
}

#[test]
fn tftp_corpus() {
    replay("tftp", pxe::fuzzing::tftp);
}

#[test]
fn dhcp_corpus() {
    replay("dhcp", pxe::fuzzing::dhcp);
}
