//! flowwatch's kernel programs.
//!
//! * `tcp_state` (tracepoint `sock/inet_sock_set_state`): the socket's view of every TCP
//!   connection — who initiated it, whether the handshake completed or failed, when it closed.
//!   It runs a handful of times per connection, never per packet, and only writes ring-buffer
//!   events for the transitions that matter.
//! * `tc_ingress` / `tc_egress` (TC, attached with tcx to the host end of each pod's veth):
//!   packets and bytes per flow in both directions, aggregated in a per-CPU hash so the agent
//!   drains them on its own schedule instead of waking per packet.
//!
//! Every packet between two local pods crosses two pod interfaces. It is counted once: always
//! when it leaves a pod (ingress of the host-side veth), and when it enters a pod only if it did
//! not come from another monitored interface (the `MONITORED` set of ifindexes).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_UNSPEC,
    },
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{classifier, map, tracepoint},
    maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{TcContext, TracePointContext},
    EbpfContext,
};
// Offsets in the tracepoint record: shared with the agent, which checks them against the
// kernel's format file before attaching.
use flowwatch_common::inet_sock_set_state as tp;
use flowwatch_common::{
    tcp_state, FlowCounters, FlowEvent, FlowKey, AF_INET, AF_INET6, DEFAULT_EVENTS_BYTES,
    DEFAULT_FLOWS_MAX_ENTRIES, EVENT_NEW_FLOW, EVENT_TCP_CLOSED, EVENT_TCP_ESTABLISHED,
    EVENT_TCP_FAILED, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, ROLE_CLIENT, ROLE_SERVER, ROLE_WIRE,
    STATS_LEN, STAT_FLOWS_MAP_FULL, STAT_PACKETS, STAT_RINGBUF_FULL, STAT_RINGBUF_FULL_SOCKET,
    STAT_TRUNCATED, STAT_UNATTRIBUTED, TCP_ACK, TCP_SYN,
};

#[map(name = "FLOWS")]
static FLOWS: PerCpuHashMap<FlowKey, FlowCounters> =
    PerCpuHashMap::with_max_entries(DEFAULT_FLOWS_MAX_ENTRIES, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_EVENTS_BYTES, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

#[map(name = "MONITORED")]
static MONITORED: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

const EEXIST: i32 = 17;

/// Set by the agent's hidden `--benchmark-null-datapath` flag: every program returns at once,
/// so a benchmark can measure what the hooks themselves cost. A read-only global, so the
/// verifier sees it as a constant and drops the branch not taken: free in normal runs.
#[unsafe(no_mangle)]
static NULL_DATAPATH: u8 = 0;

/// Fill of the events ring buffer (bytes not yet read) from which an event wakes the agent's
/// reader; set at load to half the ring's size. Below it events are submitted silently and the
/// reader comes by on its timer, so a steady flow costs no wakeups; a burst that would fill the
/// ring before the timer gets the reader at once.
#[unsafe(no_mangle)]
static EVENTS_WAKEUP_BYTES: u64 = DEFAULT_EVENTS_BYTES as u64 / 2;

#[inline(always)]
fn null_datapath() -> bool {
    // SAFETY: a plain read of a global; volatile so the compiler cannot fold the default.
    unsafe { core::ptr::read_volatile(&NULL_DATAPATH) != 0 }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot. The TC programs and the tracepoint bump different slots (see
        // STAT_RINGBUF_FULL_SOCKET), and neither nests inside itself on a CPU, so no program
        // interrupts another's increment of the same slot.
        unsafe { *counter += 1 };
    }
}

/// Emits an event; when the ring is full, bumps `full_slot` (the caller's context's slot).
#[inline(always)]
fn emit(key: &FlowKey, kind: u8, role: u8, old_state: u8, new_state: u8, now: u64, full_slot: u32) {
    match EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            entry.write(FlowEvent {
                key: *key,
                timestamp_ns: now,
                kind,
                role,
                old_state,
                new_state,
                padding: [0; 4],
            });
            // The agent's reader drains the ring buffer on a timer, not on wakeups: skip the
            // notification and its irq_work on every event, unless the ring is filling up.
            // SAFETY: a plain read of a read-only global.
            let wakeup_at = unsafe { core::ptr::read_volatile(&EVENTS_WAKEUP_BYTES) };
            let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= wakeup_at {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(flags as u64);
        }
        None => bump(full_slot),
    }
}

