//! Which TCP connections were made, by their client-side address, against the flow log: every
//! connection must come back as exactly one record oriented client to server, established (or
//! failed, for a ledger of refused attempts).
//! A 5-tuple may carry several connections (the client's port is reused): it must then have as
//! many records.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use serde_json::Value;

/// Connections made to one server address, counted per client address (IP and port).
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    made: BTreeMap<SocketAddr, u32>,
}

/// What the flow log said of a ledger's connections.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Connections made.
    pub made: u64,
    /// Client-to-server records with the expected outcome of the ledger's 5-tuples (at most one
    /// per connection counted: see `extra`).
    pub reported: u64,
    /// Connections without a record, and records beyond the connections made (merged or
    /// split connections show up as one or the other).
    pub missing: u64,
    pub extra: u64,
    /// The 5-tuples with a difference: (client, made, established records, every record of
    /// the 5-tuple in either orientation, briefly), at most `EXAMPLES` of them.
    pub examples: Vec<(SocketAddr, u32, u32, Vec<String>)>,
}

const EXAMPLES: usize = 10;

impl Ledger {
    pub fn add(&mut self, client: SocketAddr) {
        *self.made.entry(client).or_default() += 1;
    }

    pub fn merge(&mut self, other: Ledger) {
        for (client, n) in other.made {
            *self.made.entry(client).or_default() += n;
        }
    }

    pub fn len(&self) -> u64 {
        self.made.values().map(|&n| u64::from(n)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.made.is_empty()
    }

    /// How many of a 5-tuple's connections the ledger holds.
    pub fn made_on(&self, client: SocketAddr) -> u32 {
        self.made.get(&client).copied().unwrap_or(0)
    }

    /// The ledger's connections to `server` against `records` (the whole flow log): each must
    /// be one record with `outcome` (`established`, or `failed` for a ledger of refused attempts).
    pub fn reconcile<R: Borrow<Value>>(
        &self,
        server: SocketAddr,
        outcome: &str,
        records: impl IntoIterator<Item = R>,
    ) -> Reconciled {
        let mut established: BTreeMap<SocketAddr, u32> = BTreeMap::new();
        let mut all: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
        for r in records {
            let r = r.borrow();
            if !r["protocol"]
                .as_str()
                .is_some_and(|p| p.eq_ignore_ascii_case("tcp"))
            {
                continue;
            }
            let (Some(src), Some(dst)) = (addr(&r["src"]), addr(&r["dst"])) else {
                continue;
            };
            let client = if dst == server {
                src
            } else if src == server {
                dst
            } else {
                continue;
            };
            if !self.made.contains_key(&client) {
                continue;
            }
            all.entry(client).or_default().push(brief(r, src == server));
            if dst == server && r["outcome"] == outcome {
                *established.entry(client).or_default() += 1;
            }
        }
        let mut out = Reconciled::default();
        for (&client, &made) in &self.made {
            let got = established.get(&client).copied().unwrap_or(0);
            out.made += u64::from(made);
            out.reported += u64::from(got.min(made));
            out.missing += u64::from(made.saturating_sub(got));
            out.extra += u64::from(got.saturating_sub(made));
            if got != made && out.examples.len() < EXAMPLES {
                let seen = all.remove(&client).unwrap_or_default();
                out.examples.push((client, made, got, seen));
            }
        }
        out
    }
}

impl Reconciled {
    /// One line: made, reported once, missing, extra.
    pub fn summary(&self) -> String {
        format!(
            "{} connections, {} reported, {} without a record, {} records too many",
            self.made, self.reported, self.missing, self.extra
        )
    }

    /// The examples, one 5-tuple a line.
    pub fn details(&self) -> String {
        self.examples
            .iter()
            .fold(String::new(), |mut out, (client, made, got, seen)| {
                let _ = writeln!(
                    out,
                    "  {client}: {made} made, {got} records as expected; all its records: [{}]",
                    seen.join("; ")
                );
                out
            })
    }
}

fn addr(end: &Value) -> Option<SocketAddr> {
    let ip = end["ip"].as_str()?.parse().ok()?;
    let port = u16::try_from(end["port"].as_u64()?).ok()?;
    Some(SocketAddr::new(ip, port))
}

/// A record in a few words: orientation, outcome, end reason, where seen, packets each way.
fn brief(r: &Value, reversed: bool) -> String {
    format!(
        "{}{} {} {} at {} pkts {}/{} {}..{}",
        if reversed { "REVERSED " } else { "" },
        r["outcome"].as_str().unwrap_or("?"),
        r["end_reason"].as_str().unwrap_or("?"),
        r["verdict"].as_str().unwrap_or(""),
        r["observed_at"],
        r["fwd"]["packets"],
        r["rev"]["packets"],
        r["start"].as_str().unwrap_or("?"),
        r["end"].as_str().unwrap_or("?"),
    )
}
