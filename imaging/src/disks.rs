//! Which of a machine's disks to write: the machine's disks as `/sys/block` shows them, and
//! the choice among them. The choice never guesses: a disk named by serial or by size must
//! match exactly one disk, a machine without such a name must have exactly one candidate, and
//! removable disks (USB sticks and drives, card readers, optical drives) are never candidates.
//! Every refusal names the disks it saw, so the admin can pin one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// How a task names its disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The disk with this serial number.
    Serial(String),
    /// The one disk of exactly this many bytes.
    Size(u64),
    /// Every fixed disk of exactly this many bytes (one at least), each written the same.
    AllSize(u64),
}

impl FromStr for Selector {
    type Err = String;

    /// `serial:S`, `size:BYTES` or `all-size:BYTES` (sizes also take K, M and G suffixes,
    /// powers of 1024).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("disk {s:?}: give serial:SERIAL, size:BYTES or all-size:BYTES");
        match s.split_once(':') {
            Some(("serial", v)) => {
                let v = v.trim();
                if v.is_empty() || v.len() > 128 || v.chars().any(char::is_control) {
                    return Err(format!(
                        "disk {s:?}: a serial is 1 to 128 printable characters"
                    ));
                }
                Ok(Self::Serial(v.to_string()))
            }
            Some((kind @ ("size" | "all-size"), v)) => {
                let v = v.trim();
                let (num, mult) = match v.chars().last() {
                    Some('K' | 'k') => (&v[..v.len() - 1], 1u64 << 10),
                    Some('M' | 'm') => (&v[..v.len() - 1], 1 << 20),
                    Some('G' | 'g') => (&v[..v.len() - 1], 1 << 30),
                    _ => (v, 1),
                };
                match num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)) {
                    Some(n) if n > 0 && kind == "size" => Ok(Self::Size(n)),
                    Some(n) if n > 0 => Ok(Self::AllSize(n)),
                    _ => Err(bad()),
                }
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Serial(s) => write!(f, "serial:{s}"),
            Self::Size(n) => write!(f, "size:{n}"),
            Self::AllSize(n) => write!(f, "all-size:{n}"),
        }
    }
}

/// One whole disk of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The kernel's name: `sda`, `nvme0n1`, `vda`.
    pub name: String,
    /// Its device node.
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// As the disk reports it (`serial`, `device/serial`, WWID, or SCSI VPD page 0x80).
    pub serial: Option<String>,
    /// The vendor's model string, when the kernel shows one.
    pub model: Option<String>,
    /// Removable media, or attached over USB: never written.
    pub removable: bool,
}

impl fmt::Display for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes", self.name, self.size)?;
        if let Some(m) = &self.model {
            write!(f, ", {m}")?;
        }
        match &self.serial {
            Some(s) => write!(f, ", serial {s}")?,
            None => write!(f, ", no serial")?,
        }
        if self.removable {
            write!(f, ", removable")?;
        }
        write!(f, ")")
    }
}

/// Kernel block devices that are never a machine's disk.
const NOT_DISKS: &[&str] = &[
    "loop", "ram", "zram", "sr", "fd", "nbd", "dm-", "md", "mtdblock",
];

fn read_trim(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_string())
}

/// The serial from a SCSI unit serial number page (VPD 0x80): a 4-byte header, then ASCII.
fn vpd_serial(p: &Path) -> Option<String> {
    let b = std::fs::read(p).ok()?;
    let len = usize::from(*b.get(3)?);
    let s = String::from_utf8_lossy(b.get(4..4 + len.min(b.len().saturating_sub(4)))?);
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_string())
}

