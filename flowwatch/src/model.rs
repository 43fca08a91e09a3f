//! The flow model: what one connection between two endpoints looks like to the agent (pure).
//!
//! Times are kernel monotonic nanoseconds (CLOCK_MONOTONIC: socket events precise, packets at
//! tick resolution), so the kernel's timestamps and the agent's `now` compare directly; the flow
//! log converts them to wall-clock.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

/// Monotonic nanoseconds since boot.
pub type Nanos = u64;

/// A hash map keyed by flows (or their parts). The keys come from the network, so the hasher
/// must stay keyed against collision attacks; ahash's random state does that at a fraction of
/// the default SipHash's cost, which showed in profiles of the agent under load.
pub type FlowHashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// A transport protocol flowwatch tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn from_ip_number(n: u8) -> Option<Protocol> {
        match n {
            flowwatch_common::IPPROTO_TCP => Some(Protocol::Tcp),
            flowwatch_common::IPPROTO_UDP => Some(Protocol::Udp),
            flowwatch_common::IPPROTO_SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The name Kubernetes uses (`TCP`, `UDP`, `SCTP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(format!(
                "unknown protocol {s:?} (expected TCP, UDP or SCTP)"
            )),
        }
    }
}

/// A flow's identity, oriented from its initiator (`src`) to its responder (`dst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub protocol: Protocol,
}

impl FlowKey {
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            protocol: self.protocol,
        }
    }

    /// Converts the kernel's key. IPv4-mapped IPv6 addresses (a dual-stack socket talking IPv4)
    /// become plain IPv4 so the socket's view and the wire's view of a flow meet.
    pub fn from_kernel(key: &flowwatch_common::FlowKey) -> Result<FlowKey, KernelDataError> {
        let protocol = Protocol::from_ip_number(key.protocol)
            .ok_or(KernelDataError::Protocol(key.protocol))?;
        let (src, dst) = match key.family {
            flowwatch_common::AF_INET => (v4(&key.src_addr), v4(&key.dst_addr)),
            flowwatch_common::AF_INET6 => (
                IpAddr::V6(Ipv6Addr::from(key.src_addr)).to_canonical(),
                IpAddr::V6(Ipv6Addr::from(key.dst_addr)).to_canonical(),
            ),
            other => return Err(KernelDataError::Family(other)),
        };
        Ok(FlowKey {
            src: SocketAddr::new(src, key.src_port),
            dst: SocketAddr::new(dst, key.dst_port),
            protocol,
        })
    }

    /// The kernel's key for this flow (the inverse of [`FlowKey::from_kernel`]).
    pub fn to_kernel(&self) -> flowwatch_common::FlowKey {
        let mut key = flowwatch_common::FlowKey {
            src_port: self.src.port(),
            dst_port: self.dst.port(),
            protocol: match self.protocol {
                Protocol::Tcp => flowwatch_common::IPPROTO_TCP,
                Protocol::Udp => flowwatch_common::IPPROTO_UDP,
                Protocol::Sctp => flowwatch_common::IPPROTO_SCTP,
            },
            ..Default::default()
        };
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                key.family = flowwatch_common::AF_INET;
                key.src_addr[..4].copy_from_slice(&s.octets());
                key.dst_addr[..4].copy_from_slice(&d.octets());
            }
            (s, d) => {
                key.family = flowwatch_common::AF_INET6;
                key.src_addr = to_v6(s).octets();
                key.dst_addr = to_v6(d).octets();
            }
        }
        key
    }
}

fn v4(bytes: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.protocol, self.src, self.dst)
    }
}

/// Kernel data the agent cannot interpret (a newer kernel program, a corrupted record).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelDataError {
    #[error("unknown IP protocol number {0}")]
    Protocol(u8),
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("unknown event kind {0}")]
    EventKind(u8),
    #[error("record of {got} bytes, expected {expected}")]
    Size { got: usize, expected: usize },
}

/// How a flow ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Started, no answer yet.
    Pending,
    /// TCP handshake completed; UDP/SCTP got an answer.
    Established,
    /// TCP attempt that never became established: refused, reset, timed out or dropped.
    Failed,
    /// UDP/SCTP that never got a packet back.
    Unanswered,
    /// TCP seen only after its handshake, with no socket of it on this node: a connection
    /// already open when the agent started, or the last packets of one whose record was already
    /// finished. Its traffic counts; it is not counted as a new connection.
    Midstream,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Established => "established",
            Outcome::Failed => "failed",
            Outcome::Unanswered => "unanswered",
            Outcome::Midstream => "midstream",
        }
    }
}

/// Packets and bytes (at the IP layer) in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// initiator -> responder
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    /// responder -> initiator
    pub rev_packets: u64,
    pub rev_bytes: u64,
}

