//! From a [`FlowSource`] to finished flows: drain, filter, aggregate, expire, forget. Generic
//! over the source so the whole path runs in unit tests with a [`crate::source::FakeSource`].

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
    pub fn new(source: S, config: AggregatorConfig, ignore: Vec<IpNet>) -> Pipeline<S> {
        Pipeline {
            source,
            aggregator: Aggregator::new(config),
            ignore: IgnoreList::new(&ignore),
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
    /// frees their kernel entries.
    pub fn pump_totals(&mut self, now: Nanos) -> Result<Vec<FinishedFlow>, S::Error> {
        self.pump_events()?;
        self.scratch.clear();
        self.source.read_totals(&mut self.scratch)?;
        self.apply_scratch();
        let done = self.aggregator.expire(now);
        self.forget(&done)?;
        Ok(done)
    }

    /// Everything still in flight, for shutdown: one last drain, then every flow.
    pub fn finish_all(&mut self) -> Result<Vec<FinishedFlow>, S::Error> {
        self.pump_events()?;
        self.scratch.clear();
        self.source.read_totals(&mut self.scratch)?;
        self.apply_scratch();
        let done = self.aggregator.drain_all();
        self.forget(&done)?;
        Ok(done)
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
        if done.is_empty() {
            return Ok(());
        }
        let keys: Vec<FlowKey> = done.iter().filter_map(|d| d.flow.kernel_key()).collect();
        self.source.forget(&keys)
    }
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
            vec!["127.0.0.0/8".parse().unwrap()],
        );
        assert!(p.pump_totals(S).unwrap().is_empty(), "lingering");
        let done = p.pump_totals(10 * S).unwrap();
        assert_eq!(done.len(), 1, "loopback flow ignored");
        assert_eq!(done[0].flow.key, k);
        assert_eq!(done[0].flow.outcome, Outcome::Failed);
        assert_eq!(done[0].reason, EndReason::Failed);
        assert_eq!(p.source.forgotten, vec![k]);
        assert!(p.finish_all().unwrap().is_empty());
    }
}
