//! NTFS: the `$Bitmap` system file.
//!
//! `$MFT`'s own data runs (record 0) locate record 6, `$Bitmap`, whose unnamed non-resident
//! `$DATA` attribute is the cluster bitmap. Records are checked for their `FILE` signature and
//! their update sequence (fixups) is applied and verified. The backup boot sector, which lies in
//! the sector after the volume, is kept by the caller's tail scan.

use super::{corrupt, le16, le32, le64, FsError, FsKind, FsReport};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const K: FsKind = FsKind::Ntfs;
const ATTR_DATA: u32 = 0x80;
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

/// The unnamed non-resident `$DATA` attribute of a record: (runs, data size, initialized size).
fn data_attr(rec: &[u8], total_clusters: u64, what: &str) -> Result<(Vec<Run>, u64, u64), FsError> {
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
        let a = &rec[o..o + len];
        if ty == ATTR_DATA && a[9] == 0 {
            if a[8] == 0 {
                return Err(corrupt(K, format!("{what}: $DATA is resident")));
            }
            if le64(a, 0x10) != 0 {
                return Err(FsError::Unsupported {
                    fs: K,
                    feature: format!("{what}: $DATA split over an attribute list"),
                });
            }
            let runs_at = usize::from(le16(a, 0x20));
            let runs = decode_runs(a.get(runs_at..).unwrap_or(&[]), total_clusters)?;
            return Ok((runs, le64(a, 0x30), le64(a, 0x38)));
        }
        o += len;
    }
    Err(corrupt(K, format!("{what}: no unnamed $DATA attribute")))
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
    let (mft_runs, _, _) = data_attr(&rec, total_clusters, "$MFT")?;
    let at = runs_pos(&mft_runs, 6 * rec_size, cluster)
        .filter(|p| p + rec_size <= fs_size)
        .ok_or_else(|| corrupt(K, "$MFT runs do not cover record 6"))?;
    let mut rec = read_vec(dev, at, rec_size as usize)?;
    fixup(&mut rec, "$Bitmap record")?;
    let (runs, size, init) = data_attr(&rec, total_clusters, "$Bitmap")?;
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
