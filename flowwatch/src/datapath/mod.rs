//! The kernel edge: loads flowwatch-ebpf, attaches it, and reads what it records.
//!
//! * The `tcp_state` tracepoint is attached once, for the whole node.
//! * `tc_ingress`/`tc_egress` are attached with tcx to every pod interface (the host ends of
//!   pod veths, chosen by name patterns) as it appears, and detached as it goes. tcx links are
//!   file descriptors: when the agent exits, however it exits, the kernel detaches them.
//! * [`EbpfSource`] drains the ring buffer and the per-CPU flow map ([`FlowSource`]).

mod batch;
pub mod conntrack;
mod events;
pub mod links;
pub mod preflight;
mod sys;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::links::LinkOrder;
use aya::programs::tc::{SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType, TracePoint};
use aya::{Ebpf, EbpfLoader};
use events::EventReader;
use flowwatch_common as common;
pub use links::{InterfacePatterns, LinkNotifications};

use crate::error_chain::Chain;
use crate::model::{FlowKey, KernelDataError, Observation};
use crate::source::{FlowSource, KernelLosses};

/// The compiled kernel programs, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowwatch"));

/// The SHA-256 of the embedded kernel object, in hex: which eBPF programs this binary loads
/// (`flowwatch version`).
pub fn object_sha256() -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, EBPF_OBJECT);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("insufficient privileges: {0}")]
    Privileges(String),
    #[error("{0}")]
    Tracefs(String),
    #[error("kernel feature missing: {0}")]
    KernelFeature(String),
    #[error("network interface {0:?} does not exist")]
    NoSuchInterface(String),
    #[error("--interfaces: {0}")]
    Patterns(String),
    #[error("loading the eBPF object")]
    Object(#[source] aya::EbpfError),
    #[error("eBPF program {name} not found in the object")]
    MissingProgram { name: String },
    #[error("loading the eBPF program {name}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching {what}")]
    Attach {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF map {map}: {problem}")]
    MapShape {
        map: &'static str,
        problem: &'static str,
    },
    #[error("eBPF map {map}: {what}")]
    MapIo {
        map: &'static str,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("listing network interfaces: {0}")]
    Interfaces(#[source] std::io::Error),
    #[error(transparent)]
    KernelData(#[from] KernelDataError),
}

/// Load-time settings.
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    /// Capacity of the kernel flow map.
    pub flows_max_entries: u32,
    /// Size of the socket-event ring buffer in bytes (a power of two, page-aligned).
    pub events_bytes: u32,
    /// Mount tracefs at /sys/kernel/tracing when it is missing.
    pub mount_tracefs: bool,
    /// Benchmarks only: the programs attach but return at once (see `--benchmark-null-datapath`).
    /// A test hook (feature `test-hooks`); without it the programs always run.
    #[cfg(feature = "test-hooks")]
    pub null_datapath: bool,
}

impl Default for DatapathOptions {
    fn default() -> Self {
        DatapathOptions {
            flows_max_entries: common::DEFAULT_FLOWS_MAX_ENTRIES,
            events_bytes: common::DEFAULT_EVENTS_BYTES,
            mount_tracefs: true,
            #[cfg(feature = "test-hooks")]
            null_datapath: false,
        }
    }
}

/// Loaded programs and the interfaces they are attached to.
pub struct Datapath {
    bpf: Ebpf,
    monitored: BpfHashMap<MapData, u32, u8>,
    attached: BTreeMap<String, AttachedInterface>,
}

#[derive(Debug)]
struct AttachedInterface {
    ifindex: u32,
    ingress: SchedClassifierLinkId,
    egress: SchedClassifierLinkId,
}

/// Preflight checks, load, and attach the node-wide tracepoint. Interfaces come next, with
/// [`Datapath::reconcile`].
pub fn load(options: &DatapathOptions) -> Result<(Datapath, EbpfSource), DatapathError> {
    preflight::check_capabilities()?;
    preflight::check_kernel_version(&preflight::kernel_release())?;
    let tracefs = preflight::ensure_tracefs(options.mount_tracefs)?;
    preflight::verify_tracepoint_format(&tracefs)?;

    let events_wakeup = u64::from(options.events_bytes) / 2;
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(common::FLOWS_MAP, options.flows_max_entries)
        .map_max_entries(common::EVENTS_MAP, options.events_bytes)
        .override_global(common::EVENTS_WAKEUP_GLOBAL, &events_wakeup, true);
    // Without the test hooks the global keeps its default (0): the programs always run.
    #[cfg(feature = "test-hooks")]
    let null_datapath = u8::from(options.null_datapath);
    #[cfg(feature = "test-hooks")]
    loader.override_global(common::NULL_DATAPATH_GLOBAL, &null_datapath, true);
    let mut bpf = loader.load(EBPF_OBJECT).map_err(DatapathError::Object)?;

    let tp: &mut TracePoint = program(&mut bpf, common::PROG_TCP_STATE)?;
    tp.load().map_err(program_error(common::PROG_TCP_STATE))?;
    tp.attach("sock", "inet_sock_set_state")
        .map_err(|source| DatapathError::Attach {
            what: "tracepoint sock/inet_sock_set_state".into(),
            source,
        })?;
    for name in [common::PROG_TC_INGRESS, common::PROG_TC_EGRESS] {
        let tc: &mut SchedClassifier = program(&mut bpf, name)?;
        tc.load().map_err(program_error(name))?;
    }

    let monitored = BpfHashMap::try_from(take_map(&mut bpf, common::MONITORED_MAP)?)
        .map_err(|e| map_error(common::MONITORED_MAP, e))?;
    let flows = match take_map(&mut bpf, common::FLOWS_MAP)? {
        map @ aya::maps::Map::PerCpuHashMap(_) => {
            PerCpuHashMap::<_, common::FlowKey, common::FlowCounters>::try_from(map)
                .map_err(|e| map_error(common::FLOWS_MAP, e))?
        }
        _ => {
            return Err(DatapathError::MapShape {
                map: common::FLOWS_MAP,
                problem: "not a per-CPU hash map",
            })
        }
    };
    let flows = sys::FlowMap::new(flows).map_err(|source| DatapathError::MapIo {
        map: common::FLOWS_MAP,
        what: "counting the possible CPUs",
        source,
    })?;
    let source = EbpfSource {
        flows: batch::FlowMapBatch::new(flows),
        events: EventReader::start(
            RingBuf::try_from(take_map(&mut bpf, common::EVENTS_MAP)?)
                .map_err(|e| map_error(common::EVENTS_MAP, e))?,
            // Twice the ring's size in queued records: with the ring, about three times
            // what the kernel alone could hold while the main loop is busy.
            2 * options.events_bytes as usize,
        )
        .map_err(|source| DatapathError::MapIo {
            map: common::EVENTS_MAP,
            what: "starting its reader thread",
            source,
        })?,
        stats: PerCpuArray::try_from(take_map(&mut bpf, common::STATS_MAP)?)
            .map_err(|e| map_error(common::STATS_MAP, e))?,
        capacity: options.flows_max_entries,
        last_len: 0,
        undecodable: 0,
    };
    Ok((
        Datapath {
            bpf,
            monitored,
            attached: BTreeMap::new(),
        },
        source,
    ))
}

impl Datapath {
    /// Attaches to the interfaces matching `patterns` that are not attached yet, and forgets
    /// the ones that disappeared. Returns the names attached and detached.
    pub fn reconcile(
        &mut self,
        patterns: &InterfacePatterns,
    ) -> Result<(Vec<String>, Vec<String>), DatapathError> {
        let present = links::list_interfaces().map_err(DatapathError::Interfaces)?;
        let gone: Vec<String> = self
            .attached
            .iter()
            .filter(|(name, a)| present.get(*name) != Some(&a.ifindex))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            self.detach(name);
        }
        let mut added = Vec::new();
        for (name, ifindex) in present {
            if patterns.matches(&name) && !self.attached.contains_key(&name) {
                match self.attach(&name, ifindex) {
                    Ok(()) => added.push(name),
                    // The interface may vanish between listing and attaching (a pod that
                    // failed to start): not fatal, the next reconcile sees the truth.
                    Err(e) => {
                        tracing::warn!(interface = %name, error = %Chain(&e), "not attached");
                    }
                }
            }
        }
        Ok((added, gone))
    }

    /// Fails with [`DatapathError::NoSuchInterface`] for an exact name that is not present.
    pub fn require_interfaces(patterns: &InterfacePatterns) -> Result<(), DatapathError> {
        patterns.check().map_err(DatapathError::Patterns)?;
        let present = links::list_interfaces().map_err(DatapathError::Interfaces)?;
        match patterns.exact_names().find(|n| !present.contains_key(*n)) {
            Some(missing) => Err(DatapathError::NoSuchInterface(missing.to_string())),
            None => Ok(()),
        }
    }

    pub fn attached_interfaces(&self) -> impl Iterator<Item = &str> {
        self.attached.keys().map(String::as_str)
    }

    fn attach(&mut self, name: &str, ifindex: u32) -> Result<(), DatapathError> {
        let attach_err = |source: aya::programs::ProgramError| DatapathError::Attach {
            what: format!("TC to {name}"),
            source,
        };
        // Register first, so the egress program never double-counts a packet the ingress
        // program of this interface already counted.
        self.monitored
            .insert(ifindex, 1, 0)
            .map_err(|e| map_error(common::MONITORED_MAP, e))?;
        // Unregister on any failure: a registered interface without its ingress program would
        // make the egress programs of the other pods skip its packets, counted by no one.
        let ingress = match program::<SchedClassifier>(&mut self.bpf, common::PROG_TC_INGRESS)
            .and_then(|p| {
                p.attach_with_options(name, TcAttachType::Ingress, first_in_chain())
                    .map_err(attach_err)
            }) {
            Ok(id) => id,
            Err(e) => {
                let _ = self.monitored.remove(&ifindex);
                return Err(e);
            }
        };
        let egress = match program::<SchedClassifier>(&mut self.bpf, common::PROG_TC_EGRESS)
            .and_then(|p| {
                p.attach_with_options(name, TcAttachType::Egress, first_in_chain())
                    .map_err(attach_err)
            }) {
            Ok(id) => id,
            Err(e) => {
                let _ = program::<SchedClassifier>(&mut self.bpf, common::PROG_TC_INGRESS)
                    .map(|p| p.detach(ingress));
                let _ = self.monitored.remove(&ifindex);
                return Err(e);
            }
        };
        tracing::info!(interface = name, ifindex, "attached");
        self.attached.insert(
            name.to_string(),
            AttachedInterface {
                ifindex,
                ingress,
                egress,
            },
        );
        Ok(())
    }

    fn detach(&mut self, name: &str) {
        let Some(a) = self.attached.remove(name) else {
            return;
        };
        // The kernel already detached the links of a deleted interface; dropping ours frees
        // the file descriptors. Errors here only mean "already gone".
        if let Ok(p) = program::<SchedClassifier>(&mut self.bpf, common::PROG_TC_INGRESS) {
            let _ = p.detach(a.ingress);
        }
        if let Ok(p) = program::<SchedClassifier>(&mut self.bpf, common::PROG_TC_EGRESS) {
            let _ = p.detach(a.egress);
        }
        let _ = self.monitored.remove(&a.ifindex);
        tracing::info!(interface = name, "detached");
    }

    /// Runs the packet-leaving-a-pod program on one Ethernet frame with `BPF_PROG_TEST_RUN`:
    /// the kernel executes it exactly as on an interface, against the real maps. This is how
    /// protocols that cannot be produced on a machine are exercised (SCTP needs a kernel module
    /// many nodes do not load), and malformed packets too. Returns the program's verdict.
    /// A test hook (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    pub fn run_ingress_on(&mut self, frame: &[u8]) -> Result<u32, DatapathError> {
        self.run_ingress_repeated(frame, 1)
            .map(|(verdict, _)| verdict)
    }

    /// Runs `tc_ingress` on `frame` `repeat` times in a row (`BPF_PROG_TEST_RUN`); returns its
    /// verdict and the kernel's measure of its mean run time in nanoseconds. For benchmarks of
    /// the packet path: the same work as on an interface, without the traffic around it.
    /// A test hook (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    pub fn run_ingress_repeated(
        &mut self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, u32), DatapathError> {
        use std::os::fd::AsFd;
        let program = program::<SchedClassifier>(&mut self.bpf, common::PROG_TC_INGRESS)?;
        let fd = program
            .fd()
            .map_err(program_error(common::PROG_TC_INGRESS))?
            .as_fd();
        let run = sys::prog_test_run(fd, frame, repeat)
            .map_err(|e| DatapathError::KernelFeature(format!("BPF_PROG_TEST_RUN: {e}")))?;
        Ok((run.retval, run.duration_ns))
    }

    /// Detaches everything (also done by dropping the Datapath).
    pub fn detach_all(&mut self) {
        let names: Vec<String> = self.attached.keys().cloned().collect();
        for name in names {
            self.detach(&name);
        }
    }
}

