//! Where the node's NAT sent a connection: one ctnetlink `IPCTNL_MSG_CT_GET` per query.
//!
//! A connection to a Service ClusterIP is translated by kube-proxy (DNAT) after it leaves the
//! client's pod; when the backend runs on another node, conntrack is the only place on the
//! client's node that knows which backend it was. The reply tuple of the conntrack entry
//! starts at the backend: its source is the translated destination.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::time::Duration;

use crate::model::{FlowKey, Protocol};

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 1 << 15;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// A ctnetlink socket.
pub struct Conntrack {
    socket: netlink_sys::Socket,
    seq: u32,
}

impl Conntrack {
    pub fn open() -> io::Result<Conntrack> {
        let mut socket = netlink_sys::Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        // The kernel answers a GET at once; never wait for long if it does not.
        super::sys::set_receive_timeout(socket.as_fd(), Duration::from_secs(1))?;
        Ok(Conntrack { socket, seq: 0 })
    }

    /// The translated destination of `flow` (initiator -> original destination), if the node's
    /// NAT changed it; `None` when there is no entry or no translation.
    pub fn translated_destination(&mut self, flow: &FlowKey) -> io::Result<Option<SocketAddr>> {
        let mut buf = vec![0u8; 8192];
        // A reply left over from an earlier request (its receive failed or timed out) must not
        // be taken for this one's: replies are matched by sequence number, and stale ones read
        // past (no extra syscall per lookup to empty the queue first).
        self.seq = self.seq.wrapping_add(1);
        let request = encode_get(flow, self.seq);
        self.socket.send(&request, 0)?;
        for _ in 0..REPLIES_READ {
            let n = self.socket.recv(&mut &mut buf[..], 0)?;
            let reply = &buf[..n.min(buf.len())];
            if message_seq(reply) == Some(self.seq) {
                return Ok(decode_reply(reply).filter(|reply_src| *reply_src != flow.dst));
            }
        }
        Err(io::Error::other(format!(
            "conntrack: no reply with sequence number {} among {REPLIES_READ} messages",
            self.seq
        )))
    }
}

/// How many messages a lookup reads before giving up on its reply (each earlier lookup whose
/// receive failed leaves at most one stale reply; a give-up still reads past this many).
const REPLIES_READ: usize = 8;

/// The sequence number of a netlink message (its header's `nlmsg_seq`).
fn message_seq(msg: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(msg.get(8..12)?.try_into().ok()?))
}

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn nested(out: &mut Vec<u8>, kind: u16, build: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    build(&mut inner);
    attr(out, kind | NLA_F_NESTED, &inner);
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => flowwatch_common::IPPROTO_TCP,
        Protocol::Udp => flowwatch_common::IPPROTO_UDP,
        Protocol::Sctp => flowwatch_common::IPPROTO_SCTP,
    }
}

/// The GET request for the entry whose original tuple is `flow`.
fn encode_get(flow: &FlowKey, seq: u32) -> Vec<u8> {
    let family = if flow.src.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    let mut attrs = Vec::new();
    nested(&mut attrs, CTA_TUPLE_ORIG, |t| {
        nested(t, CTA_TUPLE_IP, |ip| match (flow.src.ip(), flow.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                attr(ip, CTA_IP_V4_SRC, &s.octets());
                attr(ip, CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                attr(ip, CTA_IP_V6_SRC, &v6(s).octets());
                attr(ip, CTA_IP_V6_DST, &v6(d).octets());
            }
        });
        nested(t, CTA_TUPLE_PROTO, |p| {
            attr(p, CTA_PROTO_NUM, &[proto_number(flow.protocol)]);
            attr(p, CTA_PROTO_SRC_PORT, &flow.src.port().to_be_bytes());
            attr(p, CTA_PROTO_DST_PORT, &flow.dst.port().to_be_bytes());
        });
    });
    let mut msg = Vec::with_capacity(20 + attrs.len());
    let len = (16 + 4 + attrs.len()) as u32;
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg: family, version, res_id
    msg.extend_from_slice(&attrs);
    msg
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Attributes of a netlink payload: (type without flags, payload).
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & !NLA_F_NESTED & 0x7fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[((len + 3) & !3).min(data.len())..];
        Some((kind, payload))
    })
}

