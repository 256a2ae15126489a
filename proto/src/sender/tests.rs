//! Unit tests of the sender core (the simulation in tests/ covers whole sessions).

use super::*;

#[test]
fn starts_at_its_time_whoever_joined() {
    let now = Instant::now();
    let layout = Layout::new(1000, 64, vec![10_000; 2]).unwrap();
    let mut cfg = SenderConfig::new(1, SessionKey::new([1; 32]));
    cfg.start = StartPolicy {
        min_receivers: usize::MAX,
        max_wait: None,
        start_at: Some(now + Duration::from_secs(60)),
    };
    let mut s = Sender::new(cfg, layout, now);
    for i in 0..3u8 {
        s.add_receiver(now, SocketAddr::from(([10, 0, 0, i], 9000)))
            .unwrap();
    }
    s.handle_timeout(now + Duration::from_secs(59));
    assert_eq!(s.state(), SenderState::Waiting);
    s.handle_timeout(now + Duration::from_secs(60));
    assert_eq!(s.state(), SenderState::Running);
}

/// A machine that will not join (it gets its image elsewhere) is not waited for; the count
/// never drops to nobody, and a start at a set time is not moved.
#[test]
fn one_fewer_starts_once_the_others_joined() {
    let now = Instant::now();
    let layout = Layout::new(1000, 64, vec![10_000; 2]).unwrap();
    let mut cfg = SenderConfig::new(1, SessionKey::new([1; 32]));
    cfg.start = StartPolicy {
        min_receivers: 3,
        max_wait: None,
        start_at: None,
    };
    let mut s = Sender::new(cfg.clone(), layout.clone(), now);
    for i in 0..2u8 {
        s.add_receiver(now, SocketAddr::from(([10, 0, 0, i], 9000)))
            .unwrap();
    }
    s.handle_timeout(now + Duration::from_secs(1));
    assert_eq!(s.state(), SenderState::Waiting);
    s.one_fewer();
    s.handle_timeout(now + Duration::from_secs(2));
    assert_eq!(s.state(), SenderState::Running);

    let mut s = Sender::new(cfg.clone(), layout.clone(), now);
    for _ in 0..5 {
        s.one_fewer();
    }
    s.handle_timeout(now + Duration::from_secs(3));
    assert_eq!(s.state(), SenderState::Waiting, "nobody joined");
    s.add_receiver(now, SocketAddr::from(([10, 0, 0, 9], 9000)))
        .unwrap();
    s.handle_timeout(now + Duration::from_secs(4));
    assert_eq!(s.state(), SenderState::Running);

    cfg.start = StartPolicy {
        min_receivers: usize::MAX,
        max_wait: None,
        start_at: Some(now + Duration::from_secs(60)),
    };
    let mut s = Sender::new(cfg, layout, now);
    s.add_receiver(now, SocketAddr::from(([10, 0, 0, 1], 9000)))
        .unwrap();
    s.one_fewer();
    s.handle_timeout(now + Duration::from_secs(5));
    assert_eq!(s.state(), SenderState::Waiting, "a set time stays");
}

/// The sender asks for a few chunks ahead, not the whole image, however slowly the
/// driver provides them: its memory must not grow with the image.
#[test]
fn loads_stay_a_few_chunks_ahead() {
    let now = Instant::now();
    let layout = Layout::new(1000, 64, vec![10_000; 100]).unwrap();
    let mut cfg = SenderConfig::new(1, SessionKey::new([1; 32]));
    cfg.start.min_receivers = 0;
    cfg.window_bytes = 30_000;
    let mut s = Sender::new(cfg, layout, now);
    s.handle_timeout(now);
    let mut asked = Vec::new();
    while let Some(i) = s.poll_load() {
        asked.push(i);
    }
    assert_eq!(asked, vec![0, 1, 2]);
    let mut buf = Vec::new();
    let mut t = now;
    let mut max_ahead = 0;
    for _ in 0..100_000 {
        for &i in &asked {
            s.provide(i, vec![i as u8; 10_000]).unwrap();
        }
        asked.clear();
        while let Some(i) = s.poll_load() {
            asked.push(i);
        }
        let st = s.stats();
        max_ahead = max_ahead.max(s.next_load - st.window_base);
        t += Duration::from_micros(200);
        s.handle_timeout(t);
        while s.poll_transmit(t, &mut buf).is_some() {}
        if s.state() == SenderState::Done {
            break;
        }
    }
    assert_eq!(s.state(), SenderState::Done);
    // The window (three chunks of 10 kB) plus the lookahead.
    assert!(
        max_ahead <= 3 + 3,
        "{max_ahead} chunks requested beyond the window base"
    );
}

