//! The protocol against a minimal client written from the specification; the stock clients
//! (qemu-img, nbdcopy, QEMU) are run by the end-to-end suite.

use super::*;
use imaging::device::MemDevice;

fn piece(name: &str, offset: u64, len: u64) -> Export {
    Export {
        name: name.into(),
        offset,
        len,
        fs: None,
        label: None,
        segments: Vec::new(),
    }
}

fn server() -> (std::net::SocketAddr, Vec<u8>) {
    let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let srv = Arc::new(Server {
        dev: Arc::new(MemDevice::new(data.clone())),
        exports: vec![piece("disk", 0, data.len() as u64), piece("p1", 4096, 8192)],
        allow: vec![],
    });
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || srv.serve(l));
    (addr, data)
}

fn opt(s: &mut TcpStream, opt: u32, data: &[u8]) {
    let mut m = Vec::new();
    m.extend(IHAVEOPT.to_be_bytes());
    m.extend(opt.to_be_bytes());
    m.extend((data.len() as u32).to_be_bytes());
    m.extend(data);
    s.write_all(&m).unwrap();
}

/// Reads one option reply: (reply type, data).
fn opt_reply(s: &mut TcpStream) -> (u32, Vec<u8>) {
    assert_eq!(read_u64(s).unwrap(), REPLY_MAGIC);
    let _opt = read_u32(s).unwrap();
    let kind = read_u32(s).unwrap();
    let len = read_u32(s).unwrap();
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d).unwrap();
    (kind, d)
}

fn go(name: &str) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend((name.len() as u32).to_be_bytes());
    d.extend(name.as_bytes());
    d.extend(0u16.to_be_bytes());
    d
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    assert_eq!(read_u64(&mut s).unwrap(), NBDMAGIC);
    assert_eq!(read_u64(&mut s).unwrap(), IHAVEOPT);
    let mut f = [0u8; 2];
    s.read_exact(&mut f).unwrap();
    assert_eq!(
        u16::from_be_bytes(f) & FLAG_FIXED_NEWSTYLE,
        FLAG_FIXED_NEWSTYLE
    );
    s.write_all(&(1u32 | CLIENT_NO_ZEROES).to_be_bytes())
        .unwrap();
    s
}

fn request(s: &mut TcpStream, kind: u16, handle: u64, offset: u64, len: u32) {
    let mut r = Vec::new();
    r.extend(REQUEST_MAGIC.to_be_bytes());
    r.extend(0u16.to_be_bytes());
    r.extend(kind.to_be_bytes());
    r.extend(handle.to_be_bytes());
    r.extend(offset.to_be_bytes());
    r.extend(len.to_be_bytes());
    s.write_all(&r).unwrap();
}

/// (error, handle) of a simple reply.
fn simple_reply(s: &mut TcpStream) -> (u32, u64) {
    assert_eq!(read_u32(s).unwrap(), SIMPLE_REPLY_MAGIC);
    let e = read_u32(s).unwrap();
    (e, read_u64(s).unwrap())
}

#[test]
fn lists_goes_reads_a_partition_and_refuses_writes() {
    let (addr, data) = server();
    let mut s = connect(addr);
    opt(&mut s, OPT_LIST, &[]);
    let mut names = Vec::new();
    loop {
        let (k, d) = opt_reply(&mut s);
        if k == REP_ACK {
            break;
        }
        assert_eq!(k, REP_SERVER);
        names.push(String::from_utf8(d[4..].to_vec()).unwrap());
    }
    assert_eq!(names, ["disk", "p1"]);
    opt(&mut s, OPT_STRUCTURED_REPLY_FOR_TEST, &[]);
    assert_eq!(opt_reply(&mut s).0, REP_ERR_UNSUP);
    opt(&mut s, OPT_GO, &go("p9"));
    assert_eq!(opt_reply(&mut s).0, REP_ERR_UNKNOWN);
    opt(&mut s, OPT_GO, &go("p1"));
    let (k, info) = opt_reply(&mut s);
    assert_eq!(k, REP_INFO);
    assert_eq!(u64::from_be_bytes(info[2..10].try_into().unwrap()), 8192);
    let flags = u16::from_be_bytes(info[10..12].try_into().unwrap());
    assert_ne!(flags & TFLAG_READ_ONLY, 0);
    assert_eq!(opt_reply(&mut s).0, REP_INFO, "block sizes");
    assert_eq!(opt_reply(&mut s).0, REP_ACK);

    request(&mut s, CMD_READ, 7, 100, 5000);
    assert_eq!(simple_reply(&mut s), (0, 7));
    let mut got = vec![0u8; 5000];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, data[4096 + 100..4096 + 5100]);

    // A write's payload is consumed and refused; the connection stays usable.
    request(&mut s, CMD_WRITE, 8, 0, 3);
    s.write_all(b"abc").unwrap();
    assert_eq!(simple_reply(&mut s), (EPERM, 8));
    request(&mut s, CMD_READ, 9, 8000, 193);
    assert_eq!(
        simple_reply(&mut s),
        (EINVAL, 9),
        "past the partition's end"
    );
    request(&mut s, CMD_READ, 10, 0, 1);
    assert_eq!(simple_reply(&mut s), (0, 10));
    let mut one = [0u8; 1];
    s.read_exact(&mut one).unwrap();
    assert_eq!(one[0], data[4096]);
    request(&mut s, CMD_DISC, 11, 0, 0);
    assert_eq!(s.read(&mut one).unwrap(), 0, "closed after NBD_CMD_DISC");
}

#[test]
fn the_old_export_name_option_serves_the_disk_by_default() {
    let (addr, data) = server();
    let mut s = connect(addr);
    opt(&mut s, OPT_EXPORT_NAME, b"");
    assert_eq!(read_u64(&mut s).unwrap(), data.len() as u64);
    let mut f = [0u8; 2];
    s.read_exact(&mut f).unwrap();
    request(&mut s, CMD_READ, 1, 12000, 288);
    assert_eq!(simple_reply(&mut s), (0, 1));
    let mut got = vec![0u8; 288];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, data[12000..]);
}

const OPT_STRUCTURED_REPLY_FOR_TEST: u32 = 8;