/// tcx position of the packet programs: first, so they see every packet before a CNI's
/// programs drop (the attempts a policy blocks) or redirect it (past later programs). They
/// answer "next", so everything after them still runs.
fn first_in_chain() -> TcAttachOptions {
    TcAttachOptions::TcxOrder(LinkOrder::first())
}

fn program<'a, T>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = bpf
        .program_mut(name)
        .ok_or_else(|| DatapathError::MissingProgram { name: name.into() })?;
    program.try_into().map_err(program_error(name))
}

fn program_error(name: &str) -> impl FnOnce(aya::programs::ProgramError) -> DatapathError + '_ {
    move |source| DatapathError::Program {
        name: name.into(),
        source,
    }
}

fn take_map(bpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
    bpf.take_map(name).ok_or(DatapathError::MapShape {
        map: name,
        problem: "not found in the object",
    })
}

fn map_error(map: &'static str, source: aya::maps::MapError) -> DatapathError {
    DatapathError::Map { map, source }
}

/// Reads the kernel's flow map, ring buffer and loss counters.
pub struct EbpfSource {
    flows: batch::FlowMapBatch,
    events: EventReader,
    stats: PerCpuArray<MapData, u64>,
    capacity: u32,
    /// Entries seen at the last `read_totals`, for the fill gauge.
    last_len: usize,
    /// Ring-buffer records or map entries the agent could not decode.
    pub undecodable: u64,
}