impl Counters {
    pub fn reversed(&self) -> Counters {
        Counters {
            fwd_packets: self.rev_packets,
            fwd_bytes: self.rev_bytes,
            rev_packets: self.fwd_packets,
            rev_bytes: self.fwd_bytes,
        }
    }

    /// What `self` has beyond `earlier` (a later cumulative total minus an earlier one).
    pub fn saturating_sub(&self, earlier: Counters) -> Counters {
        Counters {
            fwd_packets: self.fwd_packets.saturating_sub(earlier.fwd_packets),
            fwd_bytes: self.fwd_bytes.saturating_sub(earlier.fwd_bytes),
            rev_packets: self.rev_packets.saturating_sub(earlier.rev_packets),
            rev_bytes: self.rev_bytes.saturating_sub(earlier.rev_bytes),
        }
    }

    /// Both counts added (of two kernel entries of one flow).
    pub fn saturating_add(&self, other: Counters) -> Counters {
        Counters {
            fwd_packets: self.fwd_packets.saturating_add(other.fwd_packets),
            fwd_bytes: self.fwd_bytes.saturating_add(other.fwd_bytes),
            rev_packets: self.rev_packets.saturating_add(other.rev_packets),
            rev_bytes: self.rev_bytes.saturating_add(other.rev_bytes),
        }
    }
}

/// What a kernel event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Client sent a SYN.
    TcpConnect,
    /// Handshake completed at the given role's end.
    TcpEstablished,
    /// The attempt ended before it was established.
    TcpFailed,
    /// A socket of the connection closed (orientation unknown).
    TcpClosed,
    /// The wire saw the first packet of a UDP/SCTP flow.
    NewFlow,
}

/// Where the kernel saw an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
    Wire,
    Unknown,
}

/// One thing the kernel told the agent, in agent types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// A ring-buffer event. `key` is oriented initiator->responder, except for
    /// `TcpClosed` (role `Unknown`), which carries the closing socket's local->remote view.
    Event {
        key: FlowKey,
        kind: EventKind,
        role: Role,
        at: Nanos,
    },
    /// Cumulative totals of a kernel flow-map entry, summed over CPUs.
    Totals {
        key: FlowKey,
        counters: Counters,
        first_seen: Nanos,
        last_seen: Nanos,
        /// TCP flags seen initiator->responder and back (see `flowwatch_common::TCP_*`).
        fwd_tcp_flags: u8,
        rev_tcp_flags: u8,
    },
}

impl Observation {
    /// Converts a ring-buffer event from the kernel.
    pub fn from_kernel_event(e: &flowwatch_common::FlowEvent) -> Result<Self, KernelDataError> {
        use flowwatch_common as c;
        let kind = match e.kind {
            c::EVENT_TCP_CONNECT => EventKind::TcpConnect,
            c::EVENT_TCP_ESTABLISHED => EventKind::TcpEstablished,
            c::EVENT_TCP_FAILED => EventKind::TcpFailed,
            c::EVENT_TCP_CLOSED => EventKind::TcpClosed,
            c::EVENT_NEW_FLOW => EventKind::NewFlow,
            other => return Err(KernelDataError::EventKind(other)),
        };
        let role = match e.role {
            c::ROLE_CLIENT => Role::Client,
            c::ROLE_SERVER => Role::Server,
            c::ROLE_WIRE => Role::Wire,
            _ => Role::Unknown,
        };
        Ok(Observation::Event {
            key: FlowKey::from_kernel(&e.key)?,
            kind,
            role,
            at: e.timestamp_ns,
        })
    }

    /// Converts a flow-map entry: the per-CPU values are summed.
    pub fn from_kernel_totals(
        key: &flowwatch_common::FlowKey,
        per_cpu: &[flowwatch_common::FlowCounters],
    ) -> Result<Self, KernelDataError> {
        let mut counters = Counters::default();
        let (mut first, mut last, mut fwd_flags, mut rev_flags) = (u64::MAX, 0u64, 0u8, 0u8);
        for c in per_cpu {
            counters.fwd_packets += c.fwd_packets;
            counters.fwd_bytes += c.fwd_bytes;
            counters.rev_packets += c.rev_packets;
            counters.rev_bytes += c.rev_bytes;
            if c.first_seen_ns != 0 {
                first = first.min(c.first_seen_ns);
            }
            last = last.max(c.last_seen_ns);
            fwd_flags |= c.fwd_tcp_flags;
            rev_flags |= c.rev_tcp_flags;
        }
        Ok(Observation::Totals {
            key: FlowKey::from_kernel(key)?,
            counters,
            first_seen: if first == u64::MAX { last } else { first },
            last_seen: last,
            fwd_tcp_flags: fwd_flags,
            rev_tcp_flags: rev_flags,
        })
    }
}

