//! Signatures of filesystems and volumes that drover recognises but reads no allocation data
//! for. They are stored as raw copies (see [`super::raw`]); the signature only names them in the
//! capture's warning and in the manifest's `detected` field, so an operator knows what was
//! copied whole and why.

use std::io;

use super::FsKind;
use crate::device::BlockDevice;

/// The kind named by a signature on `dev`, if any; `None` when nothing is recognised.
pub(super) fn identify(dev: &dyn BlockDevice) -> io::Result<Option<FsKind>> {
    let read = |offset: u64, len: usize| -> io::Result<Option<Vec<u8>>> {
        if offset + len as u64 > dev.len() {
            return Ok(None);
        }
        let mut b = vec![0u8; len];
        dev.read_at(&mut b, offset)?;
        Ok(Some(b))
    };
    let Some(head) = read(0, 4096.min(dev.len() as usize))? else {
        return Ok(None);
    };
    let at = |o: usize, sig: &[u8]| head.get(o..o + sig.len()) == Some(sig);
    if at(3, b"-FVE-FS-") {
        return Ok(Some(FsKind::Bitlocker));
    }
    Ok(None)
}

/// Why a recognised kind without a reader is stored as a raw copy.
pub(super) fn why_raw(kind: FsKind) -> &'static str {
    match kind {
        FsKind::Bitlocker => "an encrypted BitLocker volume",
        _ => "drover has no used-block reader for it yet",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    fn with(at: usize, sig: &[u8]) -> MemDevice {
        let mut d = vec![0u8; 128 << 10];
        d[at..at + sig.len()].copy_from_slice(sig);
        MemDevice::new(d)
    }

    #[test]
    fn names_each_signature_and_nothing_else() {
        let cases: [(usize, &[u8], FsKind); 1] = [(3, b"-FVE-FS-", FsKind::Bitlocker)];
        for (at, sig, kind) in cases {
            assert_eq!(identify(&with(at, sig)).unwrap(), Some(kind), "{kind}");
            // One byte off the signature is not it.
            let mut off = sig.to_vec();
            off[0] ^= 1;
            assert_eq!(identify(&with(at, &off)).unwrap(), None, "{kind} altered");
        }
        assert_eq!(identify(&MemDevice::new(vec![0; 100])).unwrap(), None);
        assert_eq!(identify(&MemDevice::new(Vec::new())).unwrap(), None);
    }
}