impl FlowSource for EbpfSource {
    type Error = DatapathError;

    fn drain_events(&mut self, out: &mut Vec<Observation>) -> Result<(), DatapathError> {
        let undecodable = &mut self.undecodable;
        self.events.drain(|record| match decode_event(record) {
            Ok(obs) => out.push(obs),
            Err(e) => {
                *undecodable += 1;
                tracing::debug!(error = %e, "undecodable event");
            }
        });
        Ok(())
    }

    fn read_totals(&mut self, out: &mut Vec<Observation>) -> Result<(), DatapathError> {
        let mut undecodable = 0;
        let n = self
            .flows
            .for_each(
                |key, per_cpu| match Observation::from_kernel_totals(key, per_cpu) {
                    Ok(obs) => out.push(obs),
                    Err(_) => undecodable += 1,
                },
            )
            .map_err(|source| DatapathError::MapIo {
                map: common::FLOWS_MAP,
                what: "batch lookup",
                source,
            })?;
        self.undecodable += undecodable;
        self.last_len = n;
        Ok(())
    }

    fn forget(&mut self, keys: &[FlowKey]) -> Result<(), DatapathError> {
        let keys: Vec<common::FlowKey> = keys.iter().map(FlowKey::to_kernel).collect();
        self.flows
            .delete(&keys)
            .map(|_| ())
            .map_err(|source| DatapathError::MapIo {
                map: common::FLOWS_MAP,
                what: "batch delete",
                source,
            })
    }