// ---------------------------------------------------------------------------------------------
// TCP socket states
// ---------------------------------------------------------------------------------------------

#[tracepoint]
pub fn tcp_state(ctx: TracePointContext) -> u32 {
    if null_datapath() {
        return 0;
    }
    let _ = try_tcp_state(&ctx);
    0
}

/// Reads a field of the tracepoint record. Tracepoint programs may load from their context
/// directly (the verifier checks the offset against the record), which is much cheaper than
/// a bpf_probe_read helper call on this path that runs for every TCP state change of the node.
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: offsets and sizes come from the tracepoint's format, verified by the agent
    // against /sys/kernel/tracing/events/sock/inet_sock_set_state/format before attaching.
    // Volatile: one load at a constant offset from the context per field. The verifier rejects
    // loads through a context pointer the compiler has advanced (as it does to copy arrays).
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// A 16-byte address field, as two 8-byte loads.
#[inline(always)]
fn addr16(ctx: &TracePointContext, offset: usize) -> [u8; 16] {
    let (hi, lo): (u64, u64) = (field(ctx, offset), field(ctx, offset + 8));
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_ne_bytes());
    out[8..].copy_from_slice(&lo.to_ne_bytes());
    out
}

fn try_tcp_state(ctx: &TracePointContext) -> Result<(), i32> {
    let protocol: u16 = field(ctx, tp::PROTOCOL);
    if protocol != IPPROTO_TCP as u16 {
        return Ok(());
    }
    let (old, new): (i32, i32) = (field(ctx, tp::OLDSTATE), field(ctx, tp::NEWSTATE));
    let (kind, role) = match (old, new) {
        // CLOSE -> SYN_SENT is not reported: the kernel picks the source port after it, so the
        // event would carry port 0. The wire sees the SYN; the outcome events carry the port.
        (tcp_state::SYN_SENT, tcp_state::ESTABLISHED) => (EVENT_TCP_ESTABLISHED, ROLE_CLIENT),
        (tcp_state::SYN_RECV, tcp_state::ESTABLISHED) => (EVENT_TCP_ESTABLISHED, ROLE_SERVER),
        (tcp_state::SYN_SENT, tcp_state::CLOSE) => (EVENT_TCP_FAILED, ROLE_CLIENT),
        (tcp_state::SYN_RECV, tcp_state::CLOSE) => (EVENT_TCP_FAILED, ROLE_SERVER),
        // A listener closing is no connection (its event would carry no peer).
        (tcp_state::LISTEN, tcp_state::CLOSE) => return Ok(()),
        // Which end closes first says nothing about who initiated: the agent matches both
        // orientations for CLOSED events (role 0).
        (_, tcp_state::CLOSE) => (EVENT_TCP_CLOSED, 0),
        _ => return Ok(()),
    };

    let family: u16 = field(ctx, tp::FAMILY);
    let mut local = FlowKey {
        src_port: field(ctx, tp::SPORT),
        dst_port: field(ctx, tp::DPORT),
        protocol: IPPROTO_TCP,
        ..FlowKey::default()
    };
    if family == AF_INET as u16 {
        local.family = AF_INET;
        local.src_addr[..4].copy_from_slice(&field::<u32>(ctx, tp::SADDR).to_ne_bytes());
        local.dst_addr[..4].copy_from_slice(&field::<u32>(ctx, tp::DADDR).to_ne_bytes());
    } else if family == AF_INET6 as u16 {
        local.family = AF_INET6;
        local.src_addr = addr16(ctx, tp::SADDR_V6);
        local.dst_addr = addr16(ctx, tp::DADDR_V6);
    } else {
        return Ok(());
    }

    // Orient initiator -> responder: a server socket's local end is the responder.
    let key = if role == ROLE_SERVER {
        local.reversed()
    } else {
        local
    };
    // Tracepoint programs may not read the coarse clock (it is not NMI-safe): the precise one.
    // SAFETY: a helper call without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    emit(
        &key,
        kind,
        role,
        old as u8,
        new as u8,
        now,
        STAT_RINGBUF_FULL_SOCKET,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Packets (TC)
// ---------------------------------------------------------------------------------------------

// Header layouts: byte offsets of the fields read, from the start of their header.

/// Ethernet II (a VLAN tag, if any, is in the skb's metadata on a veth, not in the frame).
mod eth {
    pub const ETHERTYPE: usize = 12;
    pub const LEN: usize = 14;
    pub const P_IP: u16 = 0x0800;
    pub const P_IPV6: u16 = 0x86DD;
}

/// IPv4 (RFC 791).
mod ipv4 {
    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub const VERSION_IHL: usize = 0;
    pub const TOTAL_LEN: usize = 2;
    /// Flags (3 bits) and fragment offset (13 bits).
    pub const FRAG: usize = 6;
    pub const FRAG_OFFSET_MASK: u16 = 0x1fff;
    pub const PROTOCOL: usize = 9;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    /// A header without options.
    pub const MIN_LEN: usize = 20;

    /// The header's length in bytes.
    #[inline(always)]
    pub fn header_len(version_ihl: u8) -> usize {
        ((version_ihl & 0x0f) as usize) * 4
    }
}

/// IPv6 (RFC 8200) and the extension headers the parser walks.
mod ipv6 {
    /// After version, traffic class and flow label.
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
    pub const LEN: usize = 40;

    /// Extension headers that may precede a transport header.
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTHENTICATION: u8 = 51;
    pub const DESTINATION_OPTIONS: u8 = 60;
    /// Extension headers the walk does not follow (RFC 7045's list: Mobility, HIP, Shim6).
    pub const MOBILITY: u8 = 135;
    pub const HIP: u8 = 139;
    pub const SHIM6: u8 = 140;

    /// Every extension header starts with the next header's protocol and (but the fragment
    /// header) its own length.
    pub const EXT_NEXT_HEADER: usize = 0;
    pub const EXT_LEN: usize = 1;
    /// The fragment header: its offset (13 bits) and flags, and its fixed length.
    pub const FRAGMENT_OFFSET: usize = 2;
    pub const FRAGMENT_OFFSET_MASK: u16 = 0xfff8;
    pub const FRAGMENT_LEN: usize = 8;

    /// Hop-by-hop, routing and destination options: the length field counts 8-byte units
    /// after the first.
    #[inline(always)]
    pub fn options_header_len(ext_len: u8) -> usize {
        (ext_len as usize + 1) * 8
    }

    /// The authentication header: its length field counts 4-byte units, minus 2 (RFC 4302).
    #[inline(always)]
    pub fn authentication_header_len(ext_len: u8) -> usize {
        (ext_len as usize + 2) * 4
    }
}

/// Transport headers: TCP, UDP and SCTP all start with the source and destination port.
mod l4 {
    pub const PORTS: usize = 0;
    pub const UDP_LEN: usize = 8;
    /// SCTP's common header (the chunks follow).
    pub const SCTP_COMMON_LEN: usize = 12;
    /// TCP: data offset (high nibble: header length in 32-bit words), then the flags.
    pub const TCP_DATA_OFFSET: usize = 12;
    pub const TCP_FLAGS: usize = 13;

    /// A TCP header's length in bytes.
    #[inline(always)]
    pub fn tcp_header_len(data_offset: u8) -> usize {
        ((data_offset >> 4) as usize) * 4
    }
}

/// Where the network header starts in the frame.
const L3: usize = eth::LEN;
/// Where the transport header starts behind an option-less IPv4 header, and a plain IPv6 one.
const L4_AFTER_IPV4: usize = L3 + ipv4::MIN_LEN;
const L4_AFTER_IPV6: usize = L3 + ipv6::LEN;
/// How many extension headers are followed before giving up (bounded for the verifier).
const IPV6_EXTENSION_HEADERS_WALKED: usize = 4;

fn is_tracked(protocol: u8) -> bool {
    matches!(protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
}

/// The extension headers the walk follows.
fn is_ipv6_extension(protocol: u8) -> bool {
    matches!(
        protocol,
        ipv6::HOP_BY_HOP
            | ipv6::ROUTING
            | ipv6::FRAGMENT
            | ipv6::DESTINATION_OPTIONS
            | ipv6::AUTHENTICATION
    )
}

/// Extension headers the walk does not follow (Mobility, HIP, Shim6: RFC 7045's list).
fn is_rare_ipv6_extension(protocol: u8) -> bool {
    matches!(protocol, ipv6::MOBILITY | ipv6::HIP | ipv6::SHIM6)
}

/// The programs' verdict: "next" (TCX_NEXT, TC_ACT_UNSPEC), never "pass". Under tcx, pass ends
/// the chain: the programs after flowwatch's and every legacy TC filter of the interface (a
/// CNI's policy enforcement among them) would be skipped. flowwatch only observes.
const OBSERVE_ONLY: i32 = TC_ACT_UNSPEC;

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    // Host-side ingress of a pod veth: the packet is leaving the pod. Always counted.
    if null_datapath() {
        return OBSERVE_ONLY;
    }
    let _ = try_count(&ctx);
    OBSERVE_ONLY
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    // Host-side egress of a pod veth: the packet is entering the pod. Skip it if it came from
    // another monitored pod interface, where tc_ingress already counted it.
    if null_datapath() {
        return OBSERVE_ONLY;
    }
    // SAFETY: reading a field of the context the kernel handed us.
    let came_from = unsafe { (*ctx.skb.skb).ingress_ifindex };
    if came_from == 0 || MONITORED.get_ptr(came_from).is_none() {
        let _ = try_count(&ctx);
    }
    OBSERVE_ONLY
}

/// The parsed headers of one packet.
struct Packet {
    key: FlowKey,
    /// Segments on the wire: a GSO super-packet (which veths carry unsplit) is many.
    segments: u64,
    /// IP-layer bytes of all its segments, each with its own headers.
    ip_len: u64,
    tcp_flags: u8,
}

fn try_count(ctx: &TcContext) -> Result<(), i64> {
    let packet = match parse(ctx) {
        Ok(Some(packet)) => packet,
        // Not a protocol we track (ARP, ICMP, ...), or a packet no flow can be given (counted
        // as unattributed by parse).
        Ok(None) => return Ok(()),
        Err(e) => {
            bump(STAT_TRUNCATED);
            return Err(e);
        }
    };
    bump(STAT_PACKETS);
    // Packet times are CLOCK_MONOTONIC at tick resolution (at most one tick, 1-10 ms by the
    // kernel's HZ, behind the socket events' precise clock): the coarse clock reads no clock
    // source, which saves about 18 ns per packet here (`cargo xtask bench datapath`), a quarter
    // of a known flow's cost. What packet times are for (first and last seen, idle and close
    // timeouts) needs no more.
    count(&packet, unsafe { bpf_ktime_get_coarse_ns() });
    Ok(())
}

/// Reads a header field: straight from the packet when it is in the linear part (the common
/// case, no helper call), through bpf_skb_load_bytes otherwise.
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Result<T, i64> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + offset + core::mem::size_of::<T>() <= end {
        // SAFETY: bounds checked against data_end just above (the verifier checks it too).
        Ok(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
    } else {
        ctx.load(offset)
    }
}

/// One byte at `offset` of the frame.
#[inline(always)]
fn load_u8(ctx: &TcContext, offset: usize) -> Result<u8, i64> {
    read(ctx, offset)
}

/// A big-endian (network order) `u16` at `offset` of the frame, in host order.
#[inline(always)]
fn load_be16(ctx: &TcContext, offset: usize) -> Result<u16, i64> {
    Ok(u16::from_be(read::<u16>(ctx, offset)?))
}

fn parse(ctx: &TcContext) -> Result<Option<Packet>, i64> {
    let ethertype = load_be16(ctx, eth::ETHERTYPE)?;
    let mut key = FlowKey::default();
    let (l4_offset, ip_len) = match ethertype {
        eth::P_IP => {
            let ihl = ipv4::header_len(load_u8(ctx, L3 + ipv4::VERSION_IHL)?);
            let total_len = load_be16(ctx, L3 + ipv4::TOTAL_LEN)?;
            let frag = load_be16(ctx, L3 + ipv4::FRAG)?;
            key.protocol = load_u8(ctx, L3 + ipv4::PROTOCOL)?;
            key.family = AF_INET;
            let src: [u8; 4] = read(ctx, L3 + ipv4::SRC)?;
            let dst: [u8; 4] = read(ctx, L3 + ipv4::DST)?;
            key.src_addr[..4].copy_from_slice(&src);
            key.dst_addr[..4].copy_from_slice(&dst);
            if ihl < ipv4::MIN_LEN {
                return Ok(None);
            }
            if frag & ipv4::FRAG_OFFSET_MASK != 0 {
                // A non-first fragment carries no ports; it cannot be attributed to a flow.
                if is_tracked(key.protocol) {
                    bump(STAT_UNATTRIBUTED);
                }
                return Ok(None);
            }
            (L3 + ihl, total_len as u64)
        }
        eth::P_IPV6 => {
            let payload_len = load_be16(ctx, L3 + ipv6::PAYLOAD_LEN)?;
            key.protocol = load_u8(ctx, L3 + ipv6::NEXT_HEADER)?;
            key.family = AF_INET6;
            key.src_addr = read(ctx, L3 + ipv6::SRC)?;
            key.dst_addr = read(ctx, L3 + ipv6::DST)?;
            let ip_len = ipv6::LEN as u64 + payload_len as u64;
            let mut l4_offset = L3 + ipv6::LEN;
            // Extension headers (MLD's hop-by-hop, routing, destination options, fragment,
            // authentication): walked, a few deep, to the transport header. A fragment after
            // the first has no ports: counted as unattributed when it carries TCP, UDP or SCTP.
            // A chain deeper than the walk, or a rare extension header the walk does not know
            // (Mobility, HIP, Shim6), hides what it carries: counted as unattributed too.
            // Variable offsets: read through the helper (the verifier cannot follow them into
            // the packet).
            for _ in 0..IPV6_EXTENSION_HEADERS_WALKED {
                match key.protocol {
                    ipv6::HOP_BY_HOP | ipv6::ROUTING | ipv6::DESTINATION_OPTIONS => {
                        let header: [u8; 2] = ctx.load(l4_offset)?;
                        key.protocol = header[ipv6::EXT_NEXT_HEADER];
                        l4_offset += ipv6::options_header_len(header[ipv6::EXT_LEN]);
                    }
                    ipv6::AUTHENTICATION => {
                        let header: [u8; 2] = ctx.load(l4_offset)?;
                        key.protocol = header[ipv6::EXT_NEXT_HEADER];
                        l4_offset += ipv6::authentication_header_len(header[ipv6::EXT_LEN]);
                    }
                    ipv6::FRAGMENT => {
                        let header: [u8; 4] = ctx.load(l4_offset)?;
                        key.protocol = header[ipv6::EXT_NEXT_HEADER];
                        let offset = u16::from_be_bytes([
                            header[ipv6::FRAGMENT_OFFSET],
                            header[ipv6::FRAGMENT_OFFSET + 1],
                        ]);
                        if offset & ipv6::FRAGMENT_OFFSET_MASK != 0 {
                            if is_tracked(key.protocol) {
                                bump(STAT_UNATTRIBUTED);
                            }
                            return Ok(None);
                        }
                        l4_offset += ipv6::FRAGMENT_LEN;
                    }
                    _ => break,
                }
            }
            if is_ipv6_extension(key.protocol) || is_rare_ipv6_extension(key.protocol) {
                bump(STAT_UNATTRIBUTED);
                return Ok(None);
            }
            (l4_offset, ip_len)
        }
        _ => return Ok(None),
    };
    let mut tcp_flags = 0u8;
    let mut l4_header_len = l4::UDP_LEN; // TCP's below, SCTP's common header
    match key.protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            // Nearly every packet has an option-less IPv4 header or a plain IPv6 one: a
            // constant offset the verifier can follow, so a direct read. Other IPv4 header
            // lengths go through the helper (the verifier cannot follow a variable offset into
            // the packet).
            let ports: [u16; 2];
            if l4_offset == L4_AFTER_IPV4 {
                ports = read(ctx, L4_AFTER_IPV4 + l4::PORTS)?;
                if key.protocol == IPPROTO_TCP {
                    tcp_flags = load_u8(ctx, L4_AFTER_IPV4 + l4::TCP_FLAGS)?;
                }
            } else if l4_offset == L4_AFTER_IPV6 {
                ports = read(ctx, L4_AFTER_IPV6 + l4::PORTS)?;
                if key.protocol == IPPROTO_TCP {
                    tcp_flags = load_u8(ctx, L4_AFTER_IPV6 + l4::TCP_FLAGS)?;
                }
            } else {
                ports = ctx.load(l4_offset + l4::PORTS)?;
                if key.protocol == IPPROTO_TCP {
                    tcp_flags = ctx.load(l4_offset + l4::TCP_FLAGS)?;
                }
            }
            key.src_port = u16::from_be(ports[0]);
            key.dst_port = u16::from_be(ports[1]);
            if key.protocol == IPPROTO_SCTP {
                l4_header_len = l4::SCTP_COMMON_LEN;
            }
        }
        _ => return Ok(None),
    }
    // SAFETY: reading a field of the context the kernel handed us.
    let segments = unsafe { (*ctx.skb.skb).gso_segs } as u64;
    if segments <= 1 {
        return Ok(Some(Packet {
            key,
            segments: 1,
            ip_len,
            tcp_flags,
        }));
    }
    // A super-packet: its IP length field may not hold its size (BIG TCP writes 0), the skb's
    // does; every segment but the first adds its own IP and L4 headers.
    if key.protocol == IPPROTO_TCP {
        l4_header_len = l4::tcp_header_len(ctx.load(l4_offset + l4::TCP_DATA_OFFSET)?);
    }
    let headers = (l4_offset - L3 + l4_header_len) as u64;
    let skb_ip_len = (ctx.len() as u64).saturating_sub(L3 as u64);
    Ok(Some(Packet {
        key,
        segments,
        ip_len: skb_ip_len + (segments - 1) * headers,
        tcp_flags,
    }))
}

