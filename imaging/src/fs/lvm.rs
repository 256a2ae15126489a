//! LVM2 physical volumes: each logical volume read by its own filesystem's reader.
//!
//! A PV starts with a label (in one of its first four sectors: `LABELONE`, a crc, `LVM2 001`)
//! whose header lists the data area (where the physical extents start) and the metadata areas.
//! A metadata area starts with its own header (magic, crc) pointing at the current copy of the
//! volume group's metadata, a text that gives the extent size, the PVs (by uuid) and each
//! logical volume's segments: runs of logical extents on physical extents.
//!
//! What is stored: every byte before the first physical extent (label, metadata area, boot
//! loader area) and every metadata area elsewhere, whole; then each LV whose every segment is a
//! linear run on this PV, read through the mapping by [`super::scan`] (its own filesystem's
//! reader, or the raw copy with that reader's warning). LVs that cannot be read here are raw
//! copies of their extents on this PV, with a warning naming them: LVs that span other PVs or
//! are striped, and the hidden LVs of thin pools, RAID, mirrors, caches and snapshots, whose
//! contents are not a filesystem. Physical extents no LV holds are free space.
//!
//! Checked before the map is trusted: the label's, the metadata header's and the metadata
//! text's crcs, the metadata naming this PV by its uuid, and every segment inside the PV's
//! extents; anything else is an error and the whole PV becomes the raw copy.

use std::collections::BTreeMap;
use std::io;

use super::{corrupt, le32, le64, FsError, FsKind, FsReport, ScanOptions, Volume};
use crate::device::{read_vec, BlockDevice};
use crate::extent::{Extent, ExtentMap};

const FS: FsKind = FsKind::Lvm2;
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
const MDA_HEADER: u64 = 512;
/// The longest metadata text read (LVM's own default area is 1 MiB).
const MAX_TEXT: u64 = 64 << 20;

/// LVM's crc: CRC-32 (the IEEE polynomial, reflected) from `0xf597a6cf`, not inverted.
fn lvm_crc(mut crc: u32, data: &[u8]) -> u32 {
    const T: [u32; 256] = super::crc_table(0xEDB8_8320);
    for &b in data {
        crc = (crc >> 8) ^ T[((crc ^ u32::from(b)) & 0xFF) as usize];
    }
    crc
}
const CRC_INIT: u32 = 0xF597_A6CF;

/// A value of LVM's text metadata format.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Num(i64),
    List(Vec<Self>),
    Section(Vec<(String, Self)>),
}

impl Value {
    fn get(&self, key: &str) -> Option<&Self> {
        match self {
            Self::Section(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn num(&self, key: &str) -> Result<u64, FsError> {
        match self.get(key) {
            Some(Self::Num(n)) if *n >= 0 => Ok(*n as u64),
            _ => Err(corrupt(FS, format!("metadata has no number `{key}`"))),
        }
    }
    fn str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Self::Str(s)) => Some(s),
            _ => None,
        }
    }
    fn sections(&self) -> impl Iterator<Item = (&str, &Self)> {
        let items = match self {
            Self::Section(items) => items.as_slice(),
            _ => &[],
        };
        items
            .iter()
            .filter(|(_, v)| matches!(v, Self::Section(_)))
            .map(|(k, v)| (k.as_str(), v))
    }
    /// Whether the list `key` holds the string `flag`.
    fn has_flag(&self, key: &str, flag: &str) -> bool {
        matches!(self.get(key), Some(Self::List(l)) if l.iter().any(|v| *v == Self::Str(flag.into())))
    }
}

