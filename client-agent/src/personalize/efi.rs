//! UEFI boot entries: on a UEFI machine the firmware boots what its `BootOrder` names, so
//! after restoring a disk the agent makes sure one `Boot####` entry starts the restored
//! system's loader, and orders it: first, or right after the network entries when the lab
//! keeps network boot first (Clonezilla's `-ssnf`), so the machine can be redeployed without
//! touching it. The variables are written through efivarfs (each file: 4 bytes of attributes,
//! then the value), as efibootmgr does; an entry with the same loader is reused, never
//! duplicated. Encoding per the UEFI specification (EFI_LOAD_OPTION, device path nodes).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// EFI_GLOBAL_VARIABLE, the vendor of `Boot####` and `BootOrder`.
const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// Non-volatile, boot-service and runtime access.
const ATTRS: u32 = 0x7;
/// LOAD_OPTION_ACTIVE.
const ACTIVE: u32 = 0x1;
/// Where efivarfs is mounted.
pub(crate) const EFIVARS: &str = "/sys/firmware/efi/efivars";

/// The partition a loader is on, as the Hard Drive device path names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EspRef {
    /// The partition's number in its table.
    pub number: u32,
    /// First sector and length in sectors.
    pub start_lba: u64,
    pub size_lba: u64,
    /// GPT: the partition's unique GUID, as stored on disk (mixed-endian); MBR: the disk
    /// signature in the first four bytes.
    pub signature: [u8; 16],
    /// GPT (true) or MBR.
    pub gpt: bool,
}

/// Parses a GUID written the usual way into its on-disk (mixed-endian) bytes.
pub(crate) fn guid_bytes(s: &str) -> Option<[u8; 16]> {
    let dashes = s.char_indices().filter(|(_, c)| *c == '-').map(|(i, _)| i);
    if s.len() != 36 || !dashes.eq([8, 13, 18, 23]) {
        return None;
    }
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let mut b = [0u8; 16];
    for (i, out) in b.iter_mut().enumerate() {
        *out = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Some(b)
}

fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// The device path of `loader` (a `\`-separated path on the ESP) on `esp`.
pub(crate) fn device_path(esp: &EspRef, loader: &str) -> Vec<u8> {
    let mut p = vec![0x04, 0x01, 42, 0];
    p.extend_from_slice(&esp.number.to_le_bytes());
    p.extend_from_slice(&esp.start_lba.to_le_bytes());
    p.extend_from_slice(&esp.size_lba.to_le_bytes());
    p.extend_from_slice(&esp.signature);
    p.extend_from_slice(if esp.gpt {
        &[0x02, 0x02]
    } else {
        &[0x01, 0x01]
    });
    let name = ucs2(loader);
    p.extend_from_slice(&[0x04, 0x04]);
    p.extend_from_slice(&((4 + name.len()) as u16).to_le_bytes());
    p.extend_from_slice(&name);
    p.extend_from_slice(&[0x7f, 0xff, 4, 0]);
    p
}

/// An EFI_LOAD_OPTION: active, `description`, `path`, no optional data.
pub(crate) fn load_option(description: &str, path: &[u8]) -> Vec<u8> {
    let mut o = ACTIVE.to_le_bytes().to_vec();
    o.extend_from_slice(&(path.len() as u16).to_le_bytes());
    o.extend_from_slice(&ucs2(description));
    o.extend_from_slice(path);
    o
}

/// The device path of a load option (None when malformed).
fn option_path(o: &[u8]) -> Option<&[u8]> {
    let len = u16::from_le_bytes(o.get(4..6)?.try_into().ok()?) as usize;
    let mut i = 6;
    while u16::from_le_bytes(o.get(i..i + 2)?.try_into().ok()?) != 0 {
        i += 2;
    }
    o.get(i + 2..i + 2 + len)
}

/// Whether a load option boots from the network: its device path has a MAC address, IPv4,
/// IPv6 or URI node (firmware PXE and HTTP boot entries).
fn is_network(o: &[u8]) -> bool {
    let Some(mut p) = option_path(o) else {
        return false;
    };
    while p.len() >= 4 {
        let (t, s) = (p[0], p[1]);
        let len = u16::from_le_bytes([p[2], p[3]]) as usize;
        if t == 0x03 && matches!(s, 11 | 12 | 13 | 24) {
            return true;
        }
        if t == 0x7f || len < 4 || len > p.len() {
            break;
        }
        p = &p[len..];
    }
    false
}

/// The firmware's variables, in an efivarfs directory.
pub(crate) struct Vars {
    dir: PathBuf,
}

impl Vars {
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-{GLOBAL}"))
    }

    /// A variable's value (without its attributes), None when absent.
    fn get(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(name)) {
            Ok(v) if v.len() >= 4 => Ok(Some(v[4..].to_vec())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a variable in one write, as efivarfs wants; an existing one that the kernel
    /// marked immutable is made writable first.
    fn set(&self, name: &str, value: &[u8]) -> anyhow::Result<()> {
        let path = self.path(name);
        if path.exists() {
            clear_immutable(&path);
        }
        let mut buf = ATTRS.to_le_bytes().to_vec();
        buf.extend_from_slice(value);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(!is_efivarfs(&self.dir))
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(&buf)
            .with_context(|| format!("writing the UEFI variable {name}"))
    }

    fn order(&self) -> io::Result<Vec<u16>> {
        Ok(self
            .get("BootOrder")?
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    }

    /// Every `Boot####` entry there is, by number.
    fn entries(&self) -> io::Result<Vec<(u16, Vec<u8>)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            let Some(hex) = name
                .strip_suffix(&format!("-{GLOBAL}"))
                .and_then(|n| n.strip_prefix("Boot"))
            else {
                continue;
            };
            if hex.len() != 4 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                continue;
            }
            let n = u16::from_str_radix(hex, 16).expect("four hex digits");
            if let Some(v) = self.get(&format!("Boot{hex}"))? {
                out.push((n, v));
            }
        }
        out.sort();
        Ok(out)
    }
}

