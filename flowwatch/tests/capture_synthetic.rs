//! The TC program run by the kernel on synthetic frames (`BPF_PROG_TEST_RUN`): SCTP, which this
//! machine cannot produce (no SCTP module), and malformed frames, which must be counted and
//! survived. Real maps, real verifier, real program; only the packet is made up.

use flowwatch::datapath::{self, DatapathOptions};
use flowwatch::model::{EventKind, Observation, Protocol, Role};
use flowwatch::source::FlowSource;
use flowwatch_testkit::frames::{ipv4, ipv4_with_options, ipv6, sctp, tcp, ACK, NOPS, SYN};
use flowwatch_testkit::privileged;

/// The programs only observe: they answer "next" (TC_ACT_UNSPEC, -1), never "pass".
const NEXT: u32 = -1i32 as u32;

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
        assert_eq!(dp.run_ingress_on(&frame).expect("test run"), NEXT);
    }
    let before = source.losses().unwrap().truncated_packets;
    // Malformed: IPv4 and IPv6 announcing SCTP whose header is cut after two bytes. The
    // program must let them pass and count them as truncated.
    for frame in [ipv4(a4, b4, 132, &[0, 1]), ipv6(a6, b6, 132, &[0, 1])] {
        assert_eq!(dp.run_ingress_on(&frame).expect("test run"), NEXT);
    }
    assert_eq!(source.losses().unwrap().truncated_packets - before, 2);

    // No flow can be given a fragment after the first (no ports): IPv4, or IPv6 behind a
    // fragment header. Counted as unattributed, not dropped silently. A first fragment has its
    // ports and counts in its flow, as does UDP behind a hop-by-hop header (the walk finds it);
    // ICMP is not tracked, so neither counted nor unattributed (MLD is ICMPv6 behind
    // hop-by-hop: every pod sends it).
    let before = source.losses().unwrap();
    let later_fragment = {
        let mut f = ipv4(a4, b4, 17, &[0u8; 16]);
        f[14 + 6..14 + 8].copy_from_slice(&0x00b9u16.to_be_bytes()); // offset 1480
        f
    };
    let mut first_fragment = ipv4(
        a4,
        b4,
        17,
        &flowwatch_testkit::frames::udp(7000, 53, &[0u8; 8]),
    );
    first_fragment[14 + 6..14 + 8].copy_from_slice(&0x2000u16.to_be_bytes()); // more fragments
    let udp_behind_hop_by_hop = {
        let mut l4 = vec![17, 0, 1, 4, 0, 0, 0, 0]; // next UDP, 8 bytes, PadN
        l4.extend(flowwatch_testkit::frames::udp(7001, 53, &[0u8; 8]));
        ipv6(a6, b6, 0, &l4)
    };
    // Fragment header: next UDP, offset 185 (1480 bytes), identification 1.
    let v6_later_fragment = ipv6(a6, b6, 44, &[17, 0, 0x05, 0xc8, 0, 0, 0, 1, 0, 0, 0, 0]);
    let mld = ipv6(a6, b6, 0, &[58, 0, 5, 2, 0, 0, 1, 0, 143, 0, 0, 0]);
    let icmp_later_fragment = {
        let mut f = ipv4(a4, b4, 1, &[0u8; 16]);
        f[14 + 6..14 + 8].copy_from_slice(&0x00b9u16.to_be_bytes());
        f
    };
    for frame in [
        later_fragment,
        first_fragment,
        udp_behind_hop_by_hop,
        v6_later_fragment,
        mld,
        icmp_later_fragment,
    ] {
        assert_eq!(dp.run_ingress_on(&frame).expect("test run"), NEXT);
    }
    let after = source.losses().unwrap();
    assert_eq!(after.unattributed_packets - before.unattributed_packets, 2);
    assert_eq!(after.truncated_packets, before.truncated_packets);
    assert_eq!(
        after.packets - before.packets,
        2,
        "the first fragment and the UDP behind hop-by-hop"
    );
    // And the walk found the right ports: a flow 7001 -> 53 over IPv6.
    let mut walked = Vec::new();
    source.read_totals(&mut walked).unwrap();
    assert!(
        walked
            .iter()
            .any(|o| matches!(o, Observation::Totals { key, counters, .. }
            if key.src.port() == 7001 && key.dst.port() == 53 && key.src.is_ipv6()
                && counters.fwd_packets == 1)),
        "{walked:?}"
    );

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

