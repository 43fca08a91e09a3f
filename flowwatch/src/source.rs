//! Where observations come from: the kernel (`crate::datapath::EbpfSource`) in the agent, a
//! `FakeSource` in unit tests (and in builds with the `test-hooks` feature).

use crate::model::{FlowKey, Observation};

/// Losses the kernel side counted (cumulative since load).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLosses {
    /// Events dropped because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Packets not counted because their flow did not fit in the full flow map.
    pub flows_map_full: u64,
    /// Packets too short for the headers they announced.
    pub truncated_packets: u64,
    /// Packets that no flow can be given (fragments after the first, IPv6 behind extension
    /// headers the program does not walk): traffic in no flow record.
    pub unattributed_packets: u64,
    /// Packets counted by the TC programs.
    pub packets: u64,
}

/// A source of flow observations.
pub trait FlowSource {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Appends the events that arrived since the last call; never blocks.
    fn drain_events(&mut self, out: &mut Vec<Observation>) -> Result<(), Self::Error>;
    /// Appends the current totals of every flow the kernel holds.
    fn read_totals(&mut self, out: &mut Vec<Observation>) -> Result<(), Self::Error>;
    /// Forgets finished flows (frees their kernel map entries); `keys` are oriented as the
    /// kernel reported them in `read_totals`.
    fn forget(&mut self, keys: &[FlowKey]) -> Result<(), Self::Error>;
    /// What the kernel lost so far.
    fn losses(&self) -> Result<KernelLosses, Self::Error>;
    /// Fill of the kernel flow map, 0.0..=1.0.
    fn flow_map_fill(&self) -> Result<f64, Self::Error>;
}

/// A scripted source for unit tests: events and totals queued by the test. Not in the product:
/// only in unit tests and builds with the `test-hooks` feature (the benches).
#[cfg(any(test, feature = "test-hooks"))]
#[derive(Debug, Default)]
pub struct FakeSource {
    pub events: Vec<Observation>,
    pub totals: Vec<Observation>,
    pub forgotten: Vec<FlowKey>,
    pub losses: KernelLosses,
}

#[cfg(any(test, feature = "test-hooks"))]
impl FlowSource for FakeSource {
    type Error = std::convert::Infallible;

    fn drain_events(&mut self, out: &mut Vec<Observation>) -> Result<(), Self::Error> {
        out.append(&mut self.events);
        Ok(())
    }

    fn read_totals(&mut self, out: &mut Vec<Observation>) -> Result<(), Self::Error> {
        out.extend(self.totals.iter().copied());
        Ok(())
    }

    fn forget(&mut self, keys: &[FlowKey]) -> Result<(), Self::Error> {
        self.forgotten.extend_from_slice(keys);
        self.totals.retain(|o| match o {
            Observation::Totals { key, .. } => !keys.contains(key),
            Observation::Event { .. } => true,
        });
        Ok(())
    }

    fn losses(&self) -> Result<KernelLosses, Self::Error> {
        Ok(self.losses)
    }

    fn flow_map_fill(&self) -> Result<f64, Self::Error> {
        Ok(0.0)
    }
}