/// Parses LVM's text metadata (`key = value`, `name { ... }`, lists in brackets, `#` comments).
fn parse(text: &str) -> Result<Value, FsError> {
    struct P<'a> {
        s: &'a [u8],
        i: usize,
        depth: usize,
    }
    impl P<'_> {
        fn err(&self, what: &str) -> FsError {
            corrupt(FS, format!("metadata text, byte {}: {what}", self.i))
        }
        fn skip(&mut self) {
            while let Some(&c) = self.s.get(self.i) {
                if c == b'#' {
                    while self.s.get(self.i).is_some_and(|&c| c != b'\n') {
                        self.i += 1;
                    }
                } else if c.is_ascii_whitespace() || c == 0 {
                    self.i += 1;
                } else {
                    break;
                }
            }
        }
        fn ident(&mut self) -> Result<String, FsError> {
            let start = self.i;
            while self
                .s
                .get(self.i)
                .is_some_and(|&c| c.is_ascii_alphanumeric() || b"_.-+".contains(&c))
            {
                self.i += 1;
            }
            if start == self.i {
                return Err(self.err("expected a name"));
            }
            Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
        }
        /// Items up to `}` (or the end, at the top).
        fn items(&mut self, top: bool) -> Result<Vec<(String, Value)>, FsError> {
            self.depth += 1;
            if self.depth > 32 {
                return Err(self.err("nested too deep"));
            }
            let mut out = Vec::new();
            loop {
                self.skip();
                match self.s.get(self.i) {
                    None if top => break,
                    None => return Err(self.err("unclosed section")),
                    Some(b'}') if !top => {
                        self.i += 1;
                        break;
                    }
                    _ => {}
                }
                let key = self.ident()?;
                self.skip();
                match self.s.get(self.i) {
                    Some(b'{') => {
                        self.i += 1;
                        let v = Value::Section(self.items(false)?);
                        out.push((key, v));
                    }
                    Some(b'=') => {
                        self.i += 1;
                        let v = self.value()?;
                        out.push((key, v));
                    }
                    _ => return Err(self.err("expected `=` or `{`")),
                }
            }
            self.depth -= 1;
            Ok(out)
        }
        fn value(&mut self) -> Result<Value, FsError> {
            self.skip();
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    let mut v = Vec::new();
                    loop {
                        match self.s.get(self.i) {
                            None => return Err(self.err("unclosed string")),
                            Some(b'"') => break,
                            Some(b'\\') => {
                                self.i += 1;
                                v.extend(self.s.get(self.i));
                            }
                            Some(&c) => v.push(c),
                        }
                        self.i += 1;
                    }
                    self.i += 1;
                    Ok(Value::Str(String::from_utf8_lossy(&v).into_owned()))
                }
                Some(b'[') => {
                    self.i += 1;
                    let mut l = Vec::new();
                    loop {
                        self.skip();
                        if self.s.get(self.i) == Some(&b']') {
                            self.i += 1;
                            break;
                        }
                        l.push(self.value()?);
                        self.skip();
                        match self.s.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b']') => {}
                            _ => return Err(self.err("expected `,` or `]`")),
                        }
                    }
                    Ok(Value::List(l))
                }
                Some(c) if c.is_ascii_digit() || *c == b'-' => {
                    let start = self.i;
                    self.i += 1;
                    while self
                        .s
                        .get(self.i)
                        .is_some_and(|c| c.is_ascii_digit() || *c == b'.')
                    {
                        self.i += 1;
                    }
                    let t = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                    // Floats appear in some optional fields; only integers are relied on.
                    Ok(t.parse::<i64>().map(Value::Num).unwrap_or(Value::Str(t)))
                }
                _ => Err(self.err("expected a value")),
            }
        }
    }
    let mut p = P {
        s: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    Ok(Value::Section(p.items(true)?))
}

/// The PV's label and header: its uuid, data start and metadata areas (byte ranges).
struct Label {
    uuid: String,
    data_start: u64,
    metadata: Vec<(u64, u64)>,
    reserved: Vec<(u64, u64)>,
}

/// A list of `disk_locn`s (offset, size) from `o`, ended by a zero entry; returns the list and
/// the offset after its end.
fn locns(b: &[u8], mut o: usize) -> Result<(Vec<(u64, u64)>, usize), FsError> {
    let mut out = Vec::new();
    loop {
        if o + 16 > b.len() {
            return Err(corrupt(FS, "label's area list runs past its sector"));
        }
        let (off, size) = (le64(b, o), le64(b, o + 8));
        o += 16;
        if off == 0 {
            return Ok((out, o));
        }
        out.push((off, size));
    }
}