/// The TC program's TCP paths: a SYN creates its flow directly (and a retransmitted one adds to
/// it), packets are matched in both orientations whichever the program tries first (an
/// initiator on a low port, a responder on a high one), a SYN-ACK seen first is a reply, a
/// flow first seen mid-stream is oriented by its ports, and IPv4 headers with options are read
/// through the slow path. Exact counts and flags per flow.
#[test]
fn tcp_orientation_and_header_lengths() {
    if !privileged::root_test("synthetic TCP frames") {
        return;
    }
    let (mut dp, mut source) = datapath::load(&DatapathOptions::default()).expect("load");
    let (a, b, c, d) = (
        [10, 251, 0, 1],
        [10, 251, 0, 2],
        [10, 251, 0, 3],
        [10, 251, 0, 4],
    );
    for frame in [
        // a:80 initiates to b:40000 (against the port heuristic); its SYN is retransmitted
        ipv4(a, b, 6, &tcp(80, 40000, SYN)),
        ipv4(a, b, 6, &tcp(80, 40000, SYN)),
        ipv4(b, a, 6, &tcp(40000, 80, SYN | ACK)),
        ipv4(a, b, 6, &tcp(80, 40000, ACK)),
        ipv4(b, a, 6, &tcp(40000, 80, ACK)),
        // c:50000 to d:443, every header with IPv4 options
        ipv4_with_options(c, d, 6, &NOPS, &tcp(50000, 443, SYN)),
        ipv4_with_options(d, c, 6, &NOPS, &tcp(443, 50000, SYN | ACK)),
        ipv4_with_options(c, d, 6, &NOPS, &tcp(50000, 443, ACK)),
        // first packet seen is d:8080's SYN-ACK to c:33000: c initiated
        ipv4(d, c, 6, &tcp(8080, 33000, SYN | ACK)),
        ipv4(c, d, 6, &tcp(33000, 8080, ACK)),
        // first packet seen is a mid-stream ACK from a:8443 to c:51000 (a connection older
        // than the agent): oriented by its ports, c initiated
        ipv4(a, c, 6, &tcp(8443, 51000, ACK)),
    ] {
        assert_eq!(dp.run_ingress_on(&frame).expect("test run"), NEXT);
    }
    let mut totals = Vec::new();
    source.read_totals(&mut totals).unwrap();
    let mut flows: Vec<(String, u64, u64, u8, u8)> = totals
        .iter()
        .filter_map(|o| match o {
            Observation::Totals {
                key,
                counters,
                fwd_tcp_flags,
                rev_tcp_flags,
                ..
            } if key.protocol == Protocol::Tcp => Some((
                key.to_string(),
                counters.fwd_packets,
                counters.rev_packets,
                *fwd_tcp_flags,
                *rev_tcp_flags,
            )),
            _ => None,
        })
        .collect();
    flows.sort();
    assert_eq!(
        flows,
        vec![
            (
                "TCP 10.251.0.1:80 -> 10.251.0.2:40000".into(),
                3,
                2,
                SYN | ACK,
                SYN | ACK
            ),
            (
                "TCP 10.251.0.3:33000 -> 10.251.0.4:8080".into(),
                1,
                1,
                ACK,
                SYN | ACK
            ),
            (
                "TCP 10.251.0.3:50000 -> 10.251.0.4:443".into(),
                2,
                1,
                SYN | ACK,
                SYN | ACK
            ),
            (
                "TCP 10.251.0.3:51000 -> 10.251.0.1:8443".into(),
                0,
                1,
                0,
                ACK
            ),
        ]
    );
    assert_eq!(source.losses().unwrap().truncated_packets, 0);
}
