//! NTFS: the `$Bitmap` system file.
//!
//! `$MFT`'s own data runs (record 0) locate record 6, `$Bitmap`, whose unnamed non-resident
//! `$DATA` attribute is the cluster bitmap. On a large or fragmented volume that attribute may
//! be split: record 6 then holds an `$ATTRIBUTE_LIST` naming the extension records that carry
//! each piece, which are read and joined in VCN order (each piece checked to start where the
//! one before ended). Records are checked for their `FILE` signature and their update sequence
//! (fixups) is applied and verified. The backup boot sector, which lies in the sector after the
//! volume, is kept by the caller's tail scan.

use super::{corrupt, le16, le32, le64, FsError, FsKind, FsReport};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const K: FsKind = FsKind::Ntfs;
const ATTR_LIST: u32 = 0x20;
const ATTR_DATA: u32 = 0x80;
/// Attribute list entries followed at most (a volume's worth of `$Bitmap` pieces is far less).
const MAX_LIST_ENTRIES: usize = 4096;
const ATTR_END: u32 = 0xFFFF_FFFF;
/// Fixups protect every 512-byte stride of a record, whatever the sector size.
const FIXUP_STRIDE: usize = 512;

pub(super) fn probe(head: &[u8]) -> bool {
    head.get(3..11) == Some(b"NTFS    ")
}

/// A data run: `len` clusters at `lcn`, or a sparse run when `lcn` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    lcn: Option<u64>,
    len: u64,
}

fn decode_runs(b: &[u8], total_clusters: u64) -> Result<Vec<Run>, FsError> {
    let mut runs = Vec::new();
    let mut i = 0usize;
    let mut lcn: i64 = 0;
    loop {
        let h = *b
            .get(i)
            .ok_or_else(|| corrupt(K, "data run list not terminated"))?;
        if h == 0 {
            break;
        }
        let ls = usize::from(h & 0x0F);
        let os = usize::from(h >> 4);
        if ls == 0 || ls > 8 || os > 8 {
            return Err(corrupt(K, format!("data run header {h:#04x}")));
        }
        let field = b
            .get(i + 1..i + 1 + ls + os)
            .ok_or_else(|| corrupt(K, "data run list truncated"))?;
        let mut len = 0u64;
        for (k, &x) in field[..ls].iter().enumerate() {
            len |= u64::from(x) << (8 * k);
        }
        let run_lcn = if os == 0 {
            None
        } else {
            let mut d: i64 = 0;
            for (k, &x) in field[ls..].iter().enumerate() {
                d |= i64::from(x) << (8 * k);
            }
            // Sign-extend from the field's width.
            let shift = 64 - 8 * os as u32;
            d = (d << shift) >> shift;
            lcn = lcn
                .checked_add(d)
                .filter(|&l| l >= 0)
                .ok_or_else(|| corrupt(K, "data run points before the volume"))?;
            Some(lcn as u64)
        };
        if let Some(l) = run_lcn {
            if l.checked_add(len).is_none_or(|e| e > total_clusters) {
                return Err(corrupt(
                    K,
                    format!("data run of {len} clusters at {l} past the volume's end"),
                ));
            }
        }
        runs.push(Run { lcn: run_lcn, len });
        i += 1 + ls + os;
    }
    Ok(runs)
}

/// Applies the update sequence array in place and checks the record signature.
fn fixup(rec: &mut [u8], what: &str) -> Result<(), FsError> {
    if rec.get(0..4) != Some(b"FILE") {
        return Err(corrupt(K, format!("{what}: no FILE signature")));
    }
    let usa = usize::from(le16(rec, 4));
    let count = usize::from(le16(rec, 6));
    if count == 0 || count - 1 != rec.len() / FIXUP_STRIDE || usa + 2 * count > rec.len() {
        return Err(corrupt(
            K,
            format!("{what}: update sequence of {count} entries at {usa}"),
        ));
    }
    let usn = [rec[usa], rec[usa + 1]];
    for k in 1..count {
        let end = k * FIXUP_STRIDE - 2;
        if rec[end..end + 2] != usn {
            return Err(corrupt(
                K,
                format!("{what}: torn write (update sequence mismatch)"),
            ));
        }
        let (a, b) = (rec[usa + 2 * k], rec[usa + 2 * k + 1]);
        rec[end] = a;
        rec[end + 1] = b;
    }
    Ok(())
}

