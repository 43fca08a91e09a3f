//! The aggregator: merges what the kernel reports (socket events, per-flow packet totals)
//! into one record per connection, and decides when a connection is over (pure; `now` is
//! passed in).
//!
//! A TCP connection between two pods of this node is seen three ways: the client's socket,
//! the server's socket (both through the `inet_sock_set_state` tracepoint) and the wire (TC).
//! They meet here, keyed by the 5-tuple oriented from the initiator.
//!
//! A datagram to a Service whose backend is on this node is translated by the node's NAT
//! (kube-proxy's DNAT) between two pod interfaces: the wire counts the request leaving the
//! client (to the Service address) and the answer leaving the backend (from the backend's
//! address), and neither packet where it enters the other pod (counted where it left, as far
//! as the kernel program can tell). With no socket events for UDP or SCTP, the answer would
//! start a flow of its own, backwards, and the request would stay unanswered: an answer that
//! starts a flow to the port of an unanswered request from another address is taken for that
//! request's answer (see `Aggregator::answered_request`).

use std::collections::hash_map::Entry;
use std::net::SocketAddr;

use crate::model::{
    Counters, EventKind, Flow, FlowHashMap, FlowKey, Nanos, Observation, Outcome, Protocol, Role,
};

const SECOND: Nanos = 1_000_000_000;

/// When flows are considered over.
#[derive(Clone, Copy, Debug)]
pub struct AggregatorConfig {
    /// A flow with no packet and no event for this long is over (UDP, SCTP, idle TCP).
    pub idle_timeout: Nanos,
    /// A closed or failed TCP flow whose end the agent saw whole (both sockets on this node,
    /// FINs both ways, or a RST) is reported this long after its last activity, so its last
    /// packet (the closing ACK) is drained from the kernel first.
    pub close_linger: Nanos,
    /// A TCP flow whose only local socket closed first is reported this long after its last
    /// activity: the peer, on another host, may still send its FIN, and a packet after the
    /// kernel entry is freed would start a flow of its own.
    pub peer_close_wait: Nanos,
    /// Bound on flows held at once; new flows beyond it are counted and not tracked.
    pub max_flows: usize,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            idle_timeout: 30 * SECOND,
            close_linger: 2 * SECOND,
            peer_close_wait: 2 * SECOND,
            max_flows: 262_144,
        }
    }
}

/// Why a flow was reported as over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Every local socket of the TCP connection closed.
    Closed,
    /// The TCP attempt failed (refused, reset, timed out, dropped).
    Failed,
    /// Nothing happened for the idle timeout.
    Idle,
    /// The same 5-tuple started a new connection.
    Reused,
    /// The agent is stopping.
    Shutdown,
}

/// A flow that is over, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedFlow {
    pub flow: Flow,
    pub reason: EndReason,
}

/// Per-flow bookkeeping the record does not show.
#[derive(Clone, Debug)]
struct Tracked {
    flow: Flow,
    /// Kernel totals already attributed to an earlier connection on the same 5-tuple.
    baseline: Counters,
    /// Latest kernel totals, oriented like `flow.key`.
    last_totals: Counters,
    /// When the last local socket closed or the attempt failed.
    ended_at: Option<Nanos>,
    /// A socket of the flow reached ESTABLISHED (not just the wire's SYN-ACK).
    socket_established: bool,
    /// What the initiator's and the responder's sockets did (see `track_entry`).
    client_socket: Socket,
    server_socket: Socket,
    /// Started as a new connection on a 5-tuple whose previous connection was still held: a
    /// close of a socket this flow has not seen belongs to that previous connection.
    follows_previous: bool,
    /// Latest totals of its answers' own kernel entry when the NAT translated them, oriented
    /// like `flow.key`.
    translated_reply: Counters,
}

/// One end's socket of a TCP flow, as its events told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Socket {
    /// No event of it yet.
    Unseen,
    /// Established (or its attempt failed: `Closed`).
    Open,
    Closed,
}

/// Which end's socket an event is of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Client,
    Server,
}

/// Whether an event may start a new connection on its 5-tuple (see `track_entry`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempt {
    None,
    Client,
    Server,
}

/// Merges observations into flows. See the module doc.
#[derive(Debug)]
pub struct Aggregator {
    config: AggregatorConfig,
    flows: FlowHashMap<FlowKey, Tracked>,
    /// Flows finished by something other than `expire` (5-tuple reuse), reported next expire.
    finished: Vec<FinishedFlow>,
    /// Observations of new flows refused because `max_flows` was reached: a kernel entry read
    /// (then freed) or an event. A refused flow that goes on sending is refused again each
    /// time its entry reappears, so this counts what was lost, not distinct flows.
    pub dropped_flows: u64,
    /// Kernel entries of refused flows, for the caller to free: left in the kernel map they
    /// would be read (and refused) again every poll and hold a slot the kernel needs.
    refused_kernel_keys: Vec<FlowKey>,
    /// The latest UDP or SCTP flow from each source address and port (whose answer the node's
    /// NAT may translate).
    datagram_sources: FlowHashMap<(SocketAddr, Protocol), FlowKey>,
    /// Kernel entries of answers translated by the NAT -> the flow they answer.
    translated_replies: FlowHashMap<FlowKey, FlowKey>,
}

