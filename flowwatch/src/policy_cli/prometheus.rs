//! Reads the agents' edge series from Prometheus's HTTP query API (a thin edge: one HTTP/1.0
//! GET over a TCP connection, the answer decoded by `whatif::Edges::add_prometheus_answer`).
//! Plain `http://` only; for a TLS-fronted Prometheus, use a port-forward.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::whatif::usage::{prometheus_rule_queries, Counted};
use crate::whatif::{
    prometheus_edges_query, prometheus_history_gap_query, Edges, PrometheusSource,
};

/// How long connecting and each read or write may take.
const TIMEOUT: Duration = Duration::from_mins(1);
/// The largest answer read (edge series of a large cluster fit many times over).
const MAX_BODY: u64 = 1 << 30;

/// A Prometheus HTTP API: `http://host:port[/prefix]`.
struct Api {
    url: String,
    /// `host:port` to connect to.
    target: String,
    /// The `Host` header.
    authority: String,
    prefix: String,
}

impl Api {
    fn parse(url: &str) -> Result<Api, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "--prometheus {url:?}: only http:// URLs are supported (use a port-forward for https)"
            )
        })?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("--prometheus {url:?}: no host"));
        }
        let target = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !authority.ends_with(']')
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Api {
            url: url.to_string(),
            target,
            authority: authority.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// An instant query at the server's now: the decoded JSON answer.
    fn query(&self, promql: &str) -> Result<serde_json::Value, String> {
        let path = format!("{}/api/v1/query?query={}", self.prefix, urlencode(promql));
        let body =
            get(&self.target, &self.authority, &path).map_err(|e| format!("{}: {e}", self.url))?;
        serde_json::from_slice(&body)
            .map_err(|e| format!("{}: the answer is not JSON: {e}", self.url))
    }
}

/// Queries `url` (`http://host:port[/prefix]`) for the edges of the last `range_secs`
/// seconds and adds them to `edges`. Reads the recorded edge history where it covers the
/// window (see [`prometheus_history_gap_query`]), else the raw series; says which.
pub fn read_edges(
    url: &str,
    range_secs: u64,
    edges: &mut Edges,
) -> Result<PrometheusSource, String> {
    let api = Api::parse(url)?;
    let source = match prometheus_history_gap_query(range_secs) {
        None => PrometheusSource::Raw,
        Some(gap) => {
            let answer = api.query(&gap)?;
            let result = answer
                .pointer("/data/result")
                .and_then(serde_json::Value::as_array)
                .ok_or_else(|| format!("{url}: an answer without data.result: {answer}"))?;
            if result.is_empty() {
                PrometheusSource::History
            } else {
                PrometheusSource::Raw
            }
        }
    };
    let answer = api.query(&prometheus_edges_query(range_secs, source))?;
    edges.add_prometheus_answer(&answer)?;
    Ok(source)
}

/// Queries `url` for what the agents' rule counters (`flowwatch_policy_rule_*`) say about the
/// last `range_secs` seconds (empty when Prometheus has none of those series).
pub fn read_rule_counters(url: &str, range_secs: u64) -> Result<Counted, String> {
    let api = Api::parse(url)?;
    let [a, b, c] = prometheus_rule_queries(range_secs);
    let answers = [api.query(&a)?, api.query(&b)?, api.query(&c)?];
    Counted::from_answers(&answers)
}

fn get(target: &str, host: &str, path: &str) -> Result<Vec<u8>, String> {
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("resolving {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolving {target}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connecting: {e}"))?;
    let io = |e: std::io::Error| format!("reading the answer: {e}");
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    // HTTP/1.0: the body ends when the connection closes, never chunked.
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\nUser-Agent: flowwatch\r\n\r\n"
    )
    .map_err(|e| format!("sending the query: {e}"))?;
    let mut raw = Vec::new();
    stream.take(MAX_BODY).read_to_end(&mut raw).map_err(io)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("an answer without HTTP headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", head.lines().next()))?;
    let body = raw[split + 4..].to_vec();
    // Prometheus explains a bad query in a JSON body (400/422): let the caller read it.
    if status != 200 && !head.to_ascii_lowercase().contains("application/json") {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    Ok(body)
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char);
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_read() {
        let mut edges = Edges::default();
        let e = read_edges("https://prom:9090", 3600, &mut edges).unwrap_err();
        assert!(e.contains("only http://"), "{e}");
        assert_eq!(urlencode("a b[7d]"), "a%20b%5B7d%5D");
    }
}
