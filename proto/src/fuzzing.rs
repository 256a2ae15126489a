//! Entry points for the fuzz targets and the corpus replay test.
//!
//! Every function takes untrusted bytes and must never panic.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crate::wire::{self, Announce, DataHeader, Feedback, Reply, SessionKey};
use crate::{Layout, Receiver, ReceiverConfig, Sender, SenderConfig};

static KEY: LazyLock<SessionKey> = LazyLock::new(|| SessionKey::new([0x42; 32]));
const SESSION: u32 = 0x0D0E_0F10;

/// Every wire decoder over `data`; re-encoding what decodes must give the same bytes.
pub fn decoders(data: &[u8]) {
    let _ = wire::peek(data);
    if let Ok(a) = Announce::decode(data) {
        let mut buf = Vec::new();
        a.encode(&mut buf);
        assert_eq!(Announce::decode(&buf).as_ref(), Ok(&a));
    }
    // With a key of all 0x42 a random tag never matches; fuzz the structure behind it by
    // also trying the input with its tag recomputed (and the current wire version, so a
    // corpus saved under an older one still reaches the decoders).
    let mut sealed = data.to_vec();
    if sealed.len() > wire::TAG_LEN {
        sealed[1] = wire::VERSION;
        let n = sealed.len() - wire::TAG_LEN;
        let tag = KEY.tag(&sealed[..n]);
        sealed[n..].copy_from_slice(&tag);
    }
    for d in [data, &sealed[..]] {
        if let Ok((h, sym)) = DataHeader::decode(d, SESSION, &KEY) {
            let mut buf = Vec::new();
            h.encode(SESSION, &KEY, sym, sym.len(), &mut buf);
            assert_eq!(&buf[..], d);
        }
        if let Ok(f) = Feedback::decode(d, SESSION, &KEY) {
            let mut buf = Vec::new();
            f.encode(SESSION, &KEY, &mut buf);
            assert_eq!(Feedback::decode(&buf, SESSION, &KEY).as_ref(), Ok(&f));
        }
        if let Ok(r) = Reply::decode(d, SESSION, &KEY) {
            // Replies define no flags; unknown ones are ignored, so compare the fields.
            let mut buf = Vec::new();
            r.encode(SESSION, &KEY, &mut buf);
            assert_eq!(Reply::decode(&buf, SESSION, &KEY), Ok(r));
        }
    }
}

/// Feeds `data` (split at 0xFF 0xFF markers into datagrams, each re-tagged with the session
/// key) to a receiver and a sender: whatever it holds, neither may panic or stall.
pub fn session(data: &[u8]) {
    let now = Instant::now();
    let layout = Layout::new(64, 4, vec![100, 300, 1]).unwrap();
    let mut rx = Receiver::new(
        ReceiverConfig::new(SESSION, KEY.clone(), 1),
        layout.clone(),
        now,
    );
    let mut cfg = SenderConfig::new(SESSION, KEY.clone());
    cfg.start.min_receivers = 0;
    let mut tx = Sender::new(cfg, layout, now);
    let from = "10.0.0.2:9000".parse().unwrap();
    let _ = tx.add_receiver(now, from);
    let mut buf = Vec::new();
    for (i, d) in data.split(|&b| b == 0xFF).enumerate() {
        let mut d = d.to_vec();
        if d.len() > wire::TAG_LEN {
            d[1] = wire::VERSION;
            let n = d.len() - wire::TAG_LEN;
            let tag = KEY.tag(&d[..n]);
            d[n..].copy_from_slice(&tag);
        }
        let t = now + Duration::from_millis(i as u64 * 10);
        rx.handle_datagram(t, &d);
        rx.handle_timeout(t);
        while rx.poll_fetch(t).is_some() {}
        while rx.poll_event().is_some() {}
        let _ = rx.poll_transmit(t, &mut buf);
        tx.handle_datagram(t, from, &d);
        tx.handle_timeout(t);
        for _ in 0..64 {
            if tx.poll_transmit(t, &mut buf).is_none() {
                break;
            }
        }
        while let Some(i) = tx.poll_load() {
            let len = tx.layout().chunk_len(i);
            let _ = tx.provide(i, vec![i as u8; len]);
        }
    }
}
