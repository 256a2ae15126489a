//! Wake-on-LAN magic packets: six `0xFF` bytes, then the target's MAC address sixteen times
//! (102 bytes), usually sent as a UDP broadcast to port 9 (or 7). An optional 4- or 6-byte
//! SecureOn password follows; drover sends none.

/// Bytes of a magic packet without a password.
pub const MAGIC_PACKET_LEN: usize = 6 + 16 * 6;

/// The UDP port wake-on-LAN packets go to by default ("discard").
pub const DEFAULT_PORT: u16 = 9;

/// The magic packet that wakes the machine with this MAC address.
pub fn magic_packet(mac: [u8; 6]) -> [u8; MAGIC_PACKET_LEN] {
    let mut p = [0xFF; MAGIC_PACKET_LEN];
    for copy in p[6..].chunks_exact_mut(6) {
        copy.copy_from_slice(&mac);
    }
    p
}

/// The MAC address a magic packet wakes, if `packet` is one (with or without a 4- or 6-byte
/// password after it).
pub fn parse_magic_packet(packet: &[u8]) -> Option<[u8; 6]> {
    if packet.len() < MAGIC_PACKET_LEN
        || !matches!(packet.len() - MAGIC_PACKET_LEN, 0 | 4 | 6)
        || packet[..6] != [0xFF; 6]
    {
        return None;
    }
    let mac: [u8; 6] = packet[6..12].try_into().ok()?;
    packet[6..MAGIC_PACKET_LEN]
        .chunks_exact(6)
        .all(|c| c == mac)
        .then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let p = magic_packet(mac);
        assert_eq!(p.len(), 102);
        assert_eq!(&p[..6], &[0xFF; 6]);
        assert_eq!(&p[96..], &mac);
        assert_eq!(parse_magic_packet(&p), Some(mac));
        let mut with_password = p.to_vec();
        with_password.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(parse_magic_packet(&with_password), Some(mac));
    }

    #[test]
    fn not_magic() {
        let mac = [1, 2, 3, 4, 5, 6];
        let p = magic_packet(mac);
        assert_eq!(parse_magic_packet(&p[..101]), None);
        assert_eq!(parse_magic_packet(&[]), None);
        let mut bad = p;
        bad[50] ^= 1;
        assert_eq!(parse_magic_packet(&bad), None);
        let mut bad = p;
        bad[0] = 0;
        assert_eq!(parse_magic_packet(&bad), None);
        let mut long = p.to_vec();
        long.push(0);
        assert_eq!(parse_magic_packet(&long), None);
    }
}