impl Aggregator {
    pub fn new(config: AggregatorConfig) -> Aggregator {
        Aggregator {
            config,
            flows: FlowHashMap::default(),
            finished: Vec::new(),
            dropped_flows: 0,
            refused_kernel_keys: Vec::new(),
            datagram_sources: FlowHashMap::default(),
            translated_replies: FlowHashMap::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The flows in progress.
    pub fn flows(&self) -> impl Iterator<Item = &Flow> + Clone {
        self.flows.values().map(|t| &t.flow)
    }

    pub fn apply(&mut self, observation: Observation) {
        match observation {
            Observation::Event {
                key,
                kind,
                role,
                at,
            } => self.apply_event(key, kind, role, at),
            Observation::Totals {
                key,
                counters,
                first_seen,
                last_seen,
                fwd_tcp_flags,
                rev_tcp_flags,
            } => {
                let totals = WireTotals {
                    kernel_key: key,
                    counters,
                    fwd_tcp_flags,
                    rev_tcp_flags,
                    last_seen,
                };
                // The wire's orientation may differ from the sockets' (the first packet the TC
                // program saw was not the SYN): follow whichever the flow already has. One
                // lookup when the flow is known as the kernel has it, as it mostly is.
                if let Some(tracked) = self.flows.get_mut(&key) {
                    return totals.apply_to(tracked);
                }
                if let Some(tracked) = self.flows.get_mut(&key.reversed()) {
                    return totals.reversed().apply_to(tracked);
                }
                if let Some(request) = self.answered_request(&key) {
                    if let Some(tracked) = self.flows.get_mut(&request) {
                        return totals.apply_as_translated_reply(tracked);
                    }
                }
                match self.track(key, first_seen) {
                    Some(tracked) => totals.apply_to(tracked),
                    None => self.refused_kernel_keys.push(key),
                }
            }
        }
    }

    fn apply_event(&mut self, key: FlowKey, kind: EventKind, role: Role, at: Nanos) {
        if kind == EventKind::NewFlow {
            if let Some(request) = self.answered_request(&key) {
                if let Some(tracked) = self.flows.get_mut(&request) {
                    tracked.flow.last_seen = tracked.flow.last_seen.max(at);
                }
                return;
            }
        }
        if kind == EventKind::TcpClosed {
            // The closing socket's local->remote view: either orientation may be ours. As the
            // flow's key (initiator -> responder) it is the initiator's socket, reversed the
            // responder's. Both flows may exist (a wire-only flow of the other orientation,
            // started by a late packet): the close goes to the one whose socket it is, open.
            let reversed = key.reversed();
            let mut as_initiator = false;
            if let Some(tracked) = self.flows.get_mut(&key) {
                if tracked.client_socket == Socket::Open {
                    return tracked.socket_closed(End::Client, at);
                }
                as_initiator = true;
            }
            if let Some(tracked) = self.flows.get_mut(&reversed) {
                if !as_initiator || tracked.server_socket == Socket::Open {
                    return tracked.socket_closed(End::Server, at);
                }
            }
            if let Some(tracked) = self.flows.get_mut(&key) {
                tracked.socket_closed(End::Client, at);
            }
            return;
        }

        // A client's attempt on a 5-tuple whose previous connection is over starts a new flow,
        // and so does an end's socket establishing (or failing) where the flow had that end's
        // socket already: a socket establishes once, so this is a new connection even if the
        // previous one does not look over yet (at saturation the server's last close can come
        // after the client's next connection on the same port established; the server's
        // establishment is also the only sign of a new connection from a client on another
        // node). A server that has not established yet belongs to the flow its client opened,
        // even if the client closed first (an abort can overtake the server's last handshake
        // step).
        let attempt = match (role, kind) {
            (
                Role::Client,
                EventKind::TcpConnect | EventKind::TcpEstablished | EventKind::TcpFailed,
            ) => Attempt::Client,
            (Role::Server, EventKind::TcpEstablished) => Attempt::Server,
            _ => Attempt::None,
        };
        let tracked = self.track_entry(key, at, attempt);
        let Some(tracked) = tracked else {
            return;
        };
        let flow = &mut tracked.flow;
        flow.last_seen = flow.last_seen.max(at);
        flow.first_seen = flow.first_seen.min(at);
        match role {
            Role::Client => flow.seen_at_client = true,
            Role::Server => flow.seen_at_server = true,
            Role::Wire | Role::Unknown => {}
        }
        match kind {
            EventKind::TcpEstablished => {
                flow.outcome = Outcome::Established;
                flow.open_sockets = flow.open_sockets.saturating_add(1);
                tracked.socket_established = true;
                match role {
                    Role::Client => tracked.client_socket = Socket::Open,
                    Role::Server => tracked.server_socket = Socket::Open,
                    Role::Wire | Role::Unknown => {}
                }
            }
            EventKind::TcpFailed => {
                // A socket's failure outweighs a SYN-ACK on the wire (dropped before it reached
                // the client, or never acknowledged), not an established socket.
                if role == Role::Client {
                    tracked.client_socket = Socket::Closed;
                }
                if !tracked.socket_established {
                    flow.outcome = Outcome::Failed;
                    flow.closed = true;
                    tracked.ended_at = Some(at);
                }
            }
            EventKind::TcpConnect | EventKind::NewFlow | EventKind::TcpClosed => {}
        }
    }

    /// The request a datagram flow `key` (not tracked in either orientation) answers, when the
    /// node's NAT translated it: the latest flow from `key`'s destination address and port (so
    /// to another address than `key`'s source), that has had no answer yet. Remembers the answer's kernel key. A client port
    /// that gets a datagram from elsewhere while its request is unanswered is mistaken for this;
    /// its packets are then counted as that request's answer.
    fn answered_request(&mut self, key: &FlowKey) -> Option<FlowKey> {
        if let Some(request) = self.translated_replies.get(key) {
            return Some(*request);
        }
        if key.protocol == Protocol::Tcp
            || self.flows.contains_key(key)
            || self.flows.contains_key(&key.reversed())
        {
            return None;
        }
        let request = *self.datagram_sources.get(&(key.dst, key.protocol))?;
        let tracked = self.flows.get_mut(&request)?;
        let unanswered =
            tracked.flow.counters.rev_packets == 0 && tracked.flow.reply_kernel_key.is_none();
        if !unanswered {
            return None;
        }
        // Known to the request from now on, so forgotten with it even if no totals follow.
        tracked.flow.reply_kernel_key = Some(*key);
        self.translated_replies.insert(*key, request);
        Some(request)
    }

    /// Forgets what the finished flows were indexed by.
    fn unindex(&mut self, done: &[FinishedFlow]) {
        for d in done {
            let key = d.flow.key;
            if self.datagram_sources.get(&(key.src, key.protocol)) == Some(&key) {
                self.datagram_sources.remove(&(key.src, key.protocol));
            }
            if let Some(reply) = d.flow.reply_kernel_key {
                self.translated_replies.remove(&reply);
            }
        }
    }

    /// The flow of `key`, added if new (and the bound allows). One hash lookup: this runs for
    /// every observation.
    fn track(&mut self, key: FlowKey, at: Nanos) -> Option<&mut Tracked> {
        self.track_entry(key, at, Attempt::None)
    }

    /// `track`, where an event that starts a connection on a 5-tuple whose previous connection
    /// is over reports the old flow and starts a new one, with the kernel totals the old one
    /// accumulated as its baseline.
    fn track_entry(&mut self, key: FlowKey, at: Nanos, attempt: Attempt) -> Option<&mut Tracked> {
        let full = self.flows.len() >= self.config.max_flows;
        match self.flows.entry(key) {
            Entry::Occupied(mut slot) => {
                let previous = slot.get();
                let over = previous.ended_at.is_some() || previous.flow.closed;
                let new_connection = match attempt {
                    Attempt::Client => over || previous.client_socket != Socket::Unseen,
                    Attempt::Server => previous.server_socket != Socket::Unseen,
                    Attempt::None => false,
                };
                if new_connection {
                    let baseline = previous.last_totals;
                    let mut fresh = Tracked::new(key, at);
                    fresh.baseline = baseline;
                    fresh.last_totals = baseline;
                    fresh.follows_previous = true;
                    let mut old = slot.insert(fresh);
                    // The kernel entry goes on counting the new connection: the old record
                    // must not free it when it is reported.
                    let kernel_key = old.flow.kernel_key.take();
                    slot.get_mut().flow.kernel_key = kernel_key;
                    self.finished.push(FinishedFlow {
                        flow: old.flow,
                        reason: EndReason::Reused,
                    });
                }
                Some(slot.into_mut())
            }
            Entry::Vacant(_) if full => {
                self.dropped_flows += 1;
                None
            }
            Entry::Vacant(slot) => {
                if key.protocol != Protocol::Tcp {
                    self.datagram_sources.insert((key.src, key.protocol), key);
                }
                Some(slot.insert(Tracked::new(key, at)))
            }
        }
    }

    /// Takes the kernel keys of the totals refused since the last call (see `max_flows`).
    pub fn take_refused_kernel_keys(&mut self) -> Vec<FlowKey> {
        std::mem::take(&mut self.refused_kernel_keys)
    }

    /// Removes and returns the flows that are over at `now`.
    pub fn expire(&mut self, now: Nanos) -> Vec<FinishedFlow> {
        let mut done = std::mem::take(&mut self.finished);
        let config = self.config;
        self.flows.retain(|_, tracked| {
            let flow = &tracked.flow;
            let quiet_since = flow.last_seen.max(tracked.ended_at.unwrap_or(0));
            // A failed attempt has nothing more to come.
            let linger = if flow.outcome == Outcome::Failed || end_seen_whole(flow) {
                config.close_linger
            } else {
                config.peer_close_wait
            };
            let reason = if tracked.ended_at.is_some() && now.saturating_sub(quiet_since) >= linger
            {
                Some(if flow.outcome == Outcome::Failed {
                    EndReason::Failed
                } else {
                    EndReason::Closed
                })
            } else if now.saturating_sub(flow.last_seen) >= config.idle_timeout {
                Some(EndReason::Idle)
            } else {
                None
            };
            match reason {
                Some(reason) => {
                    done.push(finish(tracked.flow.clone(), reason));
                    false
                }
                None => true,
            }
        });
        self.unindex(&done);
        done
    }

    /// Removes and returns every flow (the agent is stopping). A flow still undecided stays
    /// `Pending`: a handshake in progress or a datagram not answered *yet* is cut short by the
    /// stop, not failed, and must not count as a failed (or blocked) attempt.
    pub fn drain_all(&mut self) -> Vec<FinishedFlow> {
        self.datagram_sources.clear();
        self.translated_replies.clear();
        let mut done = std::mem::take(&mut self.finished);
        done.extend(self.flows.drain().map(|(_, t)| {
            let mut flow = t.flow;
            // Midstream is what the flow was, not an undecided outcome.
            if flow.outcome == Outcome::Pending
                && flow.key.protocol == Protocol::Tcp
                && is_midstream(&flow)
            {
                flow.outcome = Outcome::Midstream;
            }
            FinishedFlow {
                flow,
                reason: EndReason::Shutdown,
            }
        }));
        done
    }
}

/// A flow-map entry's totals, oriented as the kernel keyed them.
struct WireTotals {
    kernel_key: FlowKey,
    counters: Counters,
    fwd_tcp_flags: u8,
    rev_tcp_flags: u8,
    last_seen: Nanos,
}

impl WireTotals {
    /// The same totals seen from the other end (for a flow tracked in the other orientation).
    fn reversed(self) -> WireTotals {
        WireTotals {
            counters: self.counters.reversed(),
            fwd_tcp_flags: self.rev_tcp_flags,
            rev_tcp_flags: self.fwd_tcp_flags,
            ..self
        }
    }

    fn apply_to(self, tracked: &mut Tracked) {
        tracked.last_totals = self.counters;
        tracked.flow.kernel_key = Some(self.kernel_key);
        tracked.flow.fwd_tcp_flags |= self.fwd_tcp_flags;
        tracked.flow.rev_tcp_flags |= self.rev_tcp_flags;
        tracked.recount(self.last_seen);
    }

    /// The totals of the kernel entry the translated answers of `tracked` started (keyed from
    /// the backend: its forward direction is the flow's reverse).
    fn apply_as_translated_reply(self, tracked: &mut Tracked) {
        tracked.translated_reply = self.counters.reversed();
        tracked.flow.reply_kernel_key = Some(self.kernel_key);
        tracked.recount(self.last_seen);
    }
}

impl Tracked {
    /// The flow's counters from its kernel entries' latest totals, and its last packet.
    fn recount(&mut self, last_seen: Nanos) {
        let flow = &mut self.flow;
        flow.counters = self
            .last_totals
            .saturating_sub(self.baseline)
            .saturating_add(self.translated_reply);
        flow.last_seen = flow.last_seen.max(last_seen);
        infer_outcome_from_wire(flow);
    }

    /// One of the flow's local sockets, `end`'s, closed at `at`.
    fn socket_closed(&mut self, end: End, at: Nanos) {
        let socket = match end {
            End::Client => &mut self.client_socket,
            End::Server => &mut self.server_socket,
        };
        match *socket {
            Socket::Open => *socket = Socket::Closed,
            // The previous connection on this 5-tuple, reported already: its socket's close
            // came after this connection's first event.
            Socket::Unseen if self.follows_previous => return,
            // A socket whose establishment was not seen (lost, or older than the agent):
            // counted as before, by the sockets open.
            Socket::Unseen | Socket::Closed => {}
        }
        let flow = &mut self.flow;
        flow.open_sockets = flow.open_sockets.saturating_sub(1);
        flow.last_seen = flow.last_seen.max(at);
        if flow.open_sockets == 0 {
            flow.closed = true;
            self.ended_at = Some(at);
        }
    }

    fn new(key: FlowKey, at: Nanos) -> Tracked {
        Tracked {
            flow: Flow::new(key, at),
            baseline: Counters::default(),
            last_totals: Counters::default(),
            ended_at: None,
            socket_established: false,
            client_socket: Socket::Unseen,
            server_socket: Socket::Unseen,
            follows_previous: false,
            translated_reply: Counters::default(),
        }
    }
}

/// Settles the outcome of a flow that is being reported.
fn finish(mut flow: Flow, reason: EndReason) -> FinishedFlow {
    if flow.outcome == Outcome::Pending {
        flow.outcome = match flow.key.protocol {
            // Neither a SYN nor a socket: the handshake happened before anything here looked.
            Protocol::Tcp if is_midstream(&flow) => Outcome::Midstream,
            // A TCP attempt that never completed its handshake failed, whatever stopped it.
            Protocol::Tcp => Outcome::Failed,
            Protocol::Udp | Protocol::Sctp => Outcome::Unanswered,
        };
    }
    FinishedFlow { flow, reason }
}

/// A TCP flow the wire saw without a SYN either way and no socket of it on this node.
fn is_midstream(flow: &Flow) -> bool {
    use flowwatch_common::TCP_SYN;
    (flow.fwd_tcp_flags | flow.rev_tcp_flags) & TCP_SYN == 0
        && !flow.seen_at_client
        && !flow.seen_at_server
}

/// Whether the agent saw the whole end of a TCP connection: both sockets closed on this node
/// (the last close follows the last packet), FINs in both directions, or a RST. Otherwise the
/// peer of a local socket that closed first may still be sending.
fn end_seen_whole(flow: &Flow) -> bool {
    use flowwatch_common::{TCP_FIN, TCP_RST};
    let both_fins = flow.fwd_tcp_flags & flow.rev_tcp_flags & TCP_FIN != 0;
    let reset = (flow.fwd_tcp_flags | flow.rev_tcp_flags) & TCP_RST != 0;
    (flow.seen_at_client && flow.seen_at_server) || both_fins || reset
}

/// Outcome from the wire alone, for flows whose sockets the tracepoint did not see (a remote
/// client, or events lost): UDP/SCTP are answered when anything came back; TCP is established
/// by the whole handshake, a SYN-ACK and the initiator's ACK after it (a SYN-ACK alone may never
/// have reached the client), and refused by a RST answering the SYN.
fn infer_outcome_from_wire(flow: &mut Flow) {
    use flowwatch_common::{TCP_ACK, TCP_SYN};
    match flow.key.protocol {
        Protocol::Udp | Protocol::Sctp => {
            if flow.counters.rev_packets > 0 {
                flow.outcome = Outcome::Established;
            }
        }
        Protocol::Tcp => {
            if flow.outcome != Outcome::Pending {
                return;
            }
            if flow.rev_tcp_flags & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK)
                && flow.fwd_tcp_flags & TCP_ACK != 0
            {
                flow.outcome = Outcome::Established;
            }
            // A refused attempt (RST answering the SYN) is settled by the client's socket
            // event, or, seen from the wire only, as Failed when it expires.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = SECOND;

    fn key(proto: Protocol) -> FlowKey {
        FlowKey {
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.0.0.2:80".parse().unwrap(),
            protocol: proto,
        }
    }

    fn ev(key: FlowKey, kind: EventKind, role: Role, at: Nanos) -> Observation {
        Observation::Event {
            key,
            kind,
            role,
            at,
        }
    }

    fn totals(key: FlowKey, fwd: u64, rev: u64, last: Nanos) -> Observation {
        Observation::Totals {
            key,
            counters: Counters {
                fwd_packets: fwd,
                fwd_bytes: fwd * 60,
                rev_packets: rev,
                rev_bytes: rev * 60,
            },
            first_seen: 1,
            last_seen: last,
            fwd_tcp_flags: 0,
            rev_tcp_flags: 0,
        }
    }

    fn agg() -> Aggregator {
        Aggregator::new(AggregatorConfig {
            idle_timeout: 30 * S,
            close_linger: 2 * S,
            peer_close_wait: 5 * S,
            max_flows: 100,
        })
    }

    /// Totals with the TCP flags the wire saw in each direction.
    fn totals_with_flags(
        key: FlowKey,
        fwd: u64,
        rev: u64,
        last: Nanos,
        flags: (u8, u8),
    ) -> Observation {
        match totals(key, fwd, rev, last) {
            Observation::Totals {
                key,
                counters,
                first_seen,
                last_seen,
                ..
            } => Observation::Totals {
                key,
                counters,
                first_seen,
                last_seen,
                fwd_tcp_flags: flags.0,
                rev_tcp_flags: flags.1,
            },
            other @ Observation::Event { .. } => other,
        }
    }

    #[test]
    fn a_local_socket_that_closed_first_waits_for_its_remote_peer() {
        use flowwatch_common::{TCP_ACK, TCP_FIN, TCP_SYN};
        // Client here, server on another host: the client closes first; its socket's last
        // close comes when its FIN is acknowledged, before the server's FIN.
        let k = key(Protocol::Tcp);
        let mut a = agg();
        a.apply(ev(k, EventKind::TcpEstablished, Role::Client, S));
        a.apply(totals_with_flags(
            k,
            4,
            3,
            S + 1,
            (TCP_SYN | TCP_ACK | TCP_FIN, TCP_SYN | TCP_ACK),
        ));
        a.apply(ev(k, EventKind::TcpClosed, Role::Unknown, S + 1));
        assert!(
            a.expire(S + 1 + 3 * S).is_empty(),
            "past the close linger, but the peer has not closed: wait for it"
        );
        // the server's FIN and the client's last ACK
        let fins = (TCP_SYN | TCP_ACK | TCP_FIN, TCP_SYN | TCP_ACK | TCP_FIN);
        a.apply(totals_with_flags(k, 5, 4, S + 4, fins));
        assert!(
            a.expire(S + 4 + S).is_empty(),
            "close linger from the last packet"
        );
        let done = a.expire(S + 4 + 2 * S);
        assert_eq!(done.len(), 1);
        let f = &done[0].flow;
        assert_eq!((f.counters.fwd_packets, f.counters.rev_packets), (5, 4));
        assert_eq!(f.outcome, Outcome::Established);

        // A peer that never closes: reported after the peer wait, not kept forever.
        let mut a = agg();
        a.apply(ev(k, EventKind::TcpEstablished, Role::Client, S));
        a.apply(totals_with_flags(
            k,
            3,
            2,
            S,
            (TCP_SYN | TCP_ACK | TCP_FIN, TCP_SYN | TCP_ACK),
        ));
        a.apply(ev(k, EventKind::TcpClosed, Role::Unknown, S));
        assert!(a.expire(S + 4 * S).is_empty());
        assert_eq!(a.expire(S + 5 * S).len(), 1);
    }

    #[test]
    fn tcp_seen_only_mid_stream_is_not_a_new_connection() {
        use flowwatch_common::{TCP_ACK, TCP_FIN};
        // No SYN either way and no socket here: open before the agent started, or the last
        // packets of a connection already reported.
        let k = key(Protocol::Tcp);
        let mut a = agg();
        a.apply(totals_with_flags(k, 4, 3, S, (TCP_ACK, TCP_ACK | TCP_FIN)));
        let done = a.expire(31 * S);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].flow.outcome, Outcome::Midstream);
        assert_eq!(done[0].flow.counters.fwd_packets, 4, "its traffic is kept");
    }

    #[test]
    fn tcp_connection_seen_at_both_ends_is_one_established_flow() {
        let k = key(Protocol::Tcp);
        let mut a = agg();
        a.apply(ev(k, EventKind::TcpConnect, Role::Client, S));
        a.apply(ev(k, EventKind::TcpEstablished, Role::Client, S + 1));
        a.apply(ev(k, EventKind::TcpEstablished, Role::Server, S + 2));
        a.apply(totals(k, 5, 4, S + 3));
        // Closing sockets report their own local->remote view: the server's is reversed.
        a.apply(ev(k, EventKind::TcpClosed, Role::Unknown, S + 4));
        assert!(a.expire(10 * S).is_empty(), "one socket still open");
        a.apply(ev(k.reversed(), EventKind::TcpClosed, Role::Unknown, S + 5));
        assert!(a.expire(S + 6).is_empty(), "linger not over");
        let done = a.expire(S + 5 + 2 * S);
        assert_eq!(done.len(), 1);
        let f = &done[0].flow;
        assert_eq!(done[0].reason, EndReason::Closed);
        assert_eq!(f.key, k);
        assert_eq!(f.outcome, Outcome::Established);
        assert!(f.seen_at_client && f.seen_at_server);
        assert_eq!((f.counters.fwd_packets, f.counters.rev_packets), (5, 4));
        assert!(a.is_empty());
    }

    #[test]
    fn refused_attempt_is_failed() {
        let k = key(Protocol::Tcp);
        let mut a = agg();
        a.apply(ev(k, EventKind::TcpConnect, Role::Client, S));
        a.apply(totals(k, 1, 1, S));
        a.apply(ev(k, EventKind::TcpFailed, Role::Client, S + 1));
        let done = a.expire(4 * S);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].reason, EndReason::Failed);
        assert_eq!(done[0].flow.outcome, Outcome::Failed);
        assert!(done[0].flow.seen_at_client && !done[0].flow.seen_at_server);
    }

    #[test]
    fn tcp_attempt_never_answered_is_failed_at_idle() {
        let k = key(Protocol::Tcp);
        let mut a = agg();
        // three SYNs seen on the wire, nothing back
        a.apply(totals_with_flags(
            k,
            3,
            0,
            S,
            (flowwatch_common::TCP_SYN, 0),
        ));
        assert!(a.expire(30 * S).is_empty());
        let done = a.expire(31 * S);
        assert_eq!(done[0].reason, EndReason::Idle);
        assert_eq!(done[0].flow.outcome, Outcome::Failed);
    }

    #[test]
    fn udp_answered_or_not() {
        let k = key(Protocol::Udp);
        let other = FlowKey {
            dst: "10.0.0.3:53".parse().unwrap(),
            ..k
        };
        let mut a = agg();
        a.apply(ev(k, EventKind::NewFlow, Role::Wire, S));
        a.apply(totals(k, 2, 2, S));
        a.apply(totals(other, 1, 0, S));
        let mut done = a.expire(40 * S);
        done.sort_by_key(|d| d.flow.key);
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].flow.outcome, Outcome::Established);
        assert_eq!(done[1].flow.outcome, Outcome::Unanswered);
    }

    #[test]
    fn a_datagram_answer_translated_by_the_nodes_nat_answers_the_request() {
        // A client's query to a Service address, translated by the node's NAT to a backend on
        // this node: the wire sees the request leave the client and the answer leave the
        // backend, never the translated request.
        let request = FlowKey {
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.96.0.10:53".parse().unwrap(),
            protocol: Protocol::Udp,
        };
        let answer = FlowKey {
            src: "10.0.0.5:53".parse().unwrap(),
            dst: request.src,
            protocol: Protocol::Udp,
        };
        let mut a = agg();
        a.apply(ev(request, EventKind::NewFlow, Role::Wire, S));
        a.apply(totals(request, 2, 0, S));
        a.apply(ev(answer, EventKind::NewFlow, Role::Wire, 2 * S));
        a.apply(totals(answer, 1, 0, 2 * S));
        a.apply(totals(answer, 2, 0, 3 * S));
        assert_eq!(a.len(), 1, "the answer is no flow of its own");
        let done = a.expire(40 * S);
        assert_eq!(done.len(), 1);
        let f = &done[0].flow;
        assert_eq!(f.key, request);
        assert_eq!(f.outcome, Outcome::Established);
        assert_eq!((f.counters.fwd_packets, f.counters.rev_packets), (2, 2));
        assert_eq!(f.last_seen, 3 * S);
        assert_eq!(
            f.kernel_keys().collect::<Vec<_>>(),
            [request, answer],
            "both kernel entries are freed with it"
        );
        // Forgotten with it: the same answer later (a new request's) is its own again.
        a.apply(totals(answer, 1, 0, 50 * S));
        assert_eq!(a.flows().next().map(|f| f.key), Some(answer));

        // An answer whose event came and whose totals did not is forgotten with its request.
        let mut a = agg();
        a.apply(totals(request, 1, 0, S));
        a.apply(ev(answer, EventKind::NewFlow, Role::Wire, 2 * S));
        let done = a.expire(40 * S);
        assert_eq!(done[0].flow.kernel_keys().count(), 2);
        assert!(a.translated_replies.is_empty() && a.datagram_sources.is_empty());
    }

    #[test]
    fn a_datagram_to_an_answered_port_from_elsewhere_is_its_own_flow() {
        let k = key(Protocol::Udp);
        let mut a = agg();
        a.apply(totals(k, 1, 1, S));
        let other = FlowKey {
            src: "10.0.0.9:7000".parse().unwrap(),
            dst: k.src,
            protocol: Protocol::Udp,
        };
        a.apply(totals(other, 1, 0, S));
        assert_eq!(a.len(), 2, "an answered request takes no other answer");
        let tcp = key(Protocol::Tcp);
        a.apply(totals(tcp, 1, 0, S));
        a.apply(totals(
            FlowKey {
                src: "10.0.0.9:80".parse().unwrap(),
                dst: tcp.src,
                protocol: Protocol::Tcp,
            },
            1,
            0,
            S,
        ));
        assert_eq!(a.len(), 4, "TCP answers are the sockets' business");
    }

    #[test]
    fn wire_totals_in_reverse_orientation_merge_into_the_socket_flow() {
        let k = key(Protocol::Tcp);
        let mut a = agg();
        a.apply(ev(k, EventKind::TcpConnect, Role::Client, S));
        a.apply(totals(k.reversed(), 3, 7, S));
        let f = a.flows().next().unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!((f.counters.fwd_packets, f.counters.rev_packets), (7, 3));
        assert_eq!(
            f.kernel_key(),
            Some(k.reversed()),
            "freed by the kernel's own key"
        );
    }

    #[test]
    fn the_wire_alone_establishes_a_tcp_flow_on_the_whole_handshake() {
        use flowwatch_common::{TCP_ACK, TCP_SYN};
        let k = key(Protocol::Tcp);
        let mut a = agg();
        a.apply(totals_with_flags(k, 1, 1, S, (TCP_SYN, TCP_SYN | TCP_ACK)));
        assert_eq!(a.flows().next().unwrap().outcome, Outcome::Pending);
        a.apply(totals_with_flags(
            k,
            2,
            1,
            S,
            (TCP_SYN | TCP_ACK, TCP_SYN | TCP_ACK),
        ));
        assert_eq!(a.flows().next().unwrap().outcome, Outcome::Established);
    }

    #[test]
    fn a_client_socket_that_failed_outweighs_a_syn_ack_on_the_wire() {
        // The server answered, but its SYN-ACK never reached the client's socket (a firewall
        // in the client pod): the wire alone would call it established.
        use flowwatch_common::{TCP_ACK, TCP_SYN};
        let k = key(Protocol::Tcp);
        let mut a = agg();
        a.apply(totals_with_flags(k, 1, 1, S, (TCP_SYN, TCP_SYN | TCP_ACK)));
        assert_eq!(
            a.flows().next().unwrap().outcome,
            Outcome::Pending,
            "a SYN-ACK without the initiator's ACK is no handshake"
        );
        a.apply(ev(k, EventKind::TcpFailed, Role::Client, 2 * S));
        let done = a.expire(10 * S);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].flow.outcome, Outcome::Failed);
        assert_eq!(done[0].reason, EndReason::Failed);
    }

    #[test]
    fn a_server_establishing_a_reused_five_tuple_starts_a_new_flow() {
        // Only the server is local (the client is on another node): its socket's events are
        // all there is.
        let k = key(Protocol::Tcp);
        let mut a = agg();
        a.apply(ev(k, EventKind::TcpEstablished, Role::Server, S));
        a.apply(totals(k, 5, 5, S));
        a.apply(ev(k, EventKind::TcpClosed, Role::Unknown, S));
        a.apply(ev(k, EventKind::TcpEstablished, Role::Server, S + 1));
        a.apply(totals(k, 8, 7, S + 1));
        let done = a.expire(S + 2);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].reason, EndReason::Reused);
        assert_eq!(done[0].flow.counters.fwd_packets, 5);
        let current = a.flows().next().unwrap();
        assert_eq!(current.outcome, Outcome::Established);
        assert!(!current.closed, "the new connection is open");
        assert_eq!(current.counters.fwd_packets, 3);
    }

    #[test]
    fn a_new_connection_on_the_port_is_new_even_before_the_previous_servers_close_arrives() {
        // Both ends on this node, the server closed first. The server's socket emits its close
        // as it becomes a TIME_WAIT socket, after it acknowledged the client's FIN: on a
        // saturated node the client can take that ACK, close, and connect again from the same
        // port (the server's TIME_WAIT accepts the new SYN) before the server's close is
        // emitted. The second connection must not be merged into the first.
        let k = key(Protocol::Tcp);
        let server_view = k.reversed();
        let mut a = agg();
        a.apply(ev(k, EventKind::TcpEstablished, Role::Client, S));
        a.apply(ev(k, EventKind::TcpEstablished, Role::Server, S + 1));
        a.apply(totals(k, 5, 4, S + 2));
        a.apply(ev(k, EventKind::TcpClosed, Role::Unknown, S + 3));
        a.apply(ev(k, EventKind::TcpEstablished, Role::Client, S + 4));
        a.apply(ev(server_view, EventKind::TcpClosed, Role::Unknown, S + 5));
        assert!(
            a.flows().all(|f| !f.closed),
            "the first connection's last close does not end the second"
        );
        a.apply(ev(k, EventKind::TcpEstablished, Role::Server, S + 6));
        a.apply(totals(k, 9, 7, S + 7));
        a.apply(ev(server_view, EventKind::TcpClosed, Role::Unknown, S + 8));
        let first = a.expire(10 * S);
        assert_eq!(first.len(), 1, "only the first is over: {first:?}");
        assert_eq!(first[0].reason, EndReason::Reused);
        assert_eq!(first[0].flow.first_seen, S);
        assert_eq!(first[0].flow.outcome, Outcome::Established);
        a.apply(ev(k, EventKind::TcpClosed, Role::Unknown, S + 9));
        let done = a.expire(S + 9 + 2 * S);
        assert_eq!(done.len(), 1, "{done:?}");
        let second = &done[0];
        assert_eq!(second.reason, EndReason::Closed);
        assert_eq!(second.flow.outcome, Outcome::Established);
        assert!(second.flow.seen_at_client && second.flow.seen_at_server);
        assert_eq!(second.flow.first_seen, S + 4);
        assert_eq!(
            (
                second.flow.counters.fwd_packets,
                second.flow.counters.rev_packets
            ),
            (4, 3),
            "its own packets only"
        );
        assert!(a.is_empty());
    }

    #[test]
    fn a_close_goes_to_the_flow_whose_socket_it_is_not_to_a_wire_flow_of_the_other_orientation() {
        use flowwatch_common::TCP_ACK;
        // A late packet of an earlier connection on this 5-tuple, counted after its kernel
        // entry was freed, started a wire-only flow keyed server -> client (the orientation
        // its ports suggested); the new connection's sockets are keyed client -> server. The
        // server's close (its local view: server -> client) must close the new connection's
        // server socket, not the wire flow.
        let k = key(Protocol::Tcp);
        let mut a = agg();
        a.apply(totals_with_flags(k.reversed(), 1, 0, S, (TCP_ACK, 0)));
        a.apply(ev(k, EventKind::TcpEstablished, Role::Client, S + 1));
        a.apply(ev(k, EventKind::TcpEstablished, Role::Server, S + 1));
        a.apply(ev(k, EventKind::TcpClosed, Role::Unknown, S + 2));
        a.apply(ev(k.reversed(), EventKind::TcpClosed, Role::Unknown, S + 3));
        let done = a.expire(S + 3 + 2 * S);
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].flow.key, k);
        assert_eq!(done[0].reason, EndReason::Closed);
        assert_eq!(done[0].flow.outcome, Outcome::Established);
        let wire = a.flows().next().unwrap();
        assert_eq!(wire.key, k.reversed());
        assert!(!wire.closed, "the wire flow has no socket to close");
    }

    #[test]
    fn a_server_establishing_after_its_client_aborted_joins_the_clients_flow() {
        // Both ends on this node: the client aborts (RST) right after its handshake, and its
        // close is emitted before the server processes the final ACK.
        let k = key(Protocol::Tcp);
        let mut a = agg();
        a.apply(ev(k, EventKind::TcpEstablished, Role::Client, S));
        a.apply(ev(k, EventKind::TcpClosed, Role::Unknown, S));
        a.apply(ev(k, EventKind::TcpEstablished, Role::Server, S + 1));
        a.apply(ev(k, EventKind::TcpClosed, Role::Unknown, S + 2));
        let done = a.expire(10 * S);
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].reason, EndReason::Closed);
        assert!(done[0].flow.seen_at_client && done[0].flow.seen_at_server);
    }

    #[test]
    fn flows_undecided_at_shutdown_stay_pending_not_failed() {
        use flowwatch_common::TCP_SYN;
        let mut a = agg();
        let tcp = key(Protocol::Tcp);
        a.apply(ev(tcp, EventKind::TcpConnect, Role::Client, S));
        a.apply(totals_with_flags(tcp, 1, 0, S, (TCP_SYN, 0)));
        a.apply(totals(key(Protocol::Udp), 1, 0, S));
        let done = a.drain_all();
        assert_eq!(done.len(), 2);
        for d in &done {
            assert_eq!(d.reason, EndReason::Shutdown);
            assert_eq!(d.flow.outcome, Outcome::Pending, "{:?}", d.flow.key);
        }
    }

    #[test]
    fn reused_five_tuple_starts_a_new_flow_with_its_own_counts() {
        let k = key(Protocol::Tcp);
        let mut a = agg();
        a.apply(ev(k, EventKind::TcpConnect, Role::Client, S));
        a.apply(ev(k, EventKind::TcpEstablished, Role::Client, S));
        a.apply(totals(k, 5, 5, S));
        a.apply(ev(k, EventKind::TcpClosed, Role::Unknown, S));
        a.apply(ev(k, EventKind::TcpEstablished, Role::Client, S + 10));
        a.apply(totals(k, 8, 7, S + 11));
        let done = a.expire(S + 12);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].reason, EndReason::Reused);
        assert_eq!(done[0].flow.counters.fwd_packets, 5);
        // The kernel entry now counts the new connection: reporting the old one must not free
        // it, the new one will.
        assert_eq!(done[0].flow.kernel_key(), None);
        let current = a.flows().next().unwrap();
        assert_eq!(
            (current.counters.fwd_packets, current.counters.rev_packets),
            (3, 2)
        );
        assert_eq!(current.kernel_key(), Some(k));
    }

    #[test]
    fn max_flows_bounds_memory_and_counts_what_it_drops() {
        let mut a = Aggregator::new(AggregatorConfig {
            max_flows: 2,
            ..AggregatorConfig::default()
        });
        for port in 1..=5u16 {
            let k = FlowKey {
                src: std::net::SocketAddr::new("10.0.0.1".parse().unwrap(), port),
                ..key(Protocol::Udp)
            };
            a.apply(totals(k, 1, 0, S));
        }
        assert_eq!(a.len(), 2);
        assert_eq!(a.dropped_flows, 3);
        // Their kernel entries are handed back to be freed, once each.
        let refused = a.take_refused_kernel_keys();
        let ports: Vec<u16> = refused.iter().map(|k| k.src.port()).collect();
        assert_eq!(ports, vec![3, 4, 5]);
        assert!(a.take_refused_kernel_keys().is_empty());
    }

    #[test]
    fn close_for_unknown_flow_is_ignored_and_drain_reports_everything() {
        let mut a = agg();
        a.apply(ev(
            key(Protocol::Tcp),
            EventKind::TcpClosed,
            Role::Unknown,
            S,
        ));
        assert!(a.is_empty());
        a.apply(totals(key(Protocol::Udp), 1, 0, S));
        let done = a.drain_all();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].reason, EndReason::Shutdown);
    }
}
