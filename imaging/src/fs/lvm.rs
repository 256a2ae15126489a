//! LVM2 physical volumes: each logical volume read by its own filesystem's reader.
//!
//! A PV starts with a label (in one of its first four sectors: `LABELONE`, a crc, `LVM2 001`)
//! whose header lists the data area (where the physical extents start) and the metadata areas.
//! A metadata area starts with its own header (magic, crc) pointing at the current copy of the
//! volume group's metadata, a text that gives the extent size, the PVs (by uuid) and each
//! logical volume's segments: runs of logical extents on physical extents.
//!
//! What is stored: every byte before the first physical extent (label, metadata area, boot
//! loader area) and every metadata area elsewhere, whole; then each LV with extents on this PV,
//! read through its segments by [`super::scan`] (its own filesystem's reader, or the raw copy
//! with that reader's warning): linear runs and stripes, on this PV and on the VG's other PVs
//! when they are partitions of the same disk (the capture hands them over). Of what the LV's
//! filesystem uses, the part on this PV is stored here; each other PV's scan stores its own.
//! LVs that cannot be read are raw copies of their extents on this PV, with a warning naming
//! them: LVs on a PV that is not on this disk, and the hidden LVs of thin pools, RAID, mirrors,
//! caches and snapshots, whose contents are not a filesystem. Physical extents no LV holds are
//! free space.
//!
//! Checked before the map is trusted: the label's, the metadata header's and the metadata
//! text's crcs, the metadata naming this PV by its uuid, and every segment inside the PV's
//! extents; anything else is an error and the whole PV becomes the raw copy.

use std::collections::BTreeMap;
use std::io;

use super::{corrupt, le32, le64, FsError, FsKind, FsReport, ScanOptions, Volume, VolumeSegment};
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

/// One segment of an LV: `len` bytes from LV offset `lv`, laid over `areas` (device index,
/// byte offset) in chunks of `stripe` bytes taken in turn (one area: a linear run).
struct Seg {
    lv: u64,
    len: u64,
    stripe: u64,
    areas: Vec<(usize, u64)>,
}

/// An LV seen through its segments, on this PV (device 0) and the VG's other PVs found on
/// the same disk.
struct LvDevice<'a> {
    devs: Vec<&'a dyn BlockDevice>,
    segs: Vec<Seg>,
    len: u64,
}

impl LvDevice<'_> {
    /// Where LV offset `o` lies: (device index, device offset, bytes from there in the same
    /// run).
    fn map(&self, o: u64) -> Option<(usize, u64, u64)> {
        let i = self.segs.partition_point(|s| s.lv + s.len <= o);
        let seg = self.segs.get(i).filter(|s| s.lv <= o)?;
        let rel = o - seg.lv;
        let left = seg.len - rel;
        if seg.areas.len() == 1 {
            let (d, at) = seg.areas[0];
            return Some((d, at + rel, left));
        }
        let k = seg.areas.len() as u64;
        let (chunk, within) = (rel / seg.stripe, rel % seg.stripe);
        let (d, at) = seg.areas[(chunk % k) as usize];
        Some((
            d,
            at + (chunk / k) * seg.stripe + within,
            (seg.stripe - within).min(left),
        ))
    }

    /// The pieces under `lv_start..lv_start + len`: (device index, device offset, len).
    fn pieces(&self, lv_start: u64, len: u64) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        let end = lv_start + len;
        let mut o = lv_start;
        std::iter::from_fn(move || {
            if o >= end {
                return None;
            }
            let (d, at, n) = self.map(o)?;
            let n = n.min(end - o);
            o += n;
            Some((d, at, n))
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
        for (d, at, n) in self.pieces(offset, buf.len() as u64) {
            self.devs[d].read_at(&mut buf[done..done + n as usize], at)?;
            done += n as usize;
        }
        if done != buf.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(crate::device::read_only("a logical volume"))
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// Why an LV cannot be read through its own filesystem, if it cannot.
fn unreadable(lv: &Value) -> Option<String> {
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
    }
    None
}

/// The other PVs of a volume group, found among the disk's other partitions by their labels:
/// `(uuid without dashes, device, where its extents start)`.
fn siblings<'a>(others: &[&'a dyn BlockDevice]) -> Vec<(String, &'a dyn BlockDevice)> {
    others
        .iter()
        .filter_map(|&d| label(d).ok().map(|l| (l.uuid, d)))
        .collect()
}