/// The whole disks under `sys_block` (normally `/sys/block`), their nodes under `dev`, sorted by
/// name. Read-only devices and kernel pseudo-devices are left out.
pub fn scan(sys_block: &Path, dev: &Path) -> std::io::Result<Vec<Disk>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(sys_block)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if NOT_DISKS.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let d = e.path();
        if read_trim(&d.join("ro")).as_deref() == Some("1") {
            continue;
        }
        let sectors: u64 = read_trim(&d.join("size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if sectors == 0 {
            continue;
        }
        // USB disks often say removable 0; their sysfs path goes through the USB bus.
        let usb = std::fs::canonicalize(&d)
            .map(|p| {
                p.components()
                    .any(|c| c.as_os_str().to_string_lossy().starts_with("usb"))
            })
            .unwrap_or(false);
        let serial = ["serial", "device/serial", "device/wwid", "wwid"]
            .iter()
            .find_map(|f| read_trim(&d.join(f)))
            .or_else(|| vpd_serial(&d.join("device/vpd_pg80")));
        out.push(Disk {
            path: dev.join(&name),
            size: sectors * 512,
            serial,
            model: read_trim(&d.join("device/model")),
            removable: usb || read_trim(&d.join("removable")).as_deref() == Some("1"),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn list(disks: &[Disk]) -> String {
    if disks.is_empty() {
        return "none".into();
    }
    disks
        .iter()
        .map(Disk::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The disks to write: every fixed disk of the size an [`Selector::AllSize`] names, else the
/// one [`choose`] picks.
pub fn choose_all<'a>(disks: &'a [Disk], sel: Option<&Selector>) -> Result<Vec<&'a Disk>, String> {
    let Some(Selector::AllSize(n)) = sel else {
        return choose(disks, sel).map(|d| vec![d]);
    };
    let all: Vec<&Disk> = disks
        .iter()
        .filter(|d| !d.removable && d.size == *n)
        .collect();
    if all.is_empty() {
        return Err(format!(
            "no fixed disk of {n} bytes; this machine has: {}",
            list(disks)
        ));
    }
    Ok(all)
}

/// The disk to write: the one `sel` names, or the only candidate. An error says why none
/// could be chosen and lists the disks seen.
pub fn choose<'a>(disks: &'a [Disk], sel: Option<&Selector>) -> Result<&'a Disk, String> {
    let fixed: Vec<&Disk> = disks.iter().filter(|d| !d.removable).collect();
    let pin = "pin one with `drover machine set MAC --disk serial:SERIAL` (or size:BYTES)";
    match sel {
        Some(Selector::Serial(s)) => match disks.iter().find(|d| d.serial.as_deref() == Some(s)) {
            Some(d) if d.removable => Err(format!(
                "the disk with serial {s} is {d}: drover never writes a removable disk"
            )),
            Some(d) => Ok(d),
            None => Err(format!(
                "no disk has serial {s}; this machine has: {}",
                list(disks)
            )),
        },
        // One disk is asked for: of several of that size, the first.
        Some(Selector::AllSize(_)) => choose_all(disks, sel).map(|all| all[0]),
        Some(Selector::Size(n)) => {
            let m: Vec<&Disk> = fixed.iter().copied().filter(|d| d.size == *n).collect();
            match m.as_slice() {
                [d] => Ok(d),
                [] => Err(format!(
                    "no fixed disk of {n} bytes; this machine has: {}",
                    list(disks)
                )),
                _ => Err(format!(
                    "{} disks of {n} bytes, the choice is ambiguous: {}; {pin}",
                    m.len(),
                    list(disks)
                )),
            }
        }
        None => match fixed.as_slice() {
            [d] => Ok(d),
            [] => Err(format!(
                "no fixed disk to write (removable disks are never written); this machine has: {}",
                list(disks)
            )),
            _ => Err(format!(
                "{} fixed disks, the choice is ambiguous: {}; {pin}",
                fixed.len(),
                list(disks)
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, size: u64, serial: Option<&str>, removable: bool) -> Disk {
        Disk {
            name: name.into(),
            path: PathBuf::from("/dev").join(name),
            size,
            serial: serial.map(str::to_string),
            model: None,
            removable,
        }
    }

    #[test]
    fn selectors_parse_and_print() {
        assert_eq!("serial:S123".parse(), Ok(Selector::Serial("S123".into())));
        assert_eq!("size:1048576".parse(), Ok(Selector::Size(1 << 20)));
        assert_eq!("size:64M".parse(), Ok(Selector::Size(64 << 20)));
        assert_eq!(Selector::Size(5).to_string(), "size:5");
        assert_eq!(Selector::Serial("x".into()).to_string(), "serial:x");
        for bad in [
            "",
            "sda",
            "serial:",
            "size:0",
            "size:x",
            "size:-1",
            "path:/dev/sda",
        ] {
            let e = bad.parse::<Selector>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn the_only_fixed_disk_is_chosen_and_removable_ones_never() {
        let d = [
            disk("sda", 500, Some("A"), false),
            disk("sdb", 16, Some("USB"), true),
        ];
        assert_eq!(choose(&d, None).unwrap().name, "sda");
        let e = choose(&d, Some(&Selector::Serial("USB".into()))).unwrap_err();
        assert!(e.contains("never writes a removable disk"), "{e}");
        let e = choose(&d, Some(&Selector::Size(16))).unwrap_err();
        assert!(e.contains("no fixed disk of 16 bytes"), "{e}");
        let e = choose(&d[1..], None).unwrap_err();
        assert!(e.contains("no fixed disk") && e.contains("sdb"), "{e}");
    }

    #[test]
    fn several_disks_need_a_name_and_the_name_must_be_unique() {
        let d = [
            disk("nvme0n1", 500, Some("N1"), false),
            disk("sda", 500, Some("S1"), false),
            disk("sdb", 1000, None, false),
        ];
        let e = choose(&d, None).unwrap_err();
        assert!(
            e.contains("ambiguous") && e.contains("nvme0n1") && e.contains("sdb"),
            "{e}"
        );
        assert_eq!(
            choose(&d, Some(&Selector::Serial("S1".into())))
                .unwrap()
                .name,
            "sda"
        );
        assert_eq!(choose(&d, Some(&Selector::Size(1000))).unwrap().name, "sdb");
        let e = choose(&d, Some(&Selector::Size(500))).unwrap_err();
        assert!(e.contains("2 disks of 500 bytes"), "{e}");
        let e = choose(&d, Some(&Selector::Serial("nope".into()))).unwrap_err();
        assert!(e.contains("no disk has serial nope"), "{e}");
    }

    #[test]
    fn all_size_picks_every_fixed_disk_of_the_size() {
        assert_eq!("all-size:2G".parse(), Ok(Selector::AllSize(2 << 30)));
        assert_eq!(Selector::AllSize(5).to_string(), "all-size:5");
        assert!("all-size:0".parse::<Selector>().is_err());
        let d = [
            disk("nvme0n1", 500, Some("N1"), false),
            disk("sda", 500, Some("S1"), false),
            disk("sdb", 1000, None, false),
            disk("sdc", 500, Some("USB"), true),
        ];
        let names = |v: Vec<&Disk>| v.iter().map(|d| d.name.clone()).collect::<Vec<_>>();
        let all = choose_all(&d, Some(&Selector::AllSize(500))).unwrap();
        assert_eq!(names(all), ["nvme0n1", "sda"], "never the removable one");
        let one = choose_all(&d, Some(&Selector::Size(1000))).unwrap();
        assert_eq!(names(one), ["sdb"]);
        let e = choose_all(&d, Some(&Selector::AllSize(7))).unwrap_err();
        assert!(
            e.contains("no fixed disk of 7 bytes") && e.contains("sdb"),
            "{e}"
        );
    }

    #[test]
    fn scan_reads_sysfs() {
        let t = tempfile::tempdir().unwrap();
        let mk = |name: &str, files: &[(&str, &[u8])]| {
            let d = t.path().join(name);
            std::fs::create_dir_all(d.join("device")).unwrap();
            for (f, v) in files {
                std::fs::write(d.join(f), v).unwrap();
            }
        };
        mk(
            "vda",
            &[
                ("size", b"131072\n"),
                ("serial", b"drover-1\n"),
                ("removable", b"0\n"),
            ],
        );
        let mut pg80 = vec![0u8, 0x80, 0, 8];
        pg80.extend_from_slice(b"  WD-123");
        mk(
            "sda",
            &[
                ("size", b"2048\n"),
                ("removable", b"1\n"),
                ("device/vpd_pg80", &pg80),
                ("device/model", b"Flash Disk      \n"),
            ],
        );
        mk("loop0", &[("size", b"2048\n")]);
        mk("sr0", &[("size", b"2048\n")]);
        mk("vdb", &[("size", b"0\n")]);
        mk("vdc", &[("size", b"2048\n"), ("ro", b"1\n")]);
        let got = scan(t.path(), Path::new("/dev")).unwrap();
        assert_eq!(
            got,
            vec![
                Disk {
                    name: "sda".into(),
                    path: "/dev/sda".into(),
                    size: 2048 * 512,
                    serial: Some("WD-123".into()),
                    model: Some("Flash Disk".into()),
                    removable: true,
                },
                disk("vda", 64 << 20, Some("drover-1"), false),
            ]
        );
        assert_eq!(choose(&got, None).unwrap().name, "vda");
    }
}