/// One flow as the agent knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub key: FlowKey,
    pub first_seen: Nanos,
    pub last_seen: Nanos,
    pub outcome: Outcome,
    /// The initiator's socket was seen on this node (TCP).
    pub seen_at_client: bool,
    /// The responder's socket was seen on this node (TCP).
    pub seen_at_server: bool,
    /// Every local socket of the connection has closed (TCP).
    pub closed: bool,
    pub counters: Counters,
    pub fwd_tcp_flags: u8,
    pub rev_tcp_flags: u8,
    /// Local sockets still open (TCP): established ends minus closed ends.
    pub(crate) open_sockets: u8,
    /// The key of the kernel flow-map entry (its orientation may differ from `key`), once the
    /// wire has seen the flow.
    pub(crate) kernel_key: Option<FlowKey>,
    /// The kernel entry of its answers when the node's NAT translated them (a datagram flow
    /// to a Service whose backend is on this node: see `aggregate`).
    pub(crate) reply_kernel_key: Option<FlowKey>,
}

impl Flow {
    /// The key of this flow's kernel flow-map entry, if the wire has seen it.
    pub fn kernel_key(&self) -> Option<FlowKey> {
        self.kernel_key
    }

    /// Every kernel flow-map entry this flow accounts for (to free when it is reported).
    pub fn kernel_keys(&self) -> impl Iterator<Item = FlowKey> {
        self.kernel_key.into_iter().chain(self.reply_kernel_key)
    }

    pub fn new(key: FlowKey, at: Nanos) -> Flow {
        Flow {
            key,
            first_seen: at,
            last_seen: at,
            outcome: Outcome::Pending,
            seen_at_client: false,
            seen_at_server: false,
            closed: false,
            counters: Counters::default(),
            fwd_tcp_flags: 0,
            rev_tcp_flags: 0,
            open_sockets: 0,
            kernel_key: None,
            reply_kernel_key: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_key_round_trips_for_v4_and_v6() {
        for (s, d) in [
            ("10.1.2.3:40000", "10.1.2.4:80"),
            ("[fd00::1]:40000", "[fd00::2]:443"),
        ] {
            let key = FlowKey {
                src: s.parse().unwrap(),
                dst: d.parse().unwrap(),
                protocol: Protocol::Udp,
            };
            assert_eq!(FlowKey::from_kernel(&key.to_kernel()), Ok(key));
        }
    }

    #[test]
    fn v4_mapped_addresses_become_v4() {
        let mut k = flowwatch_common::FlowKey {
            family: flowwatch_common::AF_INET6,
            protocol: flowwatch_common::IPPROTO_TCP,
            src_port: 1,
            dst_port: 2,
            ..Default::default()
        };
        k.src_addr = "::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets();
        k.dst_addr = "::ffff:10.0.0.2".parse::<Ipv6Addr>().unwrap().octets();
        let key = FlowKey::from_kernel(&k).unwrap();
        assert_eq!(key.src, "10.0.0.1:1".parse().unwrap());
        assert_eq!(key.dst, "10.0.0.2:2".parse().unwrap());
    }

    #[test]
    fn unknown_protocol_and_family_are_errors_not_panics() {
        let mut k = flowwatch_common::FlowKey {
            family: flowwatch_common::AF_INET,
            protocol: 1,
            ..Default::default()
        };
        assert_eq!(FlowKey::from_kernel(&k), Err(KernelDataError::Protocol(1)));
        k.protocol = flowwatch_common::IPPROTO_TCP;
        k.family = 99;
        assert_eq!(FlowKey::from_kernel(&k), Err(KernelDataError::Family(99)));
    }

    #[test]
    fn totals_sum_cpus_and_take_earliest_first_seen() {
        let key = flowwatch_common::FlowKey {
            family: flowwatch_common::AF_INET,
            protocol: flowwatch_common::IPPROTO_UDP,
            ..Default::default()
        };
        let cpu = |p, first, last| flowwatch_common::FlowCounters {
            fwd_packets: p,
            fwd_bytes: p * 100,
            rev_packets: 1,
            rev_bytes: 10,
            first_seen_ns: first,
            last_seen_ns: last,
            ..Default::default()
        };
        let obs =
            Observation::from_kernel_totals(&key, &[cpu(2, 50, 60), cpu(0, 0, 0), cpu(3, 40, 90)])
                .unwrap();
        match obs {
            Observation::Totals {
                counters,
                first_seen,
                last_seen,
                ..
            } => {
                assert_eq!(counters.fwd_packets, 5);
                assert_eq!(counters.fwd_bytes, 500);
                assert_eq!(counters.rev_packets, 3);
                assert_eq!((first_seen, last_seen), (40, 90));
            }
            other @ Observation::Event { .. } => panic!("unexpected {other:?}"),
        }
    }
}