    fn losses(&self) -> Result<KernelLosses, DatapathError> {
        let sum = |index: u32| -> Result<u64, DatapathError> {
            let values = self
                .stats
                .get(&index, 0)
                .map_err(|e| map_error(common::STATS_MAP, e))?;
            Ok(values.iter().sum())
        };
        Ok(KernelLosses {
            ringbuf_full: sum(common::STAT_RINGBUF_FULL)? + sum(common::STAT_RINGBUF_FULL_SOCKET)?,
            flows_map_full: sum(common::STAT_FLOWS_MAP_FULL)?,
            truncated_packets: sum(common::STAT_TRUNCATED)?,
            unattributed_packets: sum(common::STAT_UNATTRIBUTED)?,
            packets: sum(common::STAT_PACKETS)?,
        })
    }

    fn flow_map_fill(&self) -> Result<f64, DatapathError> {
        Ok(self.last_len as f64 / f64::from(self.capacity.max(1)))
    }
}

/// A ring-buffer record, as the agent decodes it (also the `kernel_event` fuzz target).
pub(crate) fn decode_event(bytes: &[u8]) -> Result<Observation, KernelDataError> {
    let expected = std::mem::size_of::<common::FlowEvent>();
    if bytes.len() < expected {
        return Err(KernelDataError::Size {
            got: bytes.len(),
            expected,
        });
    }
    // SAFETY: FlowEvent is plain old data (every bit pattern valid) and we checked the length;
    // read_unaligned because the ring buffer only guarantees 8-byte alignment of records.
    let event: common::FlowEvent =
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<common::FlowEvent>()) };
    Observation::from_kernel_event(&event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ebpf_object_hash_is_the_sha256_of_the_embedded_object() {
        let hash = object_sha256();
        assert_eq!(hash.len(), 64);
        assert!(hash
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(hash, object_sha256());
        assert!(!EBPF_OBJECT.is_empty());
    }

    #[test]
    fn short_records_are_errors() {
        assert_eq!(
            decode_event(&[0u8; 10]),
            Err(KernelDataError::Size {
                got: 10,
                expected: 56
            })
        );
    }

    #[test]
    fn events_decode() {
        let key = FlowKey {
            src: "10.0.0.1:1000".parse().unwrap(),
            dst: "10.0.0.2:80".parse().unwrap(),
            protocol: crate::model::Protocol::Tcp,
        };
        let raw = common::FlowEvent {
            key: key.to_kernel(),
            timestamp_ns: 42,
            kind: common::EVENT_TCP_ESTABLISHED,
            role: common::ROLE_SERVER,
            ..Default::default()
        };
        // SAFETY: viewing a repr(C) POD value as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw const raw).cast::<u8>(),
                std::mem::size_of::<common::FlowEvent>(),
            )
        };
        assert_eq!(
            decode_event(bytes),
            Ok(Observation::Event {
                key,
                kind: crate::model::EventKind::TcpEstablished,
                role: crate::model::Role::Server,
                at: 42
            })
        );
    }
}