fn find(data: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(data).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

/// The source of the reply tuple of a conntrack entry message; `None` for an error message,
/// a missing entry or anything malformed.
pub(crate) fn decode_reply(msg: &[u8]) -> Option<SocketAddr> {
    if msg.len() < 20 {
        return None;
    }
    let len = (u32::from_ne_bytes(msg[0..4].try_into().ok()?) as usize).min(msg.len());
    let kind = u16::from_ne_bytes([msg[4], msg[5]]);
    if kind == NLMSG_ERROR || len < 20 {
        return None;
    }
    let reply = find(&msg[20..len], CTA_TUPLE_REPLY)?;
    let ip = find(reply, CTA_TUPLE_IP)?;
    let proto = find(reply, CTA_TUPLE_PROTO)?;
    let src_ip = match (find(ip, CTA_IP_V4_SRC), find(ip, CTA_IP_V6_SRC)) {
        (Some(v4), _) if v4.len() == 4 => IpAddr::V4(Ipv4Addr::new(v4[0], v4[1], v4[2], v4[3])),
        (_, Some(v6)) if v6.len() == 16 => {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v6).ok()?)).to_canonical()
        }
        _ => return None,
    };
    let port = find(proto, CTA_PROTO_SRC_PORT)?;
    let port = u16::from_be_bytes(port.get(..2)?.try_into().ok()?);
    Some(SocketAddr::new(src_ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FlowKey {
        FlowKey {
            src: "10.0.0.5:41000".parse().unwrap(),
            dst: "10.96.0.10:80".parse().unwrap(),
            protocol: Protocol::Tcp,
        }
    }

    /// A conntrack entry message as the kernel sends it, built with the same encoder.
    fn entry(reply_src: SocketAddr) -> Vec<u8> {
        let mut attrs = Vec::new();
        nested(&mut attrs, CTA_TUPLE_REPLY, |t| {
            nested(t, CTA_TUPLE_IP, |ip| {
                if let IpAddr::V4(s) = reply_src.ip() {
                    attr(ip, CTA_IP_V4_SRC, &s.octets());
                    attr(ip, CTA_IP_V4_DST, &[10, 0, 0, 5]);
                }
            });
            nested(t, CTA_TUPLE_PROTO, |p| {
                attr(p, CTA_PROTO_NUM, &[6]);
                attr(p, CTA_PROTO_SRC_PORT, &reply_src.port().to_be_bytes());
                attr(p, CTA_PROTO_DST_PORT, &41000u16.to_be_bytes());
            });
        });
        let mut msg = encode_get(&key(), 1)[..20].to_vec();
        msg.extend_from_slice(&attrs);
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg
    }

    #[test]
    fn the_reply_tuple_names_the_backend() {
        let backend: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        assert_eq!(decode_reply(&entry(backend)), Some(backend));
    }

    #[test]
    fn request_carries_the_original_tuple() {
        let msg = encode_get(&key(), 7);
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize,
            msg.len()
        );
        let orig = find(&msg[20..], CTA_TUPLE_ORIG).unwrap();
        let ip = find(orig, CTA_TUPLE_IP).unwrap();
        assert_eq!(find(ip, CTA_IP_V4_DST), Some(&[10u8, 96, 0, 10][..]));
        let proto = find(orig, CTA_TUPLE_PROTO).unwrap();
        assert_eq!(
            find(proto, CTA_PROTO_DST_PORT),
            Some(&80u16.to_be_bytes()[..])
        );
    }

    #[test]
    fn garbage_and_errors_are_none_not_panics() {
        assert_eq!(decode_reply(&[]), None);
        assert_eq!(decode_reply(&[0xff; 64]), None);
        let mut err = entry("10.1.2.3:8080".parse().unwrap());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(decode_reply(&err), None);
        let full = entry("10.1.2.3:8080".parse().unwrap());
        for cut in 0..full.len() {
            let _ = decode_reply(&full[..cut]);
        }
    }

    #[test]
    fn a_reply_is_matched_to_its_request_by_sequence_number() {
        let flow = FlowKey {
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.96.0.10:80".parse().unwrap(),
            protocol: Protocol::Tcp,
        };
        assert_eq!(message_seq(&encode_get(&flow, 77)), Some(77));
        assert_eq!(message_seq(&[0u8; 11]), None);
    }
}
