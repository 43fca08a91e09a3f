//! From a [`FlowSource`] to finished flows: drain, filter, aggregate, expire, forget. Generic
//! over the source so the whole path runs in unit tests with a `crate::source::FakeSource`.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::aggregate::{Aggregator, AggregatorConfig, FinishedFlow};
use crate::model::{FlowKey, Nanos, Observation};
use crate::source::FlowSource;

pub struct Pipeline<S: FlowSource> {
    pub source: S,
    aggregator: Aggregator,
    ignore: IgnoreList,
    scratch: Vec<Observation>,
}

impl<S: FlowSource> Pipeline<S> {
    pub fn new(source: S, config: AggregatorConfig, ignore: &[IpNet]) -> Pipeline<S> {
        Pipeline {
            source,
            aggregator: Aggregator::new(config),
            ignore: IgnoreList::new(ignore),
            scratch: Vec::new(),
        }
    }

    pub fn aggregator(&self) -> &Aggregator {
        &self.aggregator
    }

    /// Applies the events waiting in the source.
    pub fn pump_events(&mut self) -> Result<(), S::Error> {
        self.scratch.clear();
        self.source.drain_events(&mut self.scratch)?;
        self.apply_scratch();
        Ok(())
    }

    /// Applies events and current totals, then returns the flows that are over at `now` and
    /// frees their kernel entries (and those of flows refused at the bound).
    pub fn pump_totals(&mut self, now: Nanos) -> Result<Ended<S::Error>, S::Error> {
        self.pump_events()?;
        self.scratch.clear();
        self.source.read_totals(&mut self.scratch)?;
        self.apply_scratch();
        let flows = self.aggregator.expire(now);
        let freed = self.forget(&flows);
        Ok(Ended { flows, freed })
    }

    /// Everything still in flight, for shutdown: one last drain, then every flow. A failed
    /// last read (returned beside) loses only what it would have added: the flows held are
    /// reported all the same.
    pub fn finish_all(&mut self) -> (Ended<S::Error>, Result<(), S::Error>) {
        let last_read = self.pump_events().and_then(|()| {
            self.scratch.clear();
            let read = self.source.read_totals(&mut self.scratch);
            self.apply_scratch();
            read
        });
        let flows = self.aggregator.drain_all();
        let freed = self.forget(&flows);
        (Ended { flows, freed }, last_read)
    }

    fn apply_scratch(&mut self) {
        for obs in self.scratch.drain(..) {
            let key = match &obs {
                Observation::Event { key, .. } | Observation::Totals { key, .. } => key,
            };
            if !self.ignore.covers(key) {
                self.aggregator.apply(obs);
            }
        }
    }

    fn forget(&mut self, done: &[FinishedFlow]) -> Result<(), S::Error> {
        let mut keys = self.aggregator.take_refused_kernel_keys();
        keys.extend(done.iter().flat_map(|d| d.flow.kernel_keys()));
        if keys.is_empty() {
            return Ok(());
        }
        self.source.forget(&keys)
    }
}

/// Flows that are over, and whether their kernel entries were freed. A failure to free them
/// must not lose the flows: they are reported all the same, and the caller logs the failure.
#[derive(Debug)]
pub struct Ended<E> {
    pub flows: Vec<FinishedFlow>,
    pub freed: Result<(), E>,
}

/// Networks whose flows are not reported, as integer prefixes: checked for every observation
/// the kernel hands over (generic `IpNet::contains` showed in the agent's profile).
struct IgnoreList {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IgnoreList {
    fn new(nets: &[IpNet]) -> IgnoreList {
        let mut list = IgnoreList {
            v4: Vec::new(),
            v6: Vec::new(),
        };
        for net in nets {
            match net {
                IpNet::V4(n) => list
                    .v4
                    .push((u32::from(n.network()), u32::from(n.netmask()))),
                IpNet::V6(n) => list
                    .v6
                    .push((u128::from(n.network()), u128::from(n.netmask()))),
            }
        }
        list
    }

