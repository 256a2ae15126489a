//! The fallback map: every region that holds a non-zero byte, whole.
//!
//! Used for unknown filesystems, for filesystems whose metadata cannot be trusted, for the tail
//! between a filesystem's end and its partition's end, and for the bytes outside every partition
//! (boot code, the post-MBR gap, EBRs). A region is kept whole, zeroes included, so that a
//! restored region is byte-identical to the source even on a target full of old data.

use std::io;

use crate::device::BlockDevice;
use crate::extent::ExtentMap;

const READ_PIECE: u64 = 1 << 20;

/// Whether every byte of `buf` is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    // Compare in u64 words (the compiler vectorises this loop); the tail bytewise.
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to only yields aligned words.
        unsafe { buf.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0)
        && words.iter().fold(0, |a, &w| a | w) == 0
        && tail.iter().all(|&b| b == 0)
}

/// The parts of `start..end` lying in `region`-aligned regions that contain a non-zero byte
/// (within `start..end`). Region boundaries are multiples of `region` from the device's start.
pub fn nonzero_regions(
    dev: &dyn BlockDevice,
    start: u64,
    end: u64,
    region: u64,
) -> io::Result<ExtentMap> {
    let end = end.min(dev.len());
    let mut out = ExtentMap::new();
    if start >= end || region == 0 {
        return Ok(out);
    }
    let mut buf = vec![0u8; READ_PIECE.min(region).min(end - start) as usize];
    let mut rs = start - start % region;
    while rs < end {
        let a = rs.max(start);
        let b = (rs + region).min(end);
        let mut pos = a;
        let mut nonzero = false;
        while pos < b {
            let n = (b - pos).min(buf.len() as u64) as usize;
            dev.read_at(&mut buf[..n], pos)?;
            if !is_zero(&buf[..n]) {
                nonzero = true;
                break;
            }
            pos += n as u64;
        }
        if nonzero {
            out.push(a, b - a);
        }
        rs += region;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    #[test]
    fn finds_nonzero_regions_only() {
        let mut data = vec![0u8; 10 * 1024];
        data[1500] = 1; // region 1 (1024..2048)
        data[9 * 1024 + 3] = 7; // region 9
        let dev = MemDevice::new(data);
        let m = nonzero_regions(&dev, 0, dev.len(), 1024).unwrap();
        let v: Vec<_> = m.iter().map(|e| (e.start, e.len)).collect();
        assert_eq!(v, vec![(1024, 1024), (9 * 1024, 1024)]);
        // Clipped to a window that starts mid-region.
        let m = nonzero_regions(&dev, 1400, 9 * 1024 + 10, 1024).unwrap();
        let v: Vec<_> = m.iter().map(|e| (e.start, e.len)).collect();
        assert_eq!(v, vec![(1400, 648), (9 * 1024, 10)]);
    }

    #[test]
    fn is_zero_checks_every_byte() {
        let mut b = vec![0u8; 4099];
        assert!(is_zero(&b));
        for i in [0, 7, 8, 2048, 4098] {
            b[i] = 1;
            assert!(!is_zero(&b), "byte {i}");
            b[i] = 0;
        }
    }
}