fn is_efivarfs(dir: &Path) -> bool {
    const EFIVARFS_MAGIC: i64 = 0xde5e81e4;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a zeroed statfs the call fills.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) }) == 0 && st.f_type as i64 == EFIVARFS_MAGIC
}

/// Clears FS_IMMUTABLE_FL (efivarfs sets it on variables it does not know to be safe to
/// change); failures are left for the write to report.
fn clear_immutable(path: &Path) {
    const FS_IMMUTABLE_FL: libc::c_long = 0x10;
    let Ok(f) = std::fs::File::open(path) else {
        return;
    };
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one long through the pointer.
    unsafe {
        if libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) == 0
            && flags & FS_IMMUTABLE_FL != 0
        {
            flags &= !FS_IMMUTABLE_FL;
            libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags);
        }
    }
}

/// Makes `Boot####` start `loader` on `esp` and orders it: first, or after the network
/// entries when `keep_network_first`. Returns the line for the task's report.
pub(crate) fn ensure_entry(
    vars: &Vars,
    esp: &EspRef,
    loader: &str,
    description: &str,
    keep_network_first: bool,
) -> anyhow::Result<String> {
    let path = device_path(esp, loader);
    let entries = vars.entries().context("reading the boot entries")?;
    let same = entries
        .iter()
        .find(|(_, o)| option_path(o) == Some(path.as_slice()))
        .map(|(n, _)| *n);
    let num = match same {
        Some(n) => n,
        None => (0..=u16::MAX)
            .find(|n| !entries.iter().any(|(e, _)| e == n))
            .context("every Boot#### number is taken")?,
    };
    let name = format!("Boot{num:04X}");
    vars.set(&name, &load_option(description, &path))?;

    let old = vars.order().context("reading BootOrder")?;
    let net = |n: u16| n != num && entries.iter().any(|(e, o)| *e == n && is_network(o));
    // The network entry this machine booted from stays first (the others would each wait
    // for a DHCP or HTTP server before the restored system got its turn); all of them when
    // it did not boot from one.
    let current = vars
        .get("BootCurrent")
        .context("reading BootCurrent")?
        .and_then(|v| Some(u16::from_le_bytes(v.get(..2)?.try_into().ok()?)))
        .filter(|c| net(*c));
    let network: Vec<u16> = match current {
        Some(c) => vec![c],
        None => old.iter().copied().filter(|n| net(*n)).collect(),
    };
    let mut order = Vec::with_capacity(old.len() + 1);
    if keep_network_first {
        order.extend(&network);
    }
    order.push(num);
    for n in &old {
        if !order.contains(n) {
            order.push(*n);
        }
    }
    if order != old {
        let bytes: Vec<u8> = order.iter().flat_map(|n| n.to_le_bytes()).collect();
        vars.set("BootOrder", &bytes)?;
    }
    let place = if keep_network_first && !network.is_empty() {
        "after network boot"
    } else {
        "first"
    };
    Ok(format!(
        "UEFI boot entry {name} \"{description}\" starts {loader} (partition {}), {place} in the boot order",
        esp.number
    ))
}