/// Stalls and silences demote at most a quarter of the group in all, however many come in
/// turn: past that the sender slows down for the group instead.
#[test]
fn demotions_stop_at_a_quarter_of_the_group() {
    let now = Instant::now();
    let layout = Layout::new(1000, 64, vec![10_000; 4]).unwrap();
    let mut s = Sender::new(SenderConfig::new(1, SessionKey::new([1; 32])), layout, now);
    for i in 0..40u8 {
        s.add_receiver(now, SocketAddr::from(([10, 0, 0, i], 9000)))
            .unwrap();
    }
    assert!(s.is_minority(9));
    assert!(!s.is_minority(10));
    let ids: Vec<u32> = s.receivers.keys().copied().collect();
    for &id in &ids[..7] {
        s.demote(id, DemoteReason::Stalled);
    }
    // 7 + 2 of 40 is under a quarter; 7 + 3 is not (33 active: "a quarter of the active"
    // would let 8 more go, and then again, until none is left).
    assert!(s.is_minority(2));
    assert!(!s.is_minority(3));
    // Machines that finished are still the group; the dead are not.
    for &id in &ids[7..30] {
        s.receivers.get_mut(&id).unwrap().state = ReceiverState::Finished;
    }
    assert!(s.is_minority(2));
    for &id in &ids[30..36] {
        s.receivers.get_mut(&id).unwrap().state = ReceiverState::Dead;
    }
    // 4 still active, 7 demoted, 23 finished: 34 in the group.
    assert!(s.is_minority(1));
    assert!(!s.is_minority(2));
    // Three or fewer active: any of them may go.
    s.receivers.get_mut(&ids[36]).unwrap().state = ReceiverState::Finished;
    assert!(s.is_minority(3));
}

/// A sender streaming one chunk (ten symbols, one block) to `n` receivers, its first pass
/// sent, `SETTLE` past: what the tests below start from.
fn one_chunk_to(n: u8) -> (Sender, Instant, Vec<(u32, SocketAddr)>) {
    let t0 = Instant::now();
    let layout = Layout::new(1000, 64, vec![10_000]).unwrap();
    let mut cfg = SenderConfig::new(1, SessionKey::new([1; 32]));
    cfg.start.min_receivers = n as usize;
    let mut s = Sender::new(cfg, layout, t0);
    let mut ids = Vec::new();
    for i in 0..n {
        let addr = SocketAddr::from(([10, 0, 0, i], 9000));
        ids.push((s.add_receiver(t0, addr).unwrap(), addr));
    }
    s.handle_timeout(t0);
    while let Some(i) = s.poll_load() {
        s.provide(i, vec![7; 10_000]).unwrap();
    }
    let mut buf = Vec::new();
    while s.poll_transmit(t0, &mut buf).is_some() {}
    assert_eq!(s.stats().frontier, 1);
    (s, t0 + SETTLE + Duration::from_millis(1), ids)
}

fn lacking_chunk_0(id: u32, loss: f64) -> Feedback {
    Feedback {
        flags: 0,
        receiver: id,
        seq: 1,
        first_missing: 0,
        seen_frontier: 1,
        rate_kbit: 100_000,
        loss_ppm: (loss * 1e6) as u32,
        delay_us: 0,
        high_seq: u32::MAX,
        needs: vec![wire::Need {
            chunk: 0,
            block: 0,
            need: 10,
        }],
    }
}

/// A receiver with heavy loss that cannot be demoted (a quarter of the group is already)
/// still gets its repairs: refusing them as to one "about to be demoted" left the window
/// waiting on it for good (a 40-machine lab stalled at 99 %).
#[test]
fn a_lossy_receiver_past_the_quarter_still_gets_repairs() {
    let (mut s, now, ids) = one_chunk_to(8);
    let (a, addr_a) = ids[0];
    assert_eq!(
        s.on_feedback(now, addr_a, &lacking_chunk_0(a, 0.9)),
        ReceiverStatus::Demoted
    );
    let (b, addr_b) = ids[1];
    assert_eq!(
        s.on_feedback(now, addr_b, &lacking_chunk_0(b, 0.9)),
        ReceiverStatus::Active,
        "1 + 1 of 8 is not under a quarter"
    );
    assert!(
        s.window[0].blocks[0].assigned > 0,
        "no repairs for the receiver the window waits on"
    );
}

/// When the whole group waits on a block whose repairs reached their cap (all lost, say,
/// while the sender was starved), the block gets another round instead of holding the
/// window for good.
#[test]
fn a_group_stalled_on_an_exhausted_block_gets_more_repairs() {
    let (mut s, mut now, ids) = one_chunk_to(8);
    let cap = s.window[0].blocks[0].cap();
    s.window[0].blocks[0].assigned = cap;
    s.window[0].blocks[0].sent = cap;
    for &(id, addr) in &ids {
        s.on_feedback(now, addr, &lacking_chunk_0(id, 0.0));
    }
    assert_eq!(s.window[0].blocks[0].assigned, cap, "capped");
    // Every receiver holds the window past the stall timeout: the group, not a minority.
    s.check_stall(now);
    now += s.cfg.stall_timeout + Duration::from_millis(1);
    s.check_stall(now);
    assert_eq!(s.window[0].blocks[0].rounds, 1);
    assert!(s
        .receivers
        .values()
        .all(|r| r.state == ReceiverState::Active));
    let (id, addr) = ids[0];
    s.on_feedback(now, addr, &lacking_chunk_0(id, 0.0));
    assert!(s.window[0].blocks[0].assigned > cap, "repairs again");
}