fn label(dev: &dyn BlockDevice) -> Result<Label, FsError> {
    for sector in 0..4u64 {
        if (sector + 1) * 512 > dev.len() {
            break;
        }
        let b = read_vec(dev, sector * 512, 512)?;
        if &b[..8] != b"LABELONE" || &b[24..32] != b"LVM2 001" {
            continue;
        }
        if le64(&b, 8) != sector {
            return Err(corrupt(
                FS,
                format!("label in sector {sector} names another"),
            ));
        }
        if lvm_crc(CRC_INIT, &b[20..]) != le32(&b, 16) {
            return Err(corrupt(FS, "label checksum mismatch"));
        }
        let h = le32(&b, 20) as usize;
        if !(32..=512 - 48).contains(&h) {
            return Err(corrupt(FS, format!("label header at {h}")));
        }
        let uuid = String::from_utf8_lossy(&b[h..h + 32]).into_owned();
        let (data, o) = locns(&b, h + 40)?;
        let (metadata, o) = locns(&b, o)?;
        // The extension (version 1 and later) lists boot loader areas.
        let mut reserved = Vec::new();
        if o + 8 <= b.len() && le32(&b, o) >= 1 {
            reserved = locns(&b, o + 8)?.0;
        }
        let data_start = match data.as_slice() {
            [(start, _)] => *start,
            _ => {
                return Err(corrupt(
                    FS,
                    format!("{} data areas (one expected)", data.len()),
                ))
            }
        };
        return Ok(Label {
            uuid,
            data_start,
            metadata,
            reserved,
        });
    }
    Err(corrupt(FS, "no LVM2 label in the first four sectors"))
}

/// The current metadata text of the area at `start`.
fn metadata_text(dev: &dyn BlockDevice, start: u64, size: u64) -> Result<String, FsError> {
    let h = read_vec(dev, start, MDA_HEADER as usize)?;
    if &h[4..20] != MDA_MAGIC {
        return Err(corrupt(FS, format!("no metadata header at {start}")));
    }
    if lvm_crc(CRC_INIT, &h[4..]) != le32(&h, 0) {
        return Err(corrupt(
            FS,
            format!("metadata header at {start}: checksum mismatch"),
        ));
    }
    if le64(&h, 24) != start || le64(&h, 32) != size {
        return Err(corrupt(
            FS,
            format!("metadata header at {start} describes another area"),
        ));
    }
    // The first location is the committed metadata.
    let (off, len, crc) = (le64(&h, 40), le64(&h, 48), le32(&h, 56));
    if off < MDA_HEADER || off >= size || len == 0 || len > MAX_TEXT || len > size - MDA_HEADER {
        return Err(corrupt(
            FS,
            format!("metadata text at {off}+{len} in an area of {size}"),
        ));
    }
    // The text may wrap from the area's end to just after its header.
    let first = len.min(size - off);
    let mut text = read_vec(dev, start + off, first as usize)?;
    if first < len {
        text.extend(read_vec(dev, start + MDA_HEADER, (len - first) as usize)?);
    }
    if lvm_crc(CRC_INIT, &text) != crc {
        return Err(corrupt(FS, "metadata text checksum mismatch"));
    }
    String::from_utf8(text).map_err(|_| corrupt(FS, "metadata text is not UTF-8"))
}

/// An LV seen through its linear segments on the PV: `(lv offset, pv offset, len)`, in order.
struct LvDevice<'a> {
    pv: &'a dyn BlockDevice,
    runs: Vec<(u64, u64, u64)>,
    len: u64,
}

impl LvDevice<'_> {
    /// The PV ranges under `lv_start..lv_start + len`.
    fn pv_ranges(&self, lv_start: u64, len: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let end = lv_start + len;
        self.runs.iter().filter_map(move |&(l, p, n)| {
            let (s, e) = (lv_start.max(l), end.min(l + n));
            (s < e).then(|| (p + (s - l), e - s))
        })
    }
}

