//! The kernel↔userspace contract of flowwatch.
//!
//! Everything here is `#[repr(C)]`, fixed-width and padded explicitly, because the same bytes
//! are written by the eBPF programs and read by the agent. Rich types (`IpAddr`, enums) live
//! in the agent; this crate stays `no_std` and dumb on purpose.
#![no_std]

use core::mem::size_of;

/// Per-CPU hash of flows, keyed by [`FlowKey`], valued by [`FlowCounters`].
pub const FLOWS_MAP: &str = "FLOWS";
/// Ring buffer of [`FlowEvent`]s that must not wait for the next map drain.
pub const EVENTS_MAP: &str = "EVENTS";
/// Per-CPU array of loss and health counters, indexed by the `STAT_*` constants.
pub const STATS_MAP: &str = "STATS";
/// Hash of the ifindexes the agent attached to; see [`MONITORED_MAP`] use in the TC program.
pub const MONITORED_MAP: &str = "MONITORED";

/// A read-only `u8` global of the object: non-zero makes every program return at once (for
/// benchmarks that measure the hooks' own cost).
pub const NULL_DATAPATH_GLOBAL: &str = "NULL_DATAPATH";

/// A read-only `u64` global of the object: the events ring buffer's fill, in bytes, from which
/// an event wakes the agent's reader (half the ring, set at load).
pub const EVENTS_WAKEUP_GLOBAL: &str = "EVENTS_WAKEUP_BYTES";

/// Program names, as the agent looks them up in the object.
pub const PROG_TCP_STATE: &str = "tcp_state";
pub const PROG_TC_INGRESS: &str = "tc_ingress";
pub const PROG_TC_EGRESS: &str = "tc_egress";

/// Default capacity of the flow map; the agent may override it at load time.
pub const DEFAULT_FLOWS_MAX_ENTRIES: u32 = 65_536;
/// Default ring buffer size in bytes (a power of two, a multiple of the page size).
pub const DEFAULT_EVENTS_BYTES: u32 = 4 * 1024 * 1024;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// STATS index: an event of the TC programs (a new UDP/SCTP flow) was dropped because the ring
/// buffer was full.
pub const STAT_RINGBUF_FULL: u32 = 0;
/// STATS index: a packet was not counted because its flow was not in the flow map and could
/// not be inserted (map full). Every packet of such a flow tries again and counts here.
pub const STAT_FLOWS_MAP_FULL: u32 = 1;
/// STATS index: a packet was too short for the headers it announced (not a loss of flows).
pub const STAT_TRUNCATED: u32 = 2;
/// STATS index: packets (skbs: a GSO super-packet is one) the TC programs counted, for overhead
/// and sanity checks; flows count segments.
pub const STAT_PACKETS: u32 = 3;
/// STATS index: a packet that no flow can be given: a fragment after the first (IPv4, or IPv6
/// behind a fragment header) of TCP, UDP or SCTP, which has no ports; or IPv6 whose extension
/// headers the TC program does not walk through (deeper than four, or a rare kind).
pub const STAT_UNATTRIBUTED: u32 = 4;
/// STATS index: a socket event (tracepoint) was dropped because the ring buffer was full. Apart
/// from the TC programs' slot because the tracepoint also fires in process context (connect,
/// close), where a TC program in a softirq can interrupt it on the same CPU: one slot would
/// lose increments. (A tracepoint program never runs inside another, and TC never inside the
/// tracepoint, so each slot has one writer at a time per CPU.)
pub const STAT_RINGBUF_FULL_SOCKET: u32 = 5;
pub const STATS_LEN: u32 = 6;

/// TCP flag bits, as OR-ed into [`FlowCounters::fwd_tcp_flags`] / `rev_tcp_flags`.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A flow, oriented from its initiator to its responder.
///
/// IPv4 addresses use the first four bytes of the 16-byte fields; the rest stays zero so the
/// key hashes the same wherever it was built. Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub family: u8,
    pub padding: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The same flow seen from the other end.
    #[inline]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
            protocol: self.protocol,
            family: self.family,
            padding: [0; 2],
        }
    }
}

/// Per-CPU packet and byte counters of one flow. `fwd` is initiator→responder.
/// The agent sums the CPUs; timestamps are `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC, behind
/// the precise clock by at most one tick: cheaper on every packet).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowCounters {
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    pub rev_packets: u64,
    pub rev_bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub fwd_tcp_flags: u8,
    pub rev_tcp_flags: u8,
    pub padding: [u8; 6],
}
const _: () = assert!(size_of::<FlowCounters>() == 56);

/// What a [`FlowEvent`] reports.
/// Client sent a SYN. Not emitted by the current programs (the source port is not assigned yet
/// at CLOSE -> SYN_SENT); kept so the numbering stays stable.
pub const EVENT_TCP_CONNECT: u8 = 1;
pub const EVENT_TCP_ESTABLISHED: u8 = 2; // handshake completed, at `role`'s end
pub const EVENT_TCP_FAILED: u8 = 3; // SYN_SENT/SYN_RECV -> CLOSE: the attempt never became established
pub const EVENT_TCP_CLOSED: u8 = 4; // an established connection reached CLOSE
pub const EVENT_NEW_FLOW: u8 = 5; // the TC programs saw the first packet of a flow

/// Which end of the connection the kernel saw the event at.
pub const ROLE_CLIENT: u8 = 1;
pub const ROLE_SERVER: u8 = 2;
/// Seen on the wire (TC), not at a socket.
pub const ROLE_WIRE: u8 = 3;

/// One ring-buffer record. `key` is oriented initiator→responder.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    pub key: FlowKey,
    pub timestamp_ns: u64,
    pub kind: u8,
    pub role: u8,
    pub old_state: u8,
    pub new_state: u8,
    pub padding: [u8; 4],
}
const _: () = assert!(size_of::<FlowEvent>() == 56);

/// The record of the `sock/inet_sock_set_state` tracepoint, as the `tcp_state` program reads
/// it: byte offsets of its fields (a stable tracepoint ABI; the agent checks them against
/// `/sys/kernel/tracing/events/sock/inet_sock_set_state/format` before attaching).
pub mod inet_sock_set_state {
    /// `int`: the TCP state before and after the change ([`super::tcp_state`]).
    pub const OLDSTATE: usize = 16;
    pub const NEWSTATE: usize = 20;
    /// `__u16`, host byte order: the socket's local and remote ports.
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    /// `__u16`: AF_INET or AF_INET6.
    pub const FAMILY: usize = 28;
    /// `__u16`: IPPROTO_TCP for TCP sockets.
    pub const PROTOCOL: usize = 30;
    /// `__u8[4]`: the IPv4 addresses (local, remote).
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 36;
    /// `__u8[16]`: the IPv6 addresses (local, remote).
    pub const SADDR_V6: usize = 40;
    pub const DADDR_V6: usize = 56;

    /// Every field the program reads, by its name in the format file.
    pub const FIELDS: [(&str, usize); 10] = [
        ("oldstate", OLDSTATE),
        ("newstate", NEWSTATE),
        ("sport", SPORT),
        ("dport", DPORT),
        ("family", FAMILY),
        ("protocol", PROTOCOL),
        ("saddr", SADDR),
        ("daddr", DADDR),
        ("saddr_v6", SADDR_V6),
        ("daddr_v6", DADDR_V6),
    ];
}

/// TCP states, as numbered by the kernel's `inet_sock_set_state` tracepoint.
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const CLOSE: i32 = 7;
    pub const LISTEN: i32 = 10;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), every bit pattern valid, explicit padding.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowCounters {}
    unsafe impl aya::Pod for super::FlowEvent {}
}
