//! Writes the seed inputs of the `wire` and `session` fuzz targets into `fuzz/corpus/`: real
//! datagrams of every kind from a short session, under the fuzzing key and session id.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proto::wire::{Announce, Feedback, Need, Reply, SessionKey};
use proto::{Layout, ReceiverStatus, Sender, SenderConfig, SenderState};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Writes seed inputs: real datagrams of each kind, under the fuzzing key and session.
fn main() {
    let key = SessionKey::new([0x42; 32]);
    let session = 0x0D0E_0F10;
    let now = Instant::now();
    let mut cfg = SenderConfig::new(session, key.clone());
    cfg.start.min_receivers = 0;
    cfg.fec = proto::Fec::Fixed(0.5);
    let layout = Layout::new(64, 4, vec![100, 300, 1]).unwrap();
    let mut tx = Sender::new(cfg, layout, now);
    let mut datagrams = Vec::new();
    let mut buf = Vec::new();
    for step in 0..20u64 {
        let t = now + Duration::from_millis(step * 60);
        tx.handle_timeout(t);
        while let Some(i) = tx.poll_load() {
            let len = tx.layout().chunk_len(i);
            tx.provide(i, vec![i as u8 + 1; len]).unwrap();
        }
        while tx.poll_transmit(t, &mut buf).is_some() {
            datagrams.push(buf.clone());
        }
    }
    let fb = Feedback {
        flags: 0,
        receiver: 1,
        seq: 3,
        first_missing: 1,
        seen_frontier: 2,
        rate_kbit: 1000,
        loss_ppm: 20_000,
        delay_us: 300,
        high_seq: 7,
        needs: vec![Need {
            chunk: 1,
            block: 1,
            need: 2,
        }],
    };
    fb.encode(session, &key, &mut buf);
    datagrams.push(buf.clone());
    Reply {
        receiver: 1,
        seq: 3,
        status: ReceiverStatus::Demoted,
        state: SenderState::Running,
        window_base: 1,
        frontier: 2,
    }
    .encode(session, &key, &mut buf);
    datagrams.push(buf.clone());
    Announce {
        session,
        http_port: 8080,
        state: SenderState::Waiting,
        receivers: 1,
        min_receivers: 2,
        chunks: 3,
        bytes: 401,
        name: "seed".into(),
    }
    .encode(&mut buf);
    datagrams.push(buf.clone());
    for (target, sep) in [("wire", false), ("session", true)] {
        let dir = corpus(target);
        fs::create_dir_all(&dir).unwrap();
        if sep {
            // The session target splits its input at 0xFF bytes: all datagrams in one input.
            let all: Vec<u8> = datagrams
                .iter()
                .flat_map(|d| d.iter().copied().filter(|&b| b != 0xFF).chain([0xFF]))
                .collect();
            fs::write(dir.join("seed-stream"), all).unwrap();
        }
        for (i, d) in datagrams
            .iter()
            .enumerate()
            .step_by(if sep { 7 } else { 1 })
        {
            fs::write(dir.join(format!("seed-{i:02}")), d).unwrap();
        }
    }
}
