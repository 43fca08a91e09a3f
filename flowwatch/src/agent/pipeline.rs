//! From a [`FlowSource`] to finished flows: drain, filter, aggregate, expire, forget. Generic
//! over the source so the whole path runs in unit tests with a [`crate::source::FakeSource`].

use ipnet::IpNet;

use crate::aggregate::{Aggregator, AggregatorConfig, FinishedFlow};
use crate::model::{FlowKey, Nanos, Observation};
use crate::source::FlowSource;

pub struct Pipeline<S: FlowSource> {
    pub source: S,
    aggregator: Aggregator,
    ignore: Vec<IpNet>,
    scratch: Vec<Observation>,
}

impl<S: FlowSource> Pipeline<S> {
    pub fn new(source: S, config: AggregatorConfig, ignore: Vec<IpNet>) -> Pipeline<S> {
        Pipeline {
            source,
            aggregator: Aggregator::new(config),
            ignore,
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
            if !is_ignored(&self.ignore, key) {
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

fn is_ignored(ignore: &[IpNet], key: &FlowKey) -> bool {
    ignore
        .iter()
        .any(|net| net.contains(&key.src.ip()) || net.contains(&key.dst.ip()))
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
