//! The packet path's own cost, per packet, without traffic around it (`cargo xtask bench
//! datapath`): the real `tc_ingress` program, verified and loaded with its real maps, run by the
//! kernel on synthetic frames with `BPF_PROG_TEST_RUN`, which reports its mean run time.
//!
//! Much steadier than a traffic benchmark on a shared machine, so it is the one to compare
//! changes to the program with; `bench capture` then says what they are worth in connections.
//!
//! Cases, each the median of 5 batches of 200,000 runs (a fresh flow is one run per frame):
//! * a TCP packet of a known flow, in the orientation its ports suggest (most packets);
//! * the same in the other orientation (a second hash lookup);
//! * a fresh TCP SYN: the insert of a new flow (one per connection);
//! * a UDP packet of a known flow;
//! * an IPv6 TCP packet of a known flow;
//! * a packet that is not tracked (ARP): parse and leave.
//!
//! Needs root. Environment: FLOWWATCH_BENCH_REPEAT (runs per batch, default 200,000).

use flowwatch::datapath::{self, Datapath, DatapathOptions};
use flowwatch_testkit::frames;
use frames::{ethernet, ipv4, ipv6, tcp, udp, ACK, SYN};

const BATCHES: usize = 5;

fn median(mut v: Vec<u32>) -> u32 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Mean ns per run of `frame`, the median over batches of `repeat` runs.
fn repeated(dp: &mut Datapath, frame: &[u8], repeat: u32) -> u32 {
    median(
        (0..BATCHES)
            .map(|_| dp.run_ingress_repeated(frame, repeat).expect("test run").1)
            .collect(),
    )
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP datapath benchmark: needs root");
        return;
    }
    let repeat: u32 = std::env::var("FLOWWATCH_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let (mut dp, _source) = datapath::load(&DatapathOptions {
        flows_max_entries: 1 << 20,
        ..DatapathOptions::default()
    })
    .expect("loading the datapath");

    let (client, server) = ([10, 251, 0, 1], [10, 251, 0, 2]);
    let (client6, server6) = (
        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    );
    // Known flows: each opened by its first packet.
    let syn = ipv4(client, server, 6, &tcp(40_000, 8080, SYN));
    let reply = ipv4(server, client, 6, &tcp(8080, 40_000, ACK));
    let forward = ipv4(client, server, 6, &tcp(40_000, 8080, ACK));
    dp.run_ingress_on(&syn).expect("test run");
    // A flow whose ports mislead: the initiator has the lower port, so its packets take the
    // second lookup.
    let low_syn = ipv4(client, server, 6, &tcp(1_000, 40_001, SYN));
    let low_forward = ipv4(client, server, 6, &tcp(1_000, 40_001, ACK));
    dp.run_ingress_on(&low_syn).expect("test run");
    let udp_frame = ipv4(client, server, 17, &udp(40_002, 53, b"query"));
    dp.run_ingress_on(&udp_frame).expect("test run");
    let syn6 = ipv6(client6, server6, 6, &tcp(40_003, 8080, SYN));
    let reply6 = ipv6(server6, client6, 6, &tcp(8080, 40_003, ACK));
    dp.run_ingress_on(&syn6).expect("test run");
    let arp = ethernet(0x0806, &[0u8; 28]);

    let cases: [(&str, &[u8]); 6] = [
        (
            "tcp, known flow, reply (likelier orientation first)",
            &reply,
        ),
        ("tcp, known flow, forward (service port first)", &forward),
        ("tcp, known flow, second orientation", &low_forward),
        ("udp, known flow", &udp_frame),
        ("tcp over ipv6, known flow, reply", &reply6),
        ("not tracked (arp)", &arp),
    ];
    for (name, frame) in cases {
        println!(
            "datapath: tc_ingress {name}: {} ns per packet",
            repeated(&mut dp, frame, repeat)
        );
    }

    // Fresh SYNs: each frame inserts a new flow, so one run per frame.
    let fresh: Vec<u32> = (0..20_000u32)
        .map(|i| {
            let port = 10_000 + (i % 50_000) as u16;
            let src = [10, 252, (i >> 16) as u8, (i >> 8) as u8];
            let frame = ipv4(src, server, 6, &tcp(port, 8080, SYN));
            dp.run_ingress_repeated(&frame, 1).expect("test run").1
        })
        .collect();
    println!(
        "datapath: tc_ingress tcp SYN, new flow (insert): {} ns per packet (median of {})",
        median(fresh.clone()),
        fresh.len()
    );
}
