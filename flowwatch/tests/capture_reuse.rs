//! A 5-tuple used again: a client that binds the same port for consecutive connections to the
//! same server, as a busy client's ephemeral ports come round again. Each connection must be
//! one established client-to-server record, however soon after the previous one it starts
//! (before the previous one's record is written, during its close linger, or right after it).
//!
//! Needs root; outside CI these tests skip with one line, under CI=true they must run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use flowwatch_testkit::agent::Agent;
use flowwatch_testkit::ledger::Ledger;
use flowwatch_testkit::netns::Node;
use flowwatch_testkit::privileged;
use flowwatch_testkit::traffic::{self, abort_on_close, accept_within, connect_from};

/// Pauses between consecutive connections on the one 5-tuple, in ms: within the close linger
/// (100 ms), around it, and across polls (200 ms in tests) and the records' writing.
const PAUSES_MS: [u64; 16] = [
    0, 0, 1, 2, 5, 10, 20, 50, 80, 100, 120, 150, 200, 300, 500, 0,
];

/// How the connections end.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// The server answers and closes first: TIME_WAIT stays on the server, whose next SYN on
    /// the 5-tuple the kernel accepts there.
    ServerFirst,
    /// The client aborts with a RST after the answer (SO_LINGER 0).
    ClientAborts,
}

fn each_connection_is_one_record(ending: Ending) {
    if !privileged::root_test("reused 5-tuples") {
        return;
    }
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let mut agent = Agent::start(&["--interfaces", &node.interface_glob()]);
    let addr = SocketAddr::new(server.ipv4.into(), 9000);
    let local = SocketAddr::new(client.ipv4.into(), 41000);
    let rounds = PAUSES_MS.len();

    let (tx, rx) = std::sync::mpsc::channel();
    let serving = server.run(move || {
        let listener = TcpListener::bind(addr).expect("bind");
        tx.send(()).unwrap();
        for _ in 0..rounds {
            let Ok(mut c) = accept_within(&listener, Duration::from_secs(5)) else {
                return;
            };
            let mut b = [0u8; 1];
            if c.read_exact(&mut b).is_ok() {
                let _ = c.write_all(&b);
            }
            if let Ending::ClientAborts = ending {
                let _ = c.read(&mut b); // the client's RST
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");

    let ledger = client
        .run(move || {
            let mut ledger = Ledger::default();
            for pause in PAUSES_MS {
                // The port is free once the previous connection's socket is gone; a bind can
                // race its last ACK by a moment.
                let deadline = Instant::now() + Duration::from_secs(3);
                let mut c = loop {
                    match connect_from(local, addr) {
                        Ok(c) => break c,
                        Err(e) => {
                            assert!(Instant::now() < deadline, "connecting from {local}: {e}");
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                };
                ledger.add(local);
                c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut b = [0u8; 1];
                c.write_all(&[1]).unwrap();
                c.read_exact(&mut b).unwrap();
                match ending {
                    Ending::ServerFirst => {
                        assert_eq!(c.read(&mut b).unwrap(), 0, "the server closes first");
                    }
                    Ending::ClientAborts => abort_on_close(&c).unwrap(),
                }
                drop(c);
                std::thread::sleep(Duration::from_millis(pause));
            }
            ledger
        })
        .join()
        .unwrap();
    serving.join().unwrap();
    assert_eq!(ledger.made_on(local), rounds as u32);

    // Every record of the last connection is out within its linger and a poll or two.
    let deadline = Instant::now() + Duration::from_secs(10);
    while traffic::records_to(&agent, addr).len() < rounds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (status, records) = agent.stop();
    assert!(status.success(), "{}", agent.stderr());
    let result = ledger.reconcile(addr, "established", &records);
    assert!(
        result.missing == 0 && result.extra == 0,
        "{ending:?}: {}\n{}\nkernel: {}",
        result.summary(),
        result.details(),
        agent
            .stderr()
            .lines()
            .filter(|l| l.contains("kernel losses"))
            .collect::<String>()
    );
    // Nothing else is made of them: no record of another orientation or outcome.
    let others: Vec<_> = records
        .iter()
        .filter(|r| {
            let ends = [&r["src"], &r["dst"]];
            ends.iter().any(|e| e["port"] == 41000) && r["outcome"] != "established"
        })
        .collect();
    assert!(others.is_empty(), "{ending:?}: other records: {others:#?}");
}

#[test]
fn consecutive_connections_on_one_five_tuple_with_time_wait_on_the_server() {
    each_connection_is_one_record(Ending::ServerFirst);
}

#[test]
fn consecutive_connections_on_one_five_tuple_each_aborted_by_the_client() {
    each_connection_is_one_record(Ending::ClientAborts);
}
