//! Partition tables rebuilt from the dumps other tools keep: `sfdisk --dump` text, a saved
//! primary GPT (its backup made from it when the saved backup is missing), an MBR with the EBR
//! chain of its logical partitions laid out again.

use super::ImportError;

/// `sfdisk --dump` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfdiskDump {
    /// `gpt` or `dos`.
    pub label: String,
    /// Logical sector size (512 unless the dump says).
    pub sector_size: u64,
    /// Last usable sector (GPT).
    pub last_lba: Option<u64>,
    /// The partitions, as listed.
    pub parts: Vec<SfPart>,
}

/// One partition line of a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfPart {
    /// Kernel name without `/dev/` (`sda1`, `nvme0n1p2`, `loop0p3`).
    pub name: String,
    /// Number the kernel gives it (the name's trailing digits).
    pub number: u32,
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub size: u64,
    /// `type=` as written: an MBR type in hex (`83`, `5`) or a GPT type GUID.
    pub ty: String,
}

impl SfdiskDump {
    /// Where the last partition ends, in bytes: the least disk size the table fits.
    pub fn end_bytes(&self) -> u64 {
        self.parts
            .iter()
            .map(|p| (p.start + p.size) * self.sector_size)
            .max()
            .unwrap_or(0)
    }
}

impl SfPart {
    /// An MBR extended partition (types 05, 0f, 85).
    pub fn is_extended(&self) -> bool {
        matches!(
            u8::from_str_radix(&self.ty, 16),
            Ok(0x05) | Ok(0x0f) | Ok(0x85)
        )
    }
}

/// Parses `sfdisk --dump` text.
pub fn parse_sfdisk(text: &str) -> Result<SfdiskDump, String> {
    let mut d = SfdiskDump {
        label: String::new(),
        sector_size: 512,
        last_lba: None,
        parts: Vec::new(),
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some((dev, rest)) = line.split_once(" : ") {
            let name = dev.trim().trim_start_matches("/dev/").replace('/', "-");
            let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
            let number = name[name.len() - digits..]
                .parse()
                .map_err(|_| format!("partition {name} has no number"))?;
            let mut p = SfPart {
                name,
                number,
                start: 0,
                size: 0,
                ty: String::new(),
            };
            for field in rest.split(',') {
                let Some((k, v)) = field.split_once('=') else {
                    continue;
                };
                let v = v.trim();
                let num = || {
                    v.parse::<u64>()
                        .map_err(|_| format!("{}: bad {} {v:?}", p.name, k.trim()))
                };
                match k.trim() {
                    "start" => p.start = num()?,
                    "size" => p.size = num()?,
                    "type" | "Id" => p.ty = v.to_string(),
                    _ => {}
                }
            }
            if p.size == 0 {
                return Err(format!("{}: no size", p.name));
            }
            d.parts.push(p);
        } else if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            match k.trim() {
                "label" => d.label = v.to_string(),
                "sector-size" => {
                    d.sector_size = v.parse().map_err(|_| format!("bad sector-size {v:?}"))?
                }
                "last-lba" => {
                    d.last_lba = Some(v.parse().map_err(|_| format!("bad last-lba {v:?}"))?)
                }
                _ => {}
            }
        }
    }
    if d.label.is_empty() {
        // Old sfdisk dumps (before util-linux 2.26) have no label line and are always DOS.
        d.label = "dos".into();
    }
    if !matches!(d.label.as_str(), "gpt" | "dos") {
        return Err(format!(
            "partition table type {:?} (drover reads gpt and dos)",
            d.label
        ));
    }
    if ![512, 4096].contains(&d.sector_size) {
        return Err(format!("sector size {}", d.sector_size));
    }
    Ok(d)
}

/// The disk size `parted -s DISK unit s print` gives ("Disk /dev/sda: 195312500s").
pub fn parted_disk_sectors(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("Disk /dev/")?;
        let (_, size) = rest.split_once(": ")?;
        size.trim().strip_suffix('s')?.parse().ok()
    })
}