/// The attributes of a record, as `(type, bytes)`, up to the end marker.
fn attributes<'r>(rec: &'r [u8], what: &str) -> Result<Vec<(u32, &'r [u8])>, FsError> {
    let mut out = Vec::new();
    let mut o = usize::from(le16(rec, 0x14));
    let in_use = (le32(rec, 0x18) as usize).min(rec.len());
    while o + 16 <= in_use {
        let ty = le32(rec, o);
        if ty == ATTR_END {
            break;
        }
        let len = le32(rec, o + 4) as usize;
        if len < 16 || o + len > in_use {
            return Err(corrupt(
                K,
                format!("{what}: attribute of {len} bytes at {o}"),
            ));
        }
        out.push((ty, &rec[o..o + len]));
        o += len;
    }
    Ok(out)
}

/// One piece of an unnamed non-resident `$DATA`: its first VCN, its last, its runs, and (in the
/// first piece only) the data and initialized sizes.
struct DataPiece {
    lowest: u64,
    highest: u64,
    runs: Vec<Run>,
    size: u64,
    init: u64,
}

fn data_piece(a: &[u8], total_clusters: u64, what: &str) -> Result<DataPiece, FsError> {
    if a[8] == 0 {
        return Err(corrupt(K, format!("{what}: $DATA is resident")));
    }
    if a.len() < 0x40 {
        return Err(corrupt(K, format!("{what}: $DATA header is short")));
    }
    let runs_at = usize::from(le16(a, 0x20));
    Ok(DataPiece {
        lowest: le64(a, 0x10),
        highest: le64(a, 0x18),
        runs: decode_runs(a.get(runs_at..).unwrap_or(&[]), total_clusters)?,
        size: le64(a, 0x30),
        init: le64(a, 0x38),
    })
}

/// The unnamed non-resident `$DATA` piece of a record that starts at VCN `vcn`.
fn data_in(rec: &[u8], vcn: u64, total_clusters: u64, what: &str) -> Result<DataPiece, FsError> {
    for (ty, a) in attributes(rec, what)? {
        if ty == ATTR_DATA && a[9] == 0 && (a[8] == 0 || le64(a, 0x10) == vcn) {
            return data_piece(a, total_clusters, what);
        }
    }
    Err(corrupt(
        K,
        format!("{what}: no unnamed $DATA starting at VCN {vcn}"),
    ))
}

/// The unnamed non-resident `$DATA` attribute of a record: (runs, data size, initialized size).
/// `record` reads another MFT record by number (the extension records an attribute list
/// names).
fn data_attr(
    rec: &[u8],
    base: u64,
    total_clusters: u64,
    what: &str,
    record: &dyn Fn(u64) -> Result<Vec<u8>, FsError>,
) -> Result<(Vec<Run>, u64, u64), FsError> {
    let attrs = attributes(rec, what)?;
    let Some(&(_, list)) = attrs.iter().find(|(ty, _)| *ty == ATTR_LIST) else {
        let p = data_in(rec, 0, total_clusters, what)?;
        return Ok((p.runs, p.size, p.init));
    };
    // The attribute list's entries: (type, name length, starting VCN, record number).
    let body = if list[8] == 0 {
        let (at, len) = (usize::from(le16(list, 0x14)), le32(list, 0x10) as usize);
        list.get(at..at + len)
            .ok_or_else(|| corrupt(K, format!("{what}: attribute list past its record")))?
            .to_vec()
    } else {
        return Err(FsError::Unsupported {
            fs: K,
            feature: format!("{what}: a non-resident attribute list"),
        });
    };
    let mut pieces = Vec::new();
    let mut o = 0;
    while o + 0x1A <= body.len() {
        let len = usize::from(le16(&body, o + 4));
        if len < 0x1A || o + len > body.len() {
            return Err(corrupt(K, format!("{what}: attribute list entry at {o}")));
        }
        if le32(&body, o) == ATTR_DATA && body[o + 6] == 0 {
            pieces.push((le64(&body, o + 8), le64(&body, o + 0x10) & 0xFFFF_FFFF_FFFF));
        }
        if pieces.len() > MAX_LIST_ENTRIES {
            return Err(corrupt(K, format!("{what}: attribute list too long")));
        }
        o += len;
    }
    let mut runs = Vec::new();
    let (mut size, mut init, mut next_vcn) = (None, 0, 0u64);
    for (vcn, recno) in pieces {
        if vcn != next_vcn {
            return Err(corrupt(
                K,
                format!("{what}: $DATA piece at VCN {vcn}, expected {next_vcn}"),
            ));
        }
        let ext = if recno == base {
            rec.to_vec()
        } else {
            record(recno)?
        };
        if recno != base && le64(&ext, 0x20) & 0xFFFF_FFFF_FFFF != base {
            return Err(corrupt(
                K,
                format!("{what}: record {recno} is not an extension of record {base}"),
            ));
        }
        let p = data_in(&ext, vcn, total_clusters, what)?;
        let len: u64 = p.runs.iter().map(|r| r.len).sum();
        if p.lowest != vcn || p.highest.checked_add(1) != vcn.checked_add(len) {
            return Err(corrupt(
                K,
                format!(
                    "{what}: $DATA piece in record {recno} covers VCN {}..={}, its runs {len} clusters",
                    p.lowest, p.highest
                ),
            ));
        }
        if vcn == 0 {
            size = Some(p.size);
            init = p.init;
        }
        next_vcn = vcn + len;
        runs.extend(p.runs);
    }
    let size = size.ok_or_else(|| corrupt(K, format!("{what}: no $DATA piece at VCN 0")))?;
    Ok((runs, size, init))
}

