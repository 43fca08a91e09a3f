//! The TC program run by the kernel on synthetic frames (`BPF_PROG_TEST_RUN`): SCTP, which this
//! machine cannot produce (no SCTP module), and malformed frames, which must be counted and
//! survived. Real maps, real verifier, real program; only the packet is made up.

mod support;

use flowwatch::datapath::{self, DatapathOptions};
use flowwatch::model::{EventKind, Observation, Protocol, Role};
use flowwatch::source::FlowSource;
use support::privileged;

const TC_ACT_OK: u32 = 0;

fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(l4);
    ethernet(0x0800, &h)
}

fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(l4);
    ethernet(0x86DD, &h)
}

/// An SCTP common header and one chunk (INIT = 1, INIT ACK = 2, DATA = 0).
fn sctp(src_port: u16, dst_port: u16, chunk_type: u8) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]); // verification tag, checksum
    p.extend_from_slice(&[chunk_type, 0, 0, 20]);
    p.extend_from_slice(&[0u8; 16]);
    p
}

#[test]
fn sctp_associations_ipv4_and_ipv6_and_malformed_frames() {
    if !privileged::root_test("synthetic frames") {
        return;
    }
    let (mut dp, mut source) = datapath::load(&DatapathOptions::default()).expect("load");
    let a4 = [10, 250, 0, 1];
    let b4 = [10, 250, 0, 2];
    let mut a6 = [0u8; 16];
    a6[0] = 0xfd;
    a6[15] = 1;
    let mut b6 = a6;
    b6[15] = 2;

    // INIT from a, INIT ACK and DATA back and forth: one association, initiated by a.
    for frame in [
        ipv4(a4, b4, 132, &sctp(5000, 38412, 1)),
        ipv4(b4, a4, 132, &sctp(38412, 5000, 2)),
        ipv4(a4, b4, 132, &sctp(5000, 38412, 0)),
        ipv6(a6, b6, 132, &sctp(6000, 2905, 1)),
        ipv6(b6, a6, 132, &sctp(2905, 6000, 2)),
    ] {
        assert_eq!(dp.run_ingress_on(&frame).expect("test run"), TC_ACT_OK);
    }
    let before = source.losses().unwrap().truncated_packets;
    // Malformed: IPv4 and IPv6 announcing SCTP whose header is cut after two bytes. The
    // program must let them pass and count them as truncated.
    for frame in [ipv4(a4, b4, 132, &[0, 1]), ipv6(a6, b6, 132, &[0, 1])] {
        assert_eq!(dp.run_ingress_on(&frame).expect("test run"), TC_ACT_OK);
    }
    assert_eq!(source.losses().unwrap().truncated_packets - before, 2);

    let mut totals = Vec::new();
    source.read_totals(&mut totals).unwrap();
    let sctp: Vec<_> = totals
        .iter()
        .filter_map(|o| match o {
            Observation::Totals { key, counters, .. } if key.protocol == Protocol::Sctp => {
                Some((key.to_string(), counters.fwd_packets, counters.rev_packets))
            }
            _ => None,
        })
        .collect();
    assert_eq!(sctp.len(), 2, "{sctp:?}");
    assert!(
        sctp.contains(&("SCTP 10.250.0.1:5000 -> 10.250.0.2:38412".into(), 2, 1)),
        "{sctp:?}"
    );
    assert!(
        sctp.contains(&("SCTP [fd00::1]:6000 -> [fd00::2]:2905".into(), 1, 1)),
        "{sctp:?}"
    );

    // Forgetting frees the kernel entries in one batch, skipping keys the map does not hold.
    let sctp_keys: Vec<_> = totals
        .iter()
        .filter_map(|o| match o {
            Observation::Totals { key, .. } if key.protocol == Protocol::Sctp => Some(*key),
            _ => None,
        })
        .collect();
    let absent = sctp_keys[0].reversed();
    source
        .forget(&[sctp_keys[0], absent, sctp_keys[1]])
        .unwrap();
    let mut after = Vec::new();
    source.read_totals(&mut after).unwrap();
    assert!(
        !after.iter().any(
            |o| matches!(o, Observation::Totals { key, .. } if key.protocol == Protocol::Sctp)
        ),
        "{after:?}"
    );

    // New SCTP flows also went through the ring buffer, oriented from the initiator.
    let mut events = Vec::new();
    source.drain_events(&mut events).unwrap();
    let new_sctp: Vec<String> = events
        .iter()
        .filter_map(|o| match o {
            Observation::Event {
                key,
                kind: EventKind::NewFlow,
                role: Role::Wire,
                ..
            } if key.protocol == Protocol::Sctp => Some(key.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        new_sctp,
        vec![
            "SCTP 10.250.0.1:5000 -> 10.250.0.2:38412".to_string(),
            "SCTP [fd00::1]:6000 -> [fd00::2]:2905".to_string()
        ]
    );
}