fn crc(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// A GPT header's fields this module needs.
struct GptHeader {
    bytes: Vec<u8>,
    size: usize,
    alternate: u64,
    entries_lba: u64,
    entries_len: usize,
}

fn gpt_header(sector: &[u8]) -> Result<GptHeader, ImportError> {
    let bad = |s: &str| ImportError::Invalid(format!("the saved primary GPT {s}"));
    if sector.len() < 92 || &sector[..8] != b"EFI PART" {
        return Err(bad("has no \"EFI PART\" header"));
    }
    let u32at = |o: usize| u32::from_le_bytes(sector[o..o + 4].try_into().unwrap());
    let u64at = |o: usize| u64::from_le_bytes(sector[o..o + 8].try_into().unwrap());
    let size = u32at(12) as usize;
    if !(92..=sector.len()).contains(&size) {
        return Err(bad("has a bad header size"));
    }
    let mut check = sector[..size].to_vec();
    check[16..20].fill(0);
    if crc(&check) != u32at(16) {
        return Err(bad("header's checksum does not match"));
    }
    let count = u32at(80) as usize;
    let esize = u32at(84) as usize;
    if !(128..=4096).contains(&esize) || count > 65536 {
        return Err(bad("has an implausible entry array"));
    }
    Ok(GptHeader {
        bytes: sector[..size].to_vec(),
        size,
        alternate: u64at(32),
        entries_lba: u64at(72),
        entries_len: count * esize,
    })
}

/// The disk size a saved primary GPT (`first`: the disk's first sectors, protective MBR
/// included) was written for: its backup header sits in the last sector.
pub fn gpt_disk_size(first: &[u8], ss: u64) -> Result<u64, ImportError> {
    let h = gpt_header(first.get(ss as usize..).unwrap_or_default())?;
    h.alternate
        .checked_add(1)
        .and_then(|n| n.checked_mul(ss))
        .ok_or_else(|| ImportError::Invalid("the saved GPT's backup location overflows".into()))
}

/// The backup GPT (entries, then header) for a disk of `disk_size` bytes, made from the saved
/// primary: same entries, header with its own and the other copy's location swapped.
/// Returns the bytes and the offset they go at.
pub fn gpt_backup(first: &[u8], ss: u64, disk_size: u64) -> Result<(u64, Vec<u8>), ImportError> {
    let ssz = ss as usize;
    let h = gpt_header(first.get(ssz..).unwrap_or_default())?;
    let e_start = (h.entries_lba * ss) as usize;
    let entries = first.get(e_start..e_start + h.entries_len).ok_or_else(|| {
        ImportError::Invalid("the saved primary GPT holds less than its entry array".into())
    })?;
    let u32at = |o: usize| u32::from_le_bytes(h.bytes[o..o + 4].try_into().unwrap());
    if crc(entries) != u32at(88) {
        return Err(ImportError::Invalid(
            "the saved primary GPT's entry array does not match its checksum".into(),
        ));
    }
    let last = disk_size / ss - 1;
    let e_sectors = h.entries_len.div_ceil(ssz) as u64;
    let b_entries = last - e_sectors;
    let mut hdr = h.bytes.clone();
    let my = u64::from_le_bytes(hdr[24..32].try_into().unwrap());
    hdr[24..32].copy_from_slice(&last.to_le_bytes());
    hdr[32..40].copy_from_slice(&my.to_le_bytes());
    hdr[72..80].copy_from_slice(&b_entries.to_le_bytes());
    hdr[16..20].fill(0);
    let c = crc(&hdr[..h.size]);
    hdr[16..20].copy_from_slice(&c.to_le_bytes());
    let mut out = vec![0u8; (e_sectors as usize + 1) * ssz];
    out[..entries.len()].copy_from_slice(entries);
    let at = e_sectors as usize * ssz;
    out[at..at + hdr.len()].copy_from_slice(&hdr);
    Ok((b_entries * ss, out))
}

fn mbr_entry(ty: u8, start: u64, size: u64) -> Result<[u8; 16], ImportError> {
    let fit = |v: u64| {
        u32::try_from(v)
            .map_err(|_| ImportError::Invalid(format!("sector {v} does not fit an MBR entry")))
    };
    let mut e = [0u8; 16];
    // CHS fields: "beyond CHS range" markers, as modern partitioners write.
    e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[4] = ty;
    e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[8..12].copy_from_slice(&fit(start)?.to_le_bytes());
    e[12..16].copy_from_slice(&fit(size)?.to_le_bytes());
    Ok(e)
}

/// The EBR chain for a dump's logical partitions: (sector, 512-byte EBR) pairs. The first EBR
/// sits at the extended partition's start (with `boot` as its first 446 bytes, when saved);
/// each later one in the gap before its partition, right after the previous partition.
pub fn ebr_chain(
    d: &SfdiskDump,
    boot: Option<&[u8]>,
) -> Result<Vec<(u64, [u8; 512])>, ImportError> {
    let Some(ext) = d.parts.iter().find(|p| p.is_extended() && p.number <= 4) else {
        return Ok(Vec::new());
    };
    let mut logical: Vec<&SfPart> = d.parts.iter().filter(|p| p.number >= 5).collect();
    logical.sort_by_key(|p| p.start);
    let mut ebrs: Vec<u64> = Vec::new();
    for (i, p) in logical.iter().enumerate() {
        let at = if i == 0 {
            ext.start
        } else {
            logical[i - 1].start + logical[i - 1].size
        };
        if at >= p.start || p.start + p.size > ext.start + ext.size || at < ext.start {
            return Err(ImportError::Invalid(format!(
                "logical partition {} leaves no room for its EBR inside the extended partition",
                p.name
            )));
        }
        ebrs.push(at);
    }
    let mut out = Vec::new();
    for (i, p) in logical.iter().enumerate() {
        let mut s = [0u8; 512];
        if i == 0 {
            if let Some(b) = boot {
                let n = b.len().min(446);
                s[..n].copy_from_slice(&b[..n]);
            }
        }
        let ty = u8::from_str_radix(&p.ty, 16)
            .map_err(|_| ImportError::Invalid(format!("{}: bad MBR type {:?}", p.name, p.ty)))?;
        s[446..462].copy_from_slice(&mbr_entry(ty, p.start - ebrs[i], p.size)?);
        if let Some(next) = logical.get(i + 1) {
            let at = ebrs[i + 1];
            s[462..478].copy_from_slice(&mbr_entry(
                0x05,
                at - ext.start,
                next.start + next.size - at,
            )?);
        }
        s[510] = 0x55;
        s[511] = 0xaa;
        out.push((ebrs[i], s));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPT_DUMP: &str = "label: gpt
label-id: 4064ADCF-E2F1-49BC-AFD3-2F817506DF3C
device: /dev/loop0
unit: sectors
first-lba: 34
last-lba: 196574
sector-size: 512

/dev/loop0p1 : start=        2048, size=       81920, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=D070F692-C768-4907-9F08-B33C761F83B5
/dev/loop0p2 : start=       83968, size=       40960, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, uuid=69AB13DD-F5B1-447A-ABCA-CA7A96DB2C69, name=\"a, b\"
";

    #[test]
    fn sfdisk_dumps_parse() {
        let d = parse_sfdisk(GPT_DUMP).unwrap();
        assert_eq!(d.label, "gpt");
        assert_eq!(d.last_lba, Some(196574));
        assert_eq!(d.parts.len(), 2);
        assert_eq!(d.parts[0].name, "loop0p1");
        assert_eq!(d.parts[0].number, 1);
        assert_eq!((d.parts[1].start, d.parts[1].size), (83968, 40960));
        let dos = "label: dos\nunit: sectors\n\n/dev/sda1 : start= 2048, size= 4096, type=83, bootable\n/dev/sda2 : start= 6144, size= 10240, type=5\n/dev/sda5 : start= 8192, size= 2048, type=83\n/dev/sda6 : start= 12288, size= 2048, type=82\n";
        let d = parse_sfdisk(dos).unwrap();
        assert!(d.parts[1].is_extended());
        let chain = ebr_chain(&d, Some(&[0xEBu8; 446])).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].0, 6144);
        assert_eq!(chain[0].1[0], 0xEB);
        // sda5 starts 2048 sectors after its EBR; the next EBR follows sda5's end.
        assert_eq!(&chain[0].1[454..458], &2048u32.to_le_bytes());
        assert_eq!(chain[1].0, 10240);
        assert_eq!(&chain[0].1[470..474], &(10240u32 - 6144).to_le_bytes());
        assert_eq!(&chain[1].1[454..458], &2048u32.to_le_bytes());
        assert!(parse_sfdisk("label: sun\n").unwrap_err().contains("sun"));
        assert_eq!(
            parted_disk_sectors("Model: Loopback device (loopback)\nDisk /dev/loop0: 196608s\n"),
            Some(196608)
        );
    }
}