/// Byte position on the volume of byte `off` of a file laid out by `runs`.
fn runs_pos(runs: &[Run], off: u64, cluster: u64) -> Option<u64> {
    let mut vcn_start = 0u64;
    let vcn = off / cluster;
    for r in runs {
        if vcn < vcn_start + r.len {
            return r
                .lcn
                .map(|l| (l + vcn - vcn_start) * cluster + off % cluster);
        }
        vcn_start += r.len;
    }
    None
}

pub(super) fn read(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
    let b = read_vec(dev, 0, 512)?;
    if !probe(&b) {
        return Err(corrupt(K, "no NTFS signature"));
    }
    let bps = u64::from(le16(&b, 0x0B));
    let spc_raw = b[0x0D];
    let spc = if spc_raw > 0x80 {
        let s = 256 - u32::from(spc_raw);
        if s > 16 {
            return Err(corrupt(K, format!("sectors per cluster 2^{s}")));
        }
        1u64 << s
    } else {
        u64::from(spc_raw)
    };
    if !(256..=4096).contains(&bps) || !bps.is_power_of_two() || spc == 0 || !spc.is_power_of_two()
    {
        return Err(corrupt(
            K,
            format!("{bps} bytes per sector, {spc} sectors per cluster"),
        ));
    }
    let cluster = bps * spc;
    let total_sectors = le64(&b, 0x28);
    let fs_size = super::volume_size(K, total_sectors, bps, dev)?;
    let total_clusters = total_sectors / spc;
    let mft_lcn = le64(&b, 0x30);
    let cpr = b[0x40] as i8;
    let rec_size: u64 = if cpr > 0 {
        u64::from(cpr as u8) * cluster
    } else {
        let s = u32::from(cpr.unsigned_abs());
        if !(9..=16).contains(&s) {
            return Err(corrupt(K, format!("MFT record size 2^{s}")));
        }
        1 << s
    };
    if rec_size < FIXUP_STRIDE as u64 || rec_size > 65536 || mft_lcn >= total_clusters {
        return Err(corrupt(
            K,
            format!("MFT at cluster {mft_lcn}, {rec_size}-byte records"),
        ));
    }
    // Record 0: $MFT itself, to find where record 6 lives.
    let mut rec = read_vec(dev, mft_lcn * cluster, rec_size as usize)?;
    fixup(&mut rec, "$MFT record")?;
    // Its first piece: it holds the first records, $Bitmap's and any extension of it.
    let mft_runs = data_in(&rec, 0, total_clusters, "$MFT")?.runs;
    let record = |n: u64| -> Result<Vec<u8>, FsError> {
        let at = n
            .checked_mul(rec_size)
            .and_then(|o| runs_pos(&mft_runs, o, cluster))
            .filter(|p| p + rec_size <= fs_size)
            .ok_or_else(|| corrupt(K, format!("$MFT runs do not cover record {n}")))?;
        let mut rec = read_vec(dev, at, rec_size as usize)?;
        fixup(&mut rec, &format!("MFT record {n}"))?;
        Ok(rec)
    };
    let rec = record(6)?;
    let (runs, size, init) = data_attr(&rec, 6, total_clusters, "$Bitmap", &record)?;
    let need = total_clusters.div_ceil(8);
    if size < need {
        return Err(corrupt(
            K,
            format!("$Bitmap holds {size} bytes for {total_clusters} clusters"),
        ));
    }
    let mut used = ExtentMap::new();
    used.push(0, bps); // the boot sector, even if a bitmap forgot cluster 0
    let mut vcn_off = 0u64; // byte offset within the bitmap file of the current run
    let mut buf = vec![0u8; 1 << 20];
    for r in &runs {
        let run_bytes = r.len * cluster;
        let want_end = (vcn_off + run_bytes).min(need).min(init);
        let mut p = vcn_off;
        while p < want_end {
            let n = (want_end - p).min(buf.len() as u64) as usize;
            match r.lcn {
                Some(l) => dev.read_at(&mut buf[..n], l * cluster + (p - vcn_off))?,
                None => buf[..n].fill(0),
            }
            let first_index = p * 8;
            let count = (total_clusters - first_index).min(n as u64 * 8);
            used.push_bitmap(&buf[..n], count, first_index, cluster, 0);
            p += n as u64;
        }
        vcn_off += run_bytes;
        if vcn_off >= need {
            break;
        }
    }
    if vcn_off < need.min(init) {
        return Err(corrupt(K, "$Bitmap runs are shorter than the bitmap"));
    }
    used.normalize();
    Ok(FsReport {
        kind: K,
        block_size: cluster as u32,
        fs_size,
        used,
        label: None,
        volumes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_decode_relative_and_sparse() {
        // 0x21: 1-byte length 0x10, 2-byte offset 0x0100; 0x01: sparse run of 5;
        // 0x11: length 4, offset -0x10 (relative to 0x100).
        let b = [0x21, 0x10, 0x00, 0x01, 0x01, 0x05, 0x11, 0x04, 0xF0, 0x00];
        let runs = decode_runs(&b, 1 << 20).unwrap();
        assert_eq!(
            runs,
            vec![
                Run {
                    lcn: Some(0x100),
                    len: 0x10
                },
                Run { lcn: None, len: 5 },
                Run {
                    lcn: Some(0xF0),
                    len: 4
                }
            ]
        );
        assert_eq!(
            runs_pos(&runs, 0x10 * 4096 + 5 * 4096 + 7, 4096),
            Some(0xF0 * 4096 + 7)
        );
        assert_eq!(runs_pos(&runs, 0x10 * 4096, 4096), None);
    }

    #[test]
    fn runs_reject_out_of_volume() {
        assert!(decode_runs(&[0x21, 0x10, 0x00, 0x01], 0x105).is_err());
        assert!(decode_runs(&[0x11, 0x01, 0x80, 0x00], 1000).is_err()); // negative LCN
        assert!(decode_runs(&[0x21, 0x10], 1000).is_err()); // truncated
        assert!(decode_runs(&[0x21, 0x10, 0x00, 0x01], 1000).is_err()); // unterminated
    }

    /// A 4 MiB NTFS of 512-byte clusters built by hand whose `$Bitmap` (2 clusters) is split
    /// by an attribute list over extension records 7 and 8; `second_vcn` and `owner` (the
    /// base record the second extension names) let a test break it. Returns the image and the
    /// used byte ranges its bitmap gives.
    fn split_bitmap(second_vcn: u64, owner: u64) -> (Vec<u8>, Vec<(u64, u64)>) {
        const C: usize = 512;
        let mut d = vec![0u8; 8192 * C];
        d[3..11].copy_from_slice(b"NTFS    ");
        d[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
        d[0x0D] = 1;
        d[0x28..0x30].copy_from_slice(&8192u64.to_le_bytes());
        d[0x30..0x38].copy_from_slice(&16u64.to_le_bytes());
        d[0x40] = 0xF6; // 1024-byte records
                        // A record: header, attributes, end marker, fixups applied.
        let record = |base: u64, attrs: &[Vec<u8>]| {
            let mut r = vec![0u8; 1024];
            r[..4].copy_from_slice(b"FILE");
            r[4] = 0x30;
            r[6] = 3;
            r[0x14] = 0x38;
            r[0x20..0x28].copy_from_slice(&base.to_le_bytes());
            let mut o = 0x38;
            for a in attrs {
                r[o..o + a.len()].copy_from_slice(a);
                o += a.len();
            }
            r[o..o + 4].copy_from_slice(&ATTR_END.to_le_bytes());
            r[0x18..0x1C].copy_from_slice(&((o + 8) as u32).to_le_bytes());
            r[0x30..0x32].copy_from_slice(&[0x11, 0x22]);
            for k in 1..3 {
                let end = k * 512 - 2;
                r[0x30 + 2 * k] = r[end];
                r[0x31 + 2 * k] = r[end + 1];
                r[end..end + 2].copy_from_slice(&[0x11, 0x22]);
            }
            r
        };
        // A non-resident $DATA piece: `len` clusters at `lcn` from VCN `vcn` (one run).
        let data = |vcn: u64, lcn: u64, len: u64, size: u64| {
            let mut a = vec![0u8; 0x48];
            a[..4].copy_from_slice(&ATTR_DATA.to_le_bytes());
            a[4..8].copy_from_slice(&0x48u32.to_le_bytes());
            a[8] = 1;
            a[0x10..0x18].copy_from_slice(&vcn.to_le_bytes());
            a[0x18..0x20].copy_from_slice(&(vcn + len - 1).to_le_bytes());
            a[0x20..0x22].copy_from_slice(&0x40u16.to_le_bytes());
            for o in [0x28, 0x30, 0x38] {
                a[o..o + 8].copy_from_slice(&size.to_le_bytes());
            }
            a[0x40] = 0x21; // 1-byte length, 2-byte LCN
            a[0x41] = len as u8;
            a[0x42..0x44].copy_from_slice(&(lcn as u16).to_le_bytes());
            a
        };
        let mut list = vec![0u8; 0x18];
        list[..4].copy_from_slice(&ATTR_LIST.to_le_bytes());
        list[0x14..0x16].copy_from_slice(&0x18u16.to_le_bytes());
        for (vcn, rec) in [(0u64, 7u64), (second_vcn, 8)] {
            let mut e = vec![0u8; 0x20];
            e[..4].copy_from_slice(&ATTR_DATA.to_le_bytes());
            e[4..6].copy_from_slice(&0x20u16.to_le_bytes());
            e[7] = 0x1A;
            e[8..16].copy_from_slice(&vcn.to_le_bytes());
            e[0x10..0x18].copy_from_slice(&(rec | 1 << 48).to_le_bytes());
            list.extend(e);
        }
        let n = list.len() as u32;
        list[4..8].copy_from_slice(&n.to_le_bytes());
        list[0x10..0x14].copy_from_slice(&(n - 0x18).to_le_bytes());
        let mft = 16 * C;
        let put = |d: &mut Vec<u8>, i: usize, r: Vec<u8>| {
            d[mft + i * 1024..mft + (i + 1) * 1024].copy_from_slice(&r);
        };
        put(&mut d, 0, record(0, &[data(0, 16, 20, 20 * 512)]));
        put(&mut d, 6, record(0, &[list]));
        put(&mut d, 7, record(6, &[data(0, 100, 1, 1024)]));
        put(&mut d, 8, record(owner, &[data(1, 7000, 1, 0)]));
        // The bitmap: clusters 0, the MFT, its own two, and two runs of file data (one in
        // each half, so each piece is read).
        let mut bits = vec![0u8; 1024];
        let used: [(u64, u64); 6] = [(0, 1), (16, 20), (100, 1), (500, 10), (6000, 10), (7000, 1)];
        for (s, n) in used {
            for c in s..s + n {
                bits[(c / 8) as usize] |= 1 << (c % 8);
            }
        }
        d[100 * C..101 * C].copy_from_slice(&bits[..512]);
        d[7000 * C..7001 * C].copy_from_slice(&bits[512..]);
        let want = used.iter().map(|&(s, n)| (s * 512, n * 512)).collect();
        (d, want)
    }

    #[test]
    fn a_bitmap_split_by_an_attribute_list_is_joined() {
        let (d, want) = split_bitmap(1, 6);
        // The fuzz seed that reaches the attribute list and the extension records.
        super::super::test_support::pinned_seed("seed-ntfs-attribute-list", &d);
        let rep = read(&crate::device::MemDevice::new(d)).unwrap();
        let got: Vec<(u64, u64)> = rep.used.iter().map(|e| (e.start, e.len)).collect();
        assert_eq!(got, want);
        // A piece that does not start where the one before ended; an extension record that
        // belongs to another file.
        let e = read(&crate::device::MemDevice::new(split_bitmap(2, 6).0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("VCN 2, expected 1"), "{e}");
        let e = read(&crate::device::MemDevice::new(split_bitmap(1, 9).0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an extension of record 6"), "{e}");
    }

    #[test]
    fn fixup_detects_torn_records() {
        let mut r = vec![0u8; 1024];
        r[..4].copy_from_slice(b"FILE");
        r[4] = 0x30; // usa offset
        r[6] = 3; // usn + 2 entries
        r[0x30] = 0xAB;
        r[0x31] = 0xCD;
        r[0x32] = 1;
        r[0x33] = 2;
        r[0x34] = 3;
        r[0x35] = 4;
        r[510] = 0xAB;
        r[511] = 0xCD;
        r[1022] = 0xAB;
        r[1023] = 0xCD;
        let mut ok = r.clone();
        fixup(&mut ok, "t").unwrap();
        assert_eq!(&ok[510..512], &[1, 2]);
        assert_eq!(&ok[1022..1024], &[3, 4]);
        r[1023] = 0;
        assert!(fixup(&mut r, "t").is_err());
    }
}