/// The loader to boot on a mounted ESP, with the entry's description: a vendor's
/// `shimx64.efi`, else its `grubx64.efi`, else Windows Boot Manager, else the removable-media
/// path `\EFI\BOOT\BOOTX64.EFI`. Names are matched without regard to case, as FAT does.
pub(crate) fn find_loader(esp: &Path) -> Option<(String, String)> {
    let find = |dir: &Path, want: &str| -> Option<String> {
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.eq_ignore_ascii_case(want))
    };
    let efi = find(esp, "EFI")?;
    let mut vendors: Vec<String> = std::fs::read_dir(esp.join(&efi))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.eq_ignore_ascii_case("BOOT") && !n.eq_ignore_ascii_case("Microsoft"))
        .collect();
    vendors.sort();
    for want in ["shimx64.efi", "grubx64.efi"] {
        for v in &vendors {
            if let Some(f) = find(&esp.join(&efi).join(v), want) {
                return Some((format!("\\{efi}\\{v}\\{f}"), v.clone()));
            }
        }
    }
    if let Some(ms) = find(&esp.join(&efi), "Microsoft") {
        if let Some(b) = find(&esp.join(&efi).join(&ms), "Boot") {
            if let Some(f) = find(&esp.join(&efi).join(&ms).join(&b), "bootmgfw.efi") {
                return Some((
                    format!("\\{efi}\\{ms}\\{b}\\{f}"),
                    "Windows Boot Manager".into(),
                ));
            }
        }
    }
    let b = find(&esp.join(&efi), "BOOT")?;
    let f = find(&esp.join(&efi).join(&b), "BOOTX64.EFI")?;
    Some((format!("\\{efi}\\{b}\\{f}"), "UEFI OS".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp() -> EspRef {
        EspRef {
            number: 2,
            start_lba: 4096,
            size_lba: 131072,
            signature: guid_bytes("9A4C2F1E-0B5D-4E8A-A1B2-C3D4E5F60718").unwrap(),
            gpt: true,
        }
    }

    fn write_var(dir: &Path, name: &str, value: &[u8]) {
        let mut v = ATTRS.to_le_bytes().to_vec();
        v.extend_from_slice(value);
        std::fs::write(dir.join(format!("{name}-{GLOBAL}")), v).unwrap();
    }

    /// A firmware PXE entry as OVMF makes it: PciRoot/Pci/MAC/IPv4.
    fn pxe_entry() -> Vec<u8> {
        let mut p = vec![0x02, 0x01, 12, 0, 0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0];
        p.extend_from_slice(&[0x01, 0x01, 6, 0, 0, 3]);
        let mut mac = vec![0x03, 11, 37, 0];
        mac.extend_from_slice(&[0x52, 0x54, 0, 0xd0, 0, 1]);
        mac.extend_from_slice(&[0; 27]);
        p.extend_from_slice(&mac);
        let mut ip = vec![0x03, 12, 27, 0];
        ip.extend_from_slice(&[0; 23]);
        p.extend_from_slice(&ip);
        p.extend_from_slice(&[0x7f, 0xff, 4, 0]);
        load_option("UEFI PXEv4 (MAC:525400D00001)", &p)
    }

    #[test]
    fn a_load_option_is_encoded_as_the_specification_lays_it_out() {
        let g = guid_bytes("9A4C2F1E-0B5D-4E8A-A1B2-C3D4E5F60718").unwrap();
        assert_eq!(&g[..4], &[0x1e, 0x2f, 0x4c, 0x9a]);
        assert_eq!(&g[4..8], &[0x5d, 0x0b, 0x8a, 0x4e]);
        assert_eq!(&g[8..], &[0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18]);
        assert_eq!(
            imaging::table::guid_string(&g),
            "9A4C2F1E-0B5D-4E8A-A1B2-C3D4E5F60718"
        );
        assert_eq!(guid_bytes("9A4C2F1E0B5D4E8AA1B2C3D4E5F60718----"), None);

        let p = device_path(&esp(), "\\EFI\\debian\\grubx64.efi");
        // HD(2,GPT,guid,0x1000,0x20000): 42 bytes.
        assert_eq!(&p[..4], &[4, 1, 42, 0]);
        assert_eq!(u32::from_le_bytes(p[4..8].try_into().unwrap()), 2);
        assert_eq!(u64::from_le_bytes(p[8..16].try_into().unwrap()), 4096);
        assert_eq!(u64::from_le_bytes(p[16..24].try_into().unwrap()), 131072);
        assert_eq!(&p[40..42], &[2, 2]);
        // File(\EFI\debian\grubx64.efi): 4 + 2 × (23 + 1) bytes, then the end node.
        assert_eq!(&p[42..46], &[4, 4, 52, 0]);
        assert_eq!(&p[46..48], &[b'\\', 0]);
        assert_eq!(&p[p.len() - 4..], &[0x7f, 0xff, 4, 0]);
        assert_eq!(p.len(), 42 + 52 + 4);

        let o = load_option("debian", &p);
        assert_eq!(&o[..4], &[1, 0, 0, 0]);
        assert_eq!(u16::from_le_bytes([o[4], o[5]]) as usize, p.len());
        assert_eq!(&o[6..20], &ucs2("debian")[..]);
        assert_eq!(option_path(&o), Some(p.as_slice()));
        assert!(!is_network(&o));
        assert!(is_network(&pxe_entry()));
    }

    #[test]
    fn the_entry_goes_first_or_after_network_boot_and_is_never_duplicated() {
        let dir = tempfile::tempdir().unwrap();
        let vars = Vars::new(dir.path());
        write_var(
            dir.path(),
            "Boot0000",
            &load_option("UiApp", &[0x7f, 0xff, 4, 0]),
        );
        write_var(dir.path(), "Boot0001", &pxe_entry());
        write_var(dir.path(), "BootOrder", &[1, 0, 0, 0]);
        let loader = "\\EFI\\debian\\grubx64.efi";

        let line = ensure_entry(&vars, &esp(), loader, "debian", true).unwrap();
        assert!(
            line.contains("Boot0002") && line.contains("after network boot"),
            "{line}"
        );
        assert_eq!(vars.order().unwrap(), vec![1, 2, 0]);
        // Booted from one of two network entries: that one stays first, the other goes
        // after the restored system.
        write_var(dir.path(), "Boot0003", &pxe_entry());
        write_var(dir.path(), "BootOrder", &[3, 0, 1, 0, 2, 0, 0, 0]);
        write_var(dir.path(), "BootCurrent", &[1, 0]);
        ensure_entry(&vars, &esp(), loader, "debian", true).unwrap();
        assert_eq!(vars.order().unwrap(), vec![1, 2, 3, 0]);
        std::fs::remove_file(vars.path("Boot0003")).unwrap();
        write_var(dir.path(), "BootOrder", &[1, 0, 2, 0, 0, 0]);
        let o = vars.get("Boot0002").unwrap().unwrap();
        assert_eq!(option_path(&o).unwrap(), device_path(&esp(), loader));

        // Again, without keeping the network first: the same entry, moved to the front.
        let line = ensure_entry(&vars, &esp(), loader, "debian", false).unwrap();
        assert!(
            line.contains("Boot0002") && line.contains("first"),
            "{line}"
        );
        assert_eq!(vars.order().unwrap(), vec![2, 1, 0]);
        assert_eq!(vars.entries().unwrap().len(), 3);

        // Another loader gets its own number; no BootOrder yet is fine too (the entry booted
        // from still goes first).
        std::fs::remove_file(vars.path("BootOrder")).unwrap();
        ensure_entry(&vars, &esp(), "\\EFI\\BOOT\\BOOTX64.EFI", "UEFI OS", true).unwrap();
        assert_eq!(vars.order().unwrap(), vec![1, 3]);
    }

    #[test]
    fn the_loader_is_found_in_the_order_firmware_vendors_install_them() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path();
        assert_eq!(find_loader(esp), None);
        for f in [
            "EFI/BOOT/BOOTX64.EFI",
            "EFI/Microsoft/Boot/bootmgfw.efi",
            "EFI/debian/grubx64.efi",
            "EFI/debian/shimx64.efi",
        ] {
            std::fs::create_dir_all(esp.join(f).parent().unwrap()).unwrap();
            std::fs::write(esp.join(f), b"MZ").unwrap();
        }
        let want = [
            ("\\EFI\\debian\\shimx64.efi", "debian"),
            ("\\EFI\\debian\\grubx64.efi", "debian"),
            (
                "\\EFI\\Microsoft\\Boot\\bootmgfw.efi",
                "Windows Boot Manager",
            ),
            ("\\EFI\\BOOT\\BOOTX64.EFI", "UEFI OS"),
        ];
        for (i, (loader, desc)) in want.iter().enumerate() {
            assert_eq!(
                find_loader(esp),
                Some((loader.to_string(), desc.to_string())),
                "step {i}"
            );
            let rel = loader.trim_start_matches('\\').replace('\\', "/");
            std::fs::remove_file(esp.join(rel)).unwrap();
        }
    }
}