    /// Whether either end of the flow is in one of the networks.
    fn covers(&self, key: &FlowKey) -> bool {
        self.contains(key.src.ip()) || self.contains(key.dst.ip())
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().any(|&(net, mask)| a & mask == net)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().any(|&(net, mask)| a & mask == net)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::EndReason;
    use crate::model::{Counters, EventKind, Outcome, Protocol, Role};
    use crate::source::FakeSource;

    const S: Nanos = 1_000_000_000;

    fn key(src: &str, dst: &str) -> FlowKey {
        FlowKey {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn the_ignore_list_matches_as_the_networks_do() {
        let nets: Vec<IpNet> = ["127.0.0.0/8", "::1/128", "10.1.0.0/16", "fd00:1::/64"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let list = IgnoreList::new(&nets);
        for ip in [
            "127.0.0.1",
            "127.255.1.2",
            "128.0.0.1",
            "10.1.255.255",
            "10.2.0.1",
            "0.0.0.0",
            "::1",
            "::2",
            "fd00:1::5",
            "fd00:1:0:1::5",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let expected = nets.iter().any(|n| n.contains(&ip));
            assert_eq!(list.contains(ip), expected, "{ip}");
        }
        let everything = IgnoreList::new(&["0.0.0.0/0".parse().unwrap()]);
        assert!(everything.contains("192.0.2.1".parse().unwrap()));
        assert!(!everything.contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn fake_source_flows_end_to_end_and_kernel_entries_are_forgotten() {
        let k = key("10.0.0.1:40000", "10.0.0.2:80");
        let lo = key("127.0.0.1:40000", "127.0.0.1:80");
        let mut source = FakeSource::default();
        for key in [k, lo] {
            source.events.push(Observation::Event {
                key,
                kind: EventKind::TcpConnect,
                role: Role::Client,
                at: S,
            });
            source.events.push(Observation::Event {
                key,
                kind: EventKind::TcpFailed,
                role: Role::Client,
                at: S,
            });
            source.totals.push(Observation::Totals {
                key,
                counters: Counters {
                    fwd_packets: 1,
                    fwd_bytes: 60,
                    rev_packets: 1,
                    rev_bytes: 40,
                },
                first_seen: S,
                last_seen: S,
                fwd_tcp_flags: 0,
                rev_tcp_flags: 0,
            });
        }
        let mut p = Pipeline::new(
            source,
            AggregatorConfig::default(),
            &["127.0.0.0/8".parse().unwrap()],
        );
        assert!(p.pump_totals(S).unwrap().flows.is_empty(), "lingering");
        let done = p.pump_totals(10 * S).unwrap().flows;
        assert_eq!(done.len(), 1, "loopback flow ignored");
        assert_eq!(done[0].flow.key, k);
        assert_eq!(done[0].flow.outcome, Outcome::Failed);
        assert_eq!(done[0].reason, EndReason::Failed);
        assert_eq!(p.source.forgotten, vec![k]);
        let (ended, last_read) = p.finish_all();
        assert!(ended.flows.is_empty());
        assert!(last_read.is_ok());
    }

    fn tcp_totals(key: FlowKey, packets: u64, at: Nanos) -> Observation {
        Observation::Totals {
            key,
            counters: Counters {
                fwd_packets: packets,
                fwd_bytes: packets * 60,
                rev_packets: packets,
                rev_bytes: packets * 60,
            },
            first_seen: S,
            last_seen: at,
            fwd_tcp_flags: 0,
            rev_tcp_flags: 0,
        }
    }

    fn client_event(key: FlowKey, kind: EventKind, at: Nanos) -> Observation {
        Observation::Event {
            key,
            kind,
            role: Role::Client,
            at,
        }
    }

    #[test]
    fn a_reused_five_tuple_keeps_its_kernel_entry_for_the_new_connection() {
        let k = key("10.0.0.1:40000", "10.0.0.2:80");
        let mut p = Pipeline::new(FakeSource::default(), AggregatorConfig::default(), &[]);
        p.source.events.extend([
            client_event(k, EventKind::TcpEstablished, S),
            client_event(k, EventKind::TcpClosed, S),
        ]);
        p.source.totals = vec![tcp_totals(k, 5, S)];
        assert!(p.pump_totals(S).unwrap().flows.is_empty(), "lingering");
        // Before the first is reported, the same 5-tuple connects again; the kernel entry
        // goes on counting (5 packets each way of the first, 3 of the second).
        p.source
            .events
            .push(client_event(k, EventKind::TcpEstablished, 2 * S));
        p.source.totals = vec![tcp_totals(k, 8, 2 * S)];
        let ended = p.pump_totals(2 * S).unwrap();
        assert_eq!(ended.flows.len(), 1);
        assert_eq!(ended.flows[0].reason, EndReason::Reused);
        assert_eq!(ended.flows[0].flow.counters.fwd_packets, 5);
        assert!(
            p.source.forgotten.is_empty(),
            "the entry of the live connection was freed"
        );
        // The second connection's count comes from the same entry, less the first's.
        p.source.totals = vec![tcp_totals(k, 9, 3 * S)];
        p.source
            .events
            .push(client_event(k, EventKind::TcpClosed, 3 * S));
        let ended = p.pump_totals(30 * S).unwrap();
        assert_eq!(ended.flows.len(), 1);
        assert_eq!(ended.flows[0].flow.counters.fwd_packets, 4);
        assert_eq!(p.source.forgotten, vec![k], "freed once, by the last");
    }

    #[test]
    fn flows_refused_at_the_bound_free_their_kernel_entries_each_counted_once() {
        let a = key("10.0.0.1:40000", "10.0.0.2:53");
        let b = key("10.0.0.1:40001", "10.0.0.2:53");
        let config = AggregatorConfig {
            max_flows: 1,
            ..AggregatorConfig::default()
        };
        let mut p = Pipeline::new(FakeSource::default(), config, &[]);
        p.source.totals = vec![tcp_totals(a, 1, S), tcp_totals(b, 1, S)];
        p.pump_totals(S).unwrap().freed.unwrap();
        assert_eq!(p.source.forgotten, vec![b]);
        // Freed, the same entry is not read (nor counted) again; were the flow to send more,
        // its new entry would be refused, and counted, in its turn.
        p.pump_totals(2 * S).unwrap().freed.unwrap();
        assert_eq!(p.aggregator().dropped_flows, 1);
        assert_eq!(p.source.forgotten, vec![b]);
    }

    #[derive(Debug, PartialEq)]
    struct MapError(&'static str);

    impl std::fmt::Display for MapError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for MapError {}

    /// A [`FakeSource`] whose flow map cannot be read, or whose entries cannot be freed.
    #[derive(Default)]
    struct Faulty {
        inner: FakeSource,
        unreadable: bool,
        unfreeable: bool,
    }

    impl FlowSource for Faulty {
        type Error = MapError;

        fn drain_events(&mut self, out: &mut Vec<Observation>) -> Result<(), MapError> {
            self.inner.drain_events(out).map_err(|e| match e {})
        }

        fn read_totals(&mut self, out: &mut Vec<Observation>) -> Result<(), MapError> {
            if self.unreadable {
                return Err(MapError("batch lookup: EFAULT"));
            }
            self.inner.read_totals(out).map_err(|e| match e {})
        }

        fn forget(&mut self, keys: &[FlowKey]) -> Result<(), MapError> {
            if self.unfreeable {
                return Err(MapError("batch delete: EINVAL"));
            }
            self.inner.forget(keys).map_err(|e| match e {})
        }

        fn losses(&self) -> Result<crate::source::KernelLosses, MapError> {
            Ok(self.inner.losses)
        }

        fn flow_map_fill(&self) -> Result<f64, MapError> {
            Ok(0.0)
        }
    }

    #[test]
    fn shutdown_reports_the_flows_held_even_when_the_last_read_fails() {
        let k = key("10.0.0.1:40000", "10.0.0.2:80");
        let unreadable = Faulty {
            unreadable: true,
            ..Faulty::default()
        };
        let mut p = Pipeline::new(unreadable, AggregatorConfig::default(), &[]);
        p.source
            .inner
            .events
            .push(client_event(k, EventKind::TcpEstablished, S));
        p.pump_events().unwrap();
        let (ended, last_read) = p.finish_all();
        assert_eq!(ended.flows.len(), 1);
        assert_eq!(ended.flows[0].reason, EndReason::Shutdown);
        assert_eq!(last_read, Err(MapError("batch lookup: EFAULT")));
    }

    #[test]
    fn flows_are_reported_even_when_their_kernel_entries_cannot_be_freed() {
        let k = key("10.0.0.1:40000", "10.0.0.2:80");
        let mut source = FakeSource::default();
        source.events.extend([
            client_event(k, EventKind::TcpConnect, S),
            client_event(k, EventKind::TcpFailed, S),
        ]);
        source.totals.push(tcp_totals(k, 1, S));
        let unfreeable = Faulty {
            inner: source,
            unfreeable: true,
            ..Faulty::default()
        };
        let mut p = Pipeline::new(unfreeable, AggregatorConfig::default(), &[]);
        let ended = p.pump_totals(10 * S).unwrap();
        assert_eq!(ended.flows.len(), 1);
        assert_eq!(ended.flows[0].flow.outcome, Outcome::Failed);
        assert_eq!(ended.freed, Err(MapError("batch delete: EINVAL")));
    }
}
