//! Synthetic frames for the TC program (`BPF_PROG_TEST_RUN`): Ethernet, IPv4 (with or without
//! options), IPv6, and TCP, UDP and SCTP headers, built byte by byte.

pub fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    ipv4_with_options(src, dst, proto, &[], l4)
}

/// IPv4 with `options` (a multiple of 4 bytes) after the fixed header: with options the L4
/// header is not at the usual offset.
pub fn ipv4_with_options(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    options: &[u8],
    l4: &[u8],
) -> Vec<u8> {
    let header_len = 20 + options.len();
    let total = (header_len + l4.len()) as u16;
    let mut h = vec![0x40 | (header_len / 4) as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(options);
    h.extend_from_slice(l4);
    ethernet(0x0800, &h)
}

pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(l4);
    ethernet(0x86DD, &h)
}

/// Four NOP options: IHL 6.
pub const NOPS: [u8; 4] = [1, 1, 1, 1];
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// A 20-byte TCP header with these flags.
pub fn tcp(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&[0; 8]); // sequence and acknowledgment numbers
    p.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    p
}

/// An SCTP common header and one chunk (INIT = 1, INIT ACK = 2, DATA = 0).
pub fn sctp(src_port: u16, dst_port: u16, chunk_type: u8) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]); // verification tag, checksum
    p.extend_from_slice(&[chunk_type, 0, 0, 20]);
    p.extend_from_slice(&[0u8; 16]);
    p
}

/// An 8-byte UDP header (length and checksum zero) and `payload`.
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]);
    p.extend_from_slice(payload);
    p
}
