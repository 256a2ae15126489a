//! The TFTP core against a simulated client: option negotiation, whole files of every size
//! class, loss of data and ACKs (retransmission), windows, block-number wrap-around,
//! refusals, and the file-name rules.

use super::*;

fn rrq(name: &str, options: &[(&str, &str)]) -> Request {
    match parse(&encode_rrq(name, "octet", options)).unwrap() {
        Packet::Read(r) => r,
        p => panic!("{p:?}"),
    }
}

fn file(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A client that acknowledges like tftp-hpa/iPXE do (the last block of each window, or the
/// last in-order block it got), losing the server's packets and its own ACKs as `lose` says.
/// Returns the bytes received and how many timeouts the server took.
fn run(
    req: &Request,
    data: &[u8],
    max_blksize: usize,
    mut lose: impl FnMut(u64) -> bool,
) -> (Vec<u8>, u32) {
    let mut now = Instant::now();
    let (mut t, mut actions) = Transfer::start(req, data.len() as u64, max_blksize, now);
    let window = t.params().windowsize as u64;
    let mut got: Vec<u8> = Vec::new();
    let mut expect: u64 = 1;
    let mut seq = 0u64;
    let mut timeouts = 0;
    for _ in 0..100_000 {
        let mut acks = Vec::new();
        for a in actions.drain(..) {
            seq += 1;
            let lost = lose(seq);
            match a {
                Action::SendOack(o) => {
                    if !lost {
                        assert!(matches!(parse(&o).unwrap(), Packet::OptionAck(_)));
                        acks.push(0u16);
                    }
                }
                Action::SendBlock { block, offset, len } => {
                    if lost {
                        continue;
                    }
                    if block == expect {
                        got.extend_from_slice(&data[offset as usize..offset as usize + len]);
                        expect += 1;
                        if block % window == 0 || len < t.params().blksize {
                            acks.push(block as u16);
                        }
                    } else {
                        // Out of order (RFC 7440) or a duplicate (a retransmission after a
                        // lost ACK): acknowledge the last block in order.
                        acks.push((expect - 1) as u16);
                    }
                }
                Action::Done => return (got, timeouts),
                a => panic!("unexpected {a:?}"),
            }
        }
        for a in acks {
            seq += 1;
            if lose(seq) {
                continue;
            }
            actions.extend(t.on_packet(&Packet::Ack(a), now));
        }
        if actions.is_empty() {
            if t.is_over() {
                return (got, timeouts);
            }
            now = t.deadline().unwrap();
            timeouts += 1;
            actions = t.on_timeout(now);
            if actions.iter().any(|a| matches!(a, Action::Abort(_))) {
                return (got, timeouts);
            }
        }
    }
    panic!("the transfer never ended");
}

#[test]
fn plain_requests_get_512_byte_blocks_and_no_oack() {
    for len in [0, 1, 511, 512, 513, 1024, 5000] {
        let data = file(len);
        let (t, first) = Transfer::start(&rrq("f", &[]), len as u64, 1468, Instant::now());
        assert_eq!(t.params().blksize, 512);
        assert!(matches!(
            first[0],
            Action::SendBlock {
                block: 1,
                offset: 0,
                ..
            }
        ));
        let (got, timeouts) = run(&rrq("f", &[]), &data, 1468, |_| false);
        assert_eq!(got, data, "len {len}");
        assert_eq!(timeouts, 0);
    }
}

#[test]
fn options_are_negotiated_and_capped() {
    let req = rrq(
        "undionly.kpxe",
        &[
            ("blksize", "65464"),
            ("tsize", "0"),
            ("timeout", "3"),
            ("windowsize", "400"),
            ("bogus", "1"),
        ],
    );
    let (t, first) = Transfer::start(&req, 70_000, 1468, Instant::now());
    assert_eq!(
        t.params(),
        Params {
            blksize: 1468,
            windowsize: MAX_WINDOW,
            timeout: Duration::from_secs(3)
        }
    );
    let Action::SendOack(o) = &first[0] else {
        panic!("{first:?}")
    };
    let Packet::OptionAck(opts) = parse(o).unwrap() else {
        panic!()
    };
    assert_eq!(
        opts,
        vec![
            ("blksize".to_string(), "1468".to_string()),
            ("tsize".to_string(), "70000".to_string()),
            ("timeout".to_string(), "3".to_string()),
            ("windowsize".to_string(), "64".to_string()),
        ]
    );
    // Out-of-range values are left out, not refused.
    let req = rrq(
        "f",
        &[("blksize", "4"), ("timeout", "0"), ("windowsize", "0")],
    );
    let (t, first) = Transfer::start(&req, 10, 1468, Instant::now());
    assert_eq!(t.params().blksize, 512);
    assert!(matches!(first[0], Action::SendBlock { .. }), "{first:?}");
}

#[test]
fn whole_files_arrive_through_loss_with_windows() {
    let data = file(300_000);
    for (window, loss) in [("1", 0), ("1", 100), ("8", 0), ("8", 100), ("16", 200)] {
        let req = rrq("f", &[("blksize", "1428"), ("windowsize", window)]);
        let (got, timeouts) = run(&req, &data, 1468, lossy(loss));
        assert_eq!(got.len(), data.len(), "window {window}, loss {loss}/1000");
        assert!(got == data, "window {window}: wrong bytes");
        if loss == 0 {
            assert_eq!(timeouts, 0);
        }
    }
}

/// Pseudo-random loss of `per_mille` packets (a fixed pattern could hit the same packet at
/// every retry).
fn lossy(per_mille: u64) -> impl FnMut(u64) -> bool {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % 1000 < per_mille
    }
}

#[test]
fn block_numbers_wrap_past_65535() {
    // 70 000 blocks of 8 bytes.
    let data = file(8 * 70_000 + 3);
    let req = rrq("big", &[("blksize", "8"), ("windowsize", "4")]);
    let (got, _) = run(&req, &data, 1468, |seq| seq % 1009 == 0);
    assert!(got == data);
}

#[test]
fn a_silent_client_is_given_up_after_the_retries() {
    let data = file(5000);
    let (got, timeouts) = run(&rrq("f", &[]), &data, 1468, |seq| seq > 2);
    assert!(got.len() < data.len());
    assert_eq!(timeouts, MAX_RETRIES + 1);
}

#[test]
fn stale_acks_and_errors() {
    let now = Instant::now();
    let (mut t, _) = Transfer::start(&rrq("f", &[]), 2000, 1468, now);
    assert!(matches!(
        t.on_packet(&Packet::Ack(1), now)[0],
        Action::SendBlock { block: 2, .. }
    ));
    // A duplicate ACK sends nothing (no Sorcerer's Apprentice).
    assert!(t.on_packet(&Packet::Ack(1), now).is_empty());
    assert!(t.on_packet(&Packet::Ack(9), now).is_empty());
    let a = t.on_packet(
        &Packet::Error {
            code: ErrorCode::NotDefined,
            message: "bye".into(),
        },
        now,
    );
    assert!(matches!(&a[0], Action::Abort(m) if m.contains("bye")));
    assert!(t.is_over() && t.deadline().is_none());
    // Data sent to a read transfer ends it with an error.
    let (mut t, _) = Transfer::start(&rrq("f", &[]), 2000, 1468, now);
    let a = t.on_packet(
        &Packet::Data {
            block: 1,
            data: b"x",
        },
        now,
    );
    let Action::SendError(e) = &a[0] else {
        panic!("{a:?}")
    };
    assert!(matches!(
        parse(e).unwrap(),
        Packet::Error {
            code: ErrorCode::IllegalOperation,
            ..
        }
    ));
}

#[test]
fn packets_parse_and_malformed_ones_are_named() {
    assert_eq!(parse(&encode_ack(7)).unwrap(), Packet::Ack(7));
    let Packet::Write(w) = parse(b"\x00\x02f\x00octet\x00").unwrap() else {
        panic!()
    };
    assert_eq!(w.filename, "f");
    let r = rrq("A", &[("BLKSIZE", "1024")]);
    assert_eq!(r.options, vec![("blksize".into(), "1024".into())]);
    for (bad, why) in [
        (&b""[..], "0 byte"),
        (b"\x00\x01", "without file name"),
        (b"\x00\x01f\x00octet", "NUL"),
        (b"\x00\x01f\x00octet\x00blksize\x00", "without its value"),
        (b"\x00\x01\x00octet\x00", "empty file name"),
        (b"\x00\x03\x00", "cut short"),
        (b"\x00\x04\x00\x01\x00", "ACK of"),
        (b"\x00\x09", "opcode 9"),
        (b"\x00\x01\xff\xfe\x00octet\x00", "UTF-8"),
    ] {
        let e = parse(bad).unwrap_err();
        assert!(e.to_string().contains(why), "{bad:?}: {e}");
    }
    let e = encode_error(ErrorCode::FileNotFound, "no\0such");
    assert_eq!(
        parse(&e).unwrap(),
        Packet::Error {
            code: ErrorCode::FileNotFound,
            message: "nosuch".into()
        }
    );
}

#[test]
fn file_names_stay_inside_the_boot_directory() {
    let root = Path::new("/srv/boot");
    assert_eq!(
        resolve(root, "undionly.kpxe").unwrap(),
        root.join("undionly.kpxe")
    );
    assert_eq!(
        resolve(root, "efi\\snponly.efi").unwrap(),
        root.join("efi/snponly.efi")
    );
    assert_eq!(resolve(root, "./a/./b").unwrap(), root.join("a/b"));
    // Absolute names are the boot directory's (GRUB's requests), never the server's.
    assert_eq!(
        resolve(root, "/etc/passwd").unwrap(),
        root.join("etc/passwd")
    );
    assert_eq!(
        resolve(root, "/grub/grub.cfg").unwrap(),
        root.join("grub/grub.cfg")
    );
    assert_eq!(resolve(root, "\\x").unwrap(), root.join("x"));
    for bad in [
        "/",
        "/../etc/passwd",
        "../etc/passwd",
        "a/../../x",
        "a\\..\\..\\x",
        "",
        ".",
        "a\0b",
        "\\",
    ] {
        assert!(resolve(root, bad).is_err(), "{bad:?}");
    }
}