impl BlockDevice for LvDevice<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.len)
        {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut done = 0usize;
        for (p, n) in self.pv_ranges(offset, buf.len() as u64) {
            self.pv.read_at(&mut buf[done..done + n as usize], p)?;
            done += n as usize;
        }
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a logical volume is read only here",
        ))
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// Why an LV cannot be read through its own filesystem from this PV, if it cannot.
fn unreadable(lv: &Value, pv_name: &str) -> Option<String> {
    if !lv.has_flag("status", "VISIBLE") {
        return Some(
            "a hidden volume of a thin pool, RAID, mirror, cache or snapshot, not a filesystem"
                .into(),
        );
    }
    for (_, seg) in lv.sections() {
        match seg.str("type") {
            Some("striped") => {}
            other => {
                return Some(format!(
                    "a {} volume, not a plain one",
                    other.unwrap_or("typeless")
                ))
            }
        }
        if seg.num("stripe_count").ok() != Some(1) {
            return Some("striped over several physical volumes".into());
        }
        match seg.get("stripes") {
            Some(Value::List(l)) if l.first() == Some(&Value::Str(pv_name.into())) => {}
            _ => return Some("it spans other physical volumes".into()),
        }
    }
    None
}

pub(super) fn read(
    dev: &dyn BlockDevice,
    region: u64,
    opts: &ScanOptions,
) -> Result<FsReport, FsError> {
    let l = label(dev)?;
    let mut used = ExtentMap::new();
    // Everything before the extents (label, first metadata area, boot loader area) and every
    // other metadata area, whole.
    if l.data_start == 0 || l.data_start > dev.len() {
        return Err(corrupt(FS, format!("extents start at {}", l.data_start)));
    }
    used.push(0, l.data_start);
    let mut text = None;
    for &(start, size) in l.metadata.iter().chain(&l.reserved) {
        if start.checked_add(size).is_none_or(|e| e > dev.len()) {
            return Err(corrupt(FS, format!("area {start}+{size} past the device")));
        }
        used.push(start, size);
    }
    let mut why = None;
    for &(start, size) in &l.metadata {
        match metadata_text(dev, start, size) {
            Ok(t) => {
                text = Some(t);
                break;
            }
            Err(e) => why = Some(e),
        }
    }
    let text = match (text, why) {
        (Some(t), _) => t,
        (None, Some(e)) => return Err(e),
        (None, None) => {
            return Err(FsError::Unsupported {
                fs: FS,
                feature: "a PV without metadata areas (its VG is described on other PVs)".into(),
            })
        }
    };
    let meta = parse(&text)?;
    let (vg_name, vg) = meta
        .sections()
        .next()
        .ok_or_else(|| corrupt(FS, "metadata holds no volume group"))?;
    let extent = vg
        .num("extent_size")?
        .checked_mul(512)
        .filter(|&e| e > 0)
        .ok_or_else(|| corrupt(FS, "extent size"))?;
    let pvs = vg
        .get("physical_volumes")
        .ok_or_else(|| corrupt(FS, "no physical_volumes"))?;
    let (pv_name, pv) = pvs
        .sections()
        .find(|(_, pv)| pv.str("id").is_some_and(|id| id.replace('-', "") == l.uuid))
        .ok_or_else(|| {
            corrupt(
                FS,
                format!("VG {vg_name} does not list this PV ({})", l.uuid),
            )
        })?;
    let pe_start = pv.num("pe_start")?.saturating_mul(512);
    let pe_count = pv.num("pe_count")?;
    let pe_end = extent
        .checked_mul(pe_count)
        .and_then(|b| b.checked_add(pe_start))
        .filter(|&e| e <= dev.len())
        .ok_or_else(|| {
            corrupt(
                FS,
                format!("{pe_count} extents from {pe_start} past the device"),
            )
        })?;
    if pe_start < l.data_start {
        return Err(corrupt(FS, "extents start inside the label area"));
    }
    used.push(l.data_start, pe_start - l.data_start);

    let mut volumes = Vec::new();
    let mut taken = ExtentMap::new();
    let lvs: Vec<(&str, &Value)> = vg
        .get("logical_volumes")
        .map(|v| v.sections().collect())
        .unwrap_or_default();
    for (name, lv) in lvs {
        // This LV's runs on this PV, by LV offset.
        let mut runs = BTreeMap::new();
        for (_, seg) in lv.sections() {
            let Some(Value::List(stripes)) = seg.get("stripes") else {
                continue;
            };
            let (start, count) = (seg.num("start_extent")?, seg.num("extent_count")?);
            let stripe_count = seg.num("stripe_count").unwrap_or(1).max(1);
            // Each stripe holds count / stripe_count of the segment's extents.
            let per = count / stripe_count;
            for (i, pair) in stripes.chunks(2).enumerate() {
                let [Value::Str(on), Value::Num(pe)] = pair else {
                    return Err(corrupt(FS, format!("LV {name}: stripes list")));
                };
                if on != pv_name {
                    continue;
                }
                let pe = u64::try_from(*pe).map_err(|_| corrupt(FS, "negative extent"))?;
                if pe.checked_add(per).is_none_or(|e| e > pe_count) {
                    return Err(corrupt(
                        FS,
                        format!("LV {name}: extents {pe}+{per} past the PV's {pe_count}"),
                    ));
                }
                let lv_off = (i as u64)
                    .checked_mul(per)
                    .and_then(|o| o.checked_add(start))
                    .and_then(|o| o.checked_mul(extent))
                    .ok_or_else(|| corrupt(FS, format!("LV {name}: segment at extent {start}")))?;
                runs.insert(lv_off, (pe_start + pe * extent, per * extent));
            }
        }
        if runs.is_empty() {
            continue; // thin volumes and the like: their data is in other LVs
        }
        let runs: Vec<(u64, u64, u64)> = runs.into_iter().map(|(l, (p, n))| (l, p, n)).collect();
        let mut extents = ExtentMap::new();
        for &(_, p, n) in &runs {
            if taken.intersects(p, p + n) {
                return Err(corrupt(FS, format!("LV {name} overlaps another")));
            }
            extents.push(p, n);
            taken.push(p, n);
            taken.normalize();
        }
        extents.normalize();
        let full = format!("{vg_name}/{name}");
        let lv_len = runs.iter().map(|r| r.2).sum();
        let mut vol = Volume {
            name: full.clone(),
            kind: FsKind::Unknown,
            detected: FsKind::Unknown,
            size: lv_len,
            used_bytes: 0,
            extents: extents.clone(),
            label: None,
            warning: None,
        };
        let contiguous = runs.windows(2).all(|w| w[0].0 + w[0].2 == w[1].0) && runs[0].0 == 0;
        let why = unreadable(lv, pv_name)
            .or_else(|| (!contiguous).then(|| "its extents are not all on this PV".to_string()));
        let lv_used = match why {
            None => {
                let lvdev = LvDevice {
                    pv: dev,
                    runs,
                    len: lv_len,
                };
                let s = super::scan_with(&lvdev, region, opts)?;
                vol.kind = s.report.kind;
                vol.detected = s.detected;
                vol.label = s.report.label.clone();
                vol.warning = s.warning;
                let mut m = ExtentMap::new();
                for e in s.report.used.iter() {
                    for (p, n) in lvdev.pv_ranges(e.start, e.len) {
                        m.push(p, n);
                    }
                }
                m
            }
            Some(why) => {
                vol.warning = Some(format!(
                    "{why}; stored as a raw copy of its extents on this PV (every {} with a \
                     non-zero byte), restored byte for byte",
                    super::region_name(region)
                ));
                let mut m = ExtentMap::new();
                for e in extents.iter() {
                    m = m.union(&super::raw::nonzero_regions(dev, e.start, e.end(), region)?);
                }
                // Regions are whole: keep them inside the LV's extents.
                m.iter()
                    .flat_map(|r| extents.clip(r.start, r.end()).collect::<Vec<Extent>>())
                    .collect()
            }
        };
        let mut lv_used = lv_used;
        lv_used.normalize();
        vol.used_bytes = lv_used.total();
        used = used.union(&lv_used);
        volumes.push(vol);
    }
    used.normalize();
    Ok(FsReport {
        kind: FS,
        block_size: extent.min(u64::from(u32::MAX)) as u32,
        fs_size: pe_end.max(used.end()),
        used,
        label: Some(vg_name.to_string()),
        volumes,
    })
}

#[cfg(test)]
#[path = "lvm_tests.rs"]
mod tests;
