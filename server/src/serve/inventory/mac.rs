//! MAC addresses: how machines are identified, as PXE identifies them.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet address. Parses `aa:bb:cc:dd:ee:ff`, `AA-BB-CC-DD-EE-FF` and
/// `aabb.ccdd.eeff`; prints lower-case with colons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Mac(pub(crate) [u8; 6]);

impl Mac {
    /// The name a machine gets when nobody named it: `pc-` and the last three bytes.
    pub(crate) fn default_name(self) -> String {
        format!("pc-{:02x}{:02x}{:02x}", self.0[3], self.0[4], self.0[5])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address (like aa:bb:cc:dd:ee:ff)");
        let hex: String = s
            .chars()
            .filter(|c| !matches!(c, ':' | '-' | '.'))
            .collect();
        let seps = s.len() - hex.len();
        if hex.len() != 12
            || !hex.chars().all(|c| c.is_ascii_hexdigit())
            || !matches!(seps, 0 | 2 | 5)
        {
            return Err(bad());
        }
        let mut b = [0u8; 6];
        for (i, x) in b.iter_mut().enumerate() {
            *x = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let m: Mac = "AA-bb-CC-00-11-22".parse().unwrap();
        assert_eq!(m.to_string(), "aa:bb:cc:00:11:22");
        assert_eq!("aabb.cc00.1122".parse::<Mac>(), Ok(m));
        assert_eq!("aabbcc001122".parse::<Mac>(), Ok(m));
        assert_eq!(m.default_name(), "pc-001122");
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "gg:bb:cc:dd:ee:ff",
            "a:b:c:d:e:f",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
