//! Flows that ended before the first cluster view arrived. Until then nothing can name or judge
//! them; reported at once they would be logged bare and never counted. So they wait here, up to
//! a bound, and go through the reporter with the first poll after the view arrives.

use crate::aggregate::FinishedFlow;
use crate::model::Nanos;

/// At most this many flows wait (a few MiB); beyond it they are reported bare at once.
pub const BACKLOG_MAX: usize = 65_536;

/// At most this long: a view that does not come (API server unreachable, a snapshot that
/// cannot be read) must not keep flows out of the flow log.
pub const BACKLOG_MAX_WAIT: Nanos = 60 * 1_000_000_000;

#[derive(Default)]
pub struct Backlog {
    waiting: Vec<FinishedFlow>,
    /// The first poll that passed through (about when the agent started).
    since: Option<Nanos>,
}

impl Backlog {
    /// What to report now. While `waiting_for_view` (and for at most `BACKLOG_MAX_WAIT`),
    /// `done` is held (what does not fit is returned, to be reported bare); once the view is
    /// there, or the wait is over, the held flows come first.
    pub fn pass(
        &mut self,
        done: Vec<FinishedFlow>,
        waiting_for_view: bool,
        now: Nanos,
    ) -> Vec<FinishedFlow> {
        let since = *self.since.get_or_insert(now);
        if waiting_for_view && now.saturating_sub(since) < BACKLOG_MAX_WAIT {
            let room = BACKLOG_MAX.saturating_sub(self.waiting.len());
            let mut done = done;
            let overflow = done.split_off(room.min(done.len()));
            self.waiting.extend(done);
            return overflow;
        }
        if self.waiting.is_empty() {
            return done;
        }
        let mut all = std::mem::take(&mut self.waiting);
        all.extend(done);
        all
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::EndReason;
    use crate::model::{Flow, FlowKey, Protocol};

    fn ended(port: u16) -> FinishedFlow {
        FinishedFlow {
            flow: Flow::new(
                FlowKey {
                    src: std::net::SocketAddr::from(([10, 0, 0, 1], port)),
                    dst: "10.0.0.2:80".parse().unwrap(),
                    protocol: Protocol::Tcp,
                },
                1,
            ),
            reason: EndReason::Closed,
        }
    }

    #[test]
    fn flows_wait_for_the_view_then_come_first_in_order() {
        let mut backlog = Backlog::default();
        assert!(backlog.pass(vec![ended(1), ended(2)], true, 0).is_empty());
        assert!(backlog.pass(vec![ended(3)], true, 1).is_empty());
        assert_eq!(backlog.len(), 3);
        let out = backlog.pass(vec![ended(4)], false, 2);
        let ports: Vec<u16> = out.iter().map(|d| d.flow.key.src.port()).collect();
        assert_eq!(ports, vec![1, 2, 3, 4]);
        assert!(backlog.is_empty());
        assert_eq!(backlog.pass(vec![ended(5)], false, 3).len(), 1);
    }

    #[test]
    fn a_view_that_does_not_come_stops_the_wait() {
        let mut backlog = Backlog::default();
        assert!(backlog.pass(vec![ended(1)], true, 5).is_empty());
        assert!(backlog
            .pass(vec![], true, 5 + BACKLOG_MAX_WAIT - 1)
            .is_empty());
        let out = backlog.pass(vec![ended(2)], true, 5 + BACKLOG_MAX_WAIT);
        assert_eq!(out.len(), 2, "the held flow and the new one, bare");
        assert_eq!(
            backlog
                .pass(vec![ended(3)], true, 6 + BACKLOG_MAX_WAIT)
                .len(),
            1
        );
    }

    #[test]
    fn beyond_the_bound_flows_are_handed_back_at_once() {
        let mut backlog = Backlog::default();
        let many: Vec<FinishedFlow> = (0..BACKLOG_MAX + 3).map(|i| ended(i as u16)).collect();
        let overflow = backlog.pass(many, true, 0);
        assert_eq!(overflow.len(), 3);
        assert_eq!(backlog.len(), BACKLOG_MAX);
        assert_eq!(backlog.pass(vec![ended(1)], true, 1).len(), 1, "still full");
    }
}