#[inline(always)]
fn add(counters: *mut FlowCounters, forward: bool, packet: &Packet, now: u64) {
    // SAFETY: a per-CPU value of a map entry that exists; no other program writes this CPU's
    // slot while we run.
    let c = unsafe { &mut *counters };
    if forward {
        c.fwd_packets += packet.segments;
        c.fwd_bytes += packet.ip_len;
        c.fwd_tcp_flags |= packet.tcp_flags;
    } else {
        c.rev_packets += packet.segments;
        c.rev_bytes += packet.ip_len;
        c.rev_tcp_flags |= packet.tcp_flags;
    }
    if c.first_seen_ns == 0 {
        c.first_seen_ns = now;
    }
    c.last_seen_ns = now;
}

fn count(packet: &Packet, now: u64) {
    let handshake = packet.tcp_flags & (TCP_SYN | TCP_ACK);
    if handshake == TCP_SYN {
        // A SYN opens a flow: insert at once, without the two lookups that would miss (the
        // hash walks are most of this program's cost). A retransmitted SYN, or a 5-tuple whose
        // previous connection the agent has not forgotten yet, finds its entry on insert.
        return create(packet.key, true, packet, now);
    }
    // Try the likelier orientation first, so most packets take one hash lookup: a SYN-ACK is
    // a reply, and so, usually, is a packet from the lower port (the service's) to the
    // higher one (the initiator's ephemeral port). Either way both are tried.
    let reversed = packet.key.reversed();
    let reply_first = handshake == TCP_SYN | TCP_ACK || packet.key.src_port < packet.key.dst_port;
    let (first, second) = if reply_first {
        (reversed, packet.key)
    } else {
        (packet.key, reversed)
    };
    if let Some(c) = FLOWS.get_ptr_mut(first) {
        return add(c, !reply_first, packet, now);
    }
    if let Some(c) = FLOWS.get_ptr_mut(second) {
        return add(c, reply_first, packet, now);
    }

    // First packet of a flow: its sender initiated it (UDP, SCTP), except a TCP SYN-ACK,
    // whose sender is the responder (the SYN went by before the agent started). Any other TCP
    // packet is mid-stream (a connection older than the agent, or a late packet of one the agent
    // already finished): the likelier orientation is the one its ports suggest.
    let mid_stream_reply = packet.key.protocol == IPPROTO_TCP && reply_first;
    if mid_stream_reply {
        create(reversed, false, packet, now)
    } else {
        create(packet.key, true, packet, now)
    }
}

/// Inserts a flow's entry with this packet counted; if another CPU (or an earlier connection
/// on the same 5-tuple) has it already, counts the packet there.
fn create(key: FlowKey, forward: bool, packet: &Packet, now: u64) {
    let mut fresh = FlowCounters::default();
    add(&mut fresh, forward, packet, now);
    match FLOWS.insert(key, fresh, BPF_NOEXIST as u64) {
        Ok(()) => {
            // TCP attempts are reported by the socket tracepoint; the ring buffer carries new
            // flows only for the protocols that have no such hook.
            if key.protocol != IPPROTO_TCP {
                emit(
                    &key,
                    EVENT_NEW_FLOW,
                    ROLE_WIRE,
                    0,
                    0,
                    now,
                    STAT_RINGBUF_FULL,
                );
            }
        }
        Err(e) if e == -EEXIST => {
            if let Some(c) = FLOWS.get_ptr_mut(key) {
                add(c, forward, packet, now);
            }
        }
        Err(_) => bump(STAT_FLOWS_MAP_FULL),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