pub(super) fn read(
    dev: &dyn BlockDevice,
    region: u64,
    opts: &ScanOptions,
    others: &[&dyn BlockDevice],
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

    // Every PV of the VG that is here: this one (device 0), and others on the same disk.
    let found = siblings(others);
    let mut devs: Vec<&dyn BlockDevice> = vec![dev];
    // PV name in the metadata -> (device index, where its extents start, its extent count).
    let mut pv_at: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
    pv_at.insert(pv_name, (0, pe_start, pe_count));
    for (name, other) in pvs.sections().filter(|(n, _)| *n != pv_name) {
        let Some(id) = other.str("id").map(|i| i.replace('-', "")) else {
            continue;
        };
        if let Some(&(_, d)) = found.iter().find(|(u, _)| *u == id) {
            let (start, count) = (
                other.num("pe_start")?.saturating_mul(512),
                other.num("pe_count")?,
            );
            if extent
                .checked_mul(count)
                .and_then(|b| b.checked_add(start))
                .is_none_or(|e| e > d.len())
            {
                return Err(corrupt(FS, format!("PV {name}: extents past its device")));
            }
            devs.push(d);
            pv_at.insert(name, (devs.len() - 1, start, count));
        }
    }

    let mut volumes = Vec::new();
    let mut taken = ExtentMap::new();
    let lvs: Vec<(&str, &Value)> = vg
        .get("logical_volumes")
        .map(|v| v.sections().collect())
        .unwrap_or_default();
    for (name, lv) in lvs {
        // The LV's segments in LV order, and its extents on this PV; `missing` names a PV it
        // uses that is not on this disk.
        let mut segs = Vec::new();
        let mut extents = ExtentMap::new();
        let mut missing = None;
        for (_, seg) in lv.sections() {
            let Some(Value::List(stripes)) = seg.get("stripes") else {
                continue;
            };
            let (start, count) = (seg.num("start_extent")?, seg.num("extent_count")?);
            let k = seg.num("stripe_count").unwrap_or(1).max(1);
            if stripes.len() as u64 != 2 * k || count % k != 0 {
                return Err(corrupt(
                    FS,
                    format!("LV {name}: {count} extents over {k} stripes"),
                ));
            }
            // Each stripe holds count / k of the segment's extents.
            let per = count / k;
            let stripe = if k == 1 {
                per * extent
            } else {
                seg.num("stripe_size")?.saturating_mul(512)
            };
            if stripe == 0 || (k > 1 && extent % stripe != 0) {
                return Err(corrupt(FS, format!("LV {name}: stripes of {stripe} bytes")));
            }
            let mut areas = Vec::new();
            for pair in stripes.chunks(2) {
                let [Value::Str(on), Value::Num(pe)] = pair else {
                    return Err(corrupt(FS, format!("LV {name}: stripes list")));
                };
                let pe = u64::try_from(*pe).map_err(|_| corrupt(FS, "negative extent"))?;
                let Some(&(d, at, n)) = pv_at.get(on.as_str()) else {
                    missing = Some(on.clone());
                    continue;
                };
                if pe.checked_add(per).is_none_or(|e| e > n) {
                    return Err(corrupt(
                        FS,
                        format!("LV {name}: extents {pe}+{per} past PV {on}'s {n}"),
                    ));
                }
                let off = at + pe * extent;
                if d == 0 {
                    if taken.intersects(off, off + per * extent) {
                        return Err(corrupt(FS, format!("LV {name} overlaps another")));
                    }
                    extents.push(off, per * extent);
                }
                areas.push((d, off));
            }
            let lv_off = start
                .checked_mul(extent)
                .ok_or_else(|| corrupt(FS, format!("LV {name}: segment at extent {start}")))?;
            segs.push(Seg {
                lv: lv_off,
                len: count * extent,
                stripe,
                areas,
            });
        }
        extents.normalize();
        if extents.is_empty() {
            continue; // nothing on this PV (or a thin volume: its data is in other LVs)
        }
        taken = taken.union(&extents);
        segs.sort_by_key(|s| s.lv);
        let lv_len: u64 = segs.iter().map(|s| s.len).sum();
        let contiguous = segs.first().is_some_and(|s| s.lv == 0)
            && segs.windows(2).all(|w| w[0].lv + w[0].len == w[1].lv);
        let full = format!("{vg_name}/{name}");
        let mut vol = Volume {
            name: full.clone(),
            kind: FsKind::Unknown,
            detected: FsKind::Unknown,
            size: lv_len,
            used_bytes: 0,
            extents: extents.clone(),
            label: None,
            warning: None,
            segments: Vec::new(),
        };
        let why = unreadable(lv)
            .or_else(|| {
                missing.map(|pv| format!("it spans physical volume {pv}, not on this disk"))
            })
            .or_else(|| (!contiguous).then(|| "its segments leave holes".to_string()));
        if why.is_none() && segs.iter().all(|s| s.areas.iter().all(|&(d, _)| d == 0)) {
            vol.segments = segs
                .iter()
                .map(|s| VolumeSegment {
                    at: s.lv,
                    len: s.len,
                    stripe: s.stripe,
                    areas: s.areas.iter().map(|&(_, at)| at).collect(),
                })
                .collect();
        }
        let lv_used = match why {
            None => {
                let lvdev = LvDevice {
                    devs: devs.clone(),
                    segs,
                    len: lv_len,
                };
                let s = super::scan_with(&lvdev, region, opts)?;
                vol.kind = s.report.kind;
                vol.detected = s.detected;
                vol.label = s.report.label.clone();
                vol.warning = s.warning;
                // What lies on this PV; the other PVs' scans keep their own parts.
                let mut m = ExtentMap::new();
                for e in s.report.used.iter() {
                    for (d, at, n) in lvdev.pieces(e.start, e.len) {
                        if d == 0 {
                            m.push(at, n);
                        }
                    }
                }
                m.normalize();
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
