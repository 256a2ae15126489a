//! Linux swap: only the header page is kept; the rest is scratch space the kernel rewrites.
//!
//! The signature `SWAPSPACE2` sits in the last 10 bytes of the first page; the page size is
//! found by looking for it at 4, 8, 16 and 64 KiB. A swap area holding a hibernation image
//! (`S1SUSPEND` and friends) is not recognised, so it is stored whole by the raw fallback.

use std::io;

use super::{le32, FsError, FsKind, FsReport};
use crate::device::{read_vec, BlockDevice};
use crate::extent::ExtentMap;

const PAGE_SIZES: [u64; 4] = [4096, 8192, 16384, 65536];

/// The page size at which the swap signature is found, if any.
pub(super) fn probe(dev: &dyn BlockDevice) -> io::Result<Option<u64>> {
    for p in PAGE_SIZES {
        if dev.len() < p {
            break;
        }
        if read_vec(dev, p - 10, 10)? == b"SWAPSPACE2" {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

pub(super) fn read(dev: &dyn BlockDevice) -> Result<FsReport, FsError> {
    let page = probe(dev)?.ok_or_else(|| super::corrupt(FsKind::Swap, "no swap signature"))?;
    let hdr = read_vec(dev, 1024, 512)?;
    // struct swap_header after 1024 boot bytes: version, last_page, nr_badpages, uuid, label.
    let last_page = u64::from(le32(&hdr, 4));
    // The header's own size claim is only used when it fits the device.
    let fs_size = (last_page + 1)
        .checked_mul(page)
        .filter(|&s| s <= dev.len() && s >= page)
        .unwrap_or(dev.len());
    let mut used = ExtentMap::new();
    used.push(0, page);
    let label = String::from_utf8_lossy(&hdr[28..44])
        .trim_end_matches('\0')
        .to_string();
    Ok(FsReport {
        kind: FsKind::Swap,
        block_size: page as u32,
        fs_size,
        used,
        label: (!label.is_empty()).then_some(label),
        volumes: Vec::new(),
    })
}
