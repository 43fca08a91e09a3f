//! Parsers for flag values that clap cannot check alone. Each refuses a value that cannot work
//! with one line saying what is wrong and what would be right.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// The kernel's limit on an interface name (IFNAMSIZ less the terminating NUL).
pub const MAX_INTERFACE_NAME: usize = 15;

/// One `--interfaces` entry: a name, a glob with `*`, or either after `!` (an exclusion).
pub fn parse_interface_pattern(s: &str) -> Result<String, String> {
    let p = s.trim();
    if p.is_empty() {
        return Err(
            "empty interface name: give names or globs, comma-separated (e.g. veth*,eth0)".into(),
        );
    }
    let name = p.strip_prefix('!').unwrap_or(p);
    if name.is_empty() {
        return Err(
            "'!' alone excludes nothing: write !name or !glob* (e.g. !vethwe-bridge)".into(),
        );
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || *c == '/' || *c == ':' || *c == '!')
    {
        return Err(format!(
            "{p:?} cannot match an interface: interface names hold no {c:?}"
        ));
    }
    let literal = name.chars().filter(|c| *c != '*').count();
    if literal > MAX_INTERFACE_NAME {
        return Err(format!(
            "{p:?} cannot match an interface: names are at most {MAX_INTERFACE_NAME} characters"
        ));
    }
    Ok(p.to_string())
}

/// One `--ignore-cidrs` entry: `address/prefix`, or a bare address for that one host.
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| {
        format!("{addr:?} is not an IP address: give a network as address/prefix (e.g. 10.0.0.0/8)")
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    let len = match prefix {
        None => max,
        Some(p) => {
            let len: u32 = p.parse().map_err(|_| {
                format!("prefix length {p:?} of {s} is not a number: give 0..={max} for an {family} network")
            })?;
            if len > max {
                return Err(format!(
                    "prefix length {len} of {s} is out of range 0..={max} for an {family} network"
                ));
            }
            len
        }
    };
    ipnet::IpNet::new(ip, len as u8).map_err(|e| format!("{s}: {e}"))
}

/// `--listen`: `address:port`, or `host:port` with a host name resolved now (the first
/// address it resolves to).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!(
            "{s:?} has no port: give address:port (e.g. 0.0.0.0:9810 or [::]:9810)"
        ));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port:?} is not a number from 0 to 65535"))?;
    if host.is_empty() {
        return Err(format!(
            "{s:?} has no address: give address:port (e.g. 0.0.0.0:{port})"
        ));
    }
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!(
            "{s:?}: write an IPv6 address in brackets (e.g. [::1]:{port})"
        ));
    }
    let mut addrs = (host, port).to_socket_addrs().map_err(|e| {
        format!("cannot resolve {host:?} ({e}): give an IP address (e.g. 0.0.0.0:{port}) or a name this node resolves")
    })?;
    addrs.next().ok_or_else(|| {
        format!("{host:?} resolves to no address: give an IP address (e.g. 0.0.0.0:{port})")
    })
}

/// A whole number of seconds within `min..=max`, saying what the bounds mean.
pub fn parse_secs_within(s: &str, min: u64, max: u64, what: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of seconds: give {min}..={max}"))?;
    if !(min..=max).contains(&n) {
        return Err(format!(
            "{n} is out of range {min}..={max} seconds ({what})"
        ));
    }
    Ok(n)
}

/// `--exit-after-secs`: at least a second, at most a year.
pub fn parse_exit_after_secs(s: &str) -> Result<u64, String> {
    parse_secs_within(
        s,
        1,
        365 * 86_400,
        "at least 1; omit the flag to run until SIGTERM",
    )
}

/// Longest series TTL: 30 days (a series idle for longer is long gone from any dashboard).
pub const MAX_SERIES_TTL_SECS: u64 = 30 * 86_400;

/// `--series-ttl-secs`: from a second to 30 days.
pub fn parse_series_ttl_secs(s: &str) -> Result<u64, String> {
    parse_secs_within(
        s,
        1,
        MAX_SERIES_TTL_SECS,
        "how long an edge series may go without update; 900 by default",
    )
}

/// A series budget: at least 1, at most ten million.
pub fn parse_series_budget(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of series: give 1..=10000000"))?;
    if !(1..=10_000_000).contains(&n) {
        return Err(format!("{n} is out of range 1..=10000000 series"));
    }
    Ok(n)
}

/// `--otlp-endpoint`: an OTLP/HTTP URL (checked here so a typo stops the agent at start).
pub fn parse_otlp_endpoint(s: &str) -> Result<String, String> {
    crate::export::otlp::parse_endpoint(s.trim()).map(|_| s.trim().to_string())
}

/// One `--label-allowlist` entry: a label key as the API server accepts it (a key no pod can
/// carry would silently copy nothing).
pub fn parse_label_key(s: &str) -> Result<String, String> {
    let key = s.trim();
    crate::inventory::label_rules::check_key(key)
        .map_err(|why| format!("{why}: give a key such as app or app.kubernetes.io/name"))?;
    Ok(key.to_string())
}

/// Clap's rendering of a bad value, in one line: its first line (what is wrong), plus the
/// accepted values where clap lists them on a line of their own (what would be right), without
/// the usage footer.
pub fn one_line_error(rendered: &str) -> String {
    let mut lines = rendered.lines();
    let mut line = lines.next().unwrap_or("error: invalid value").to_string();
    if let Some(values) = lines.find_map(|l| {
        l.trim()
            .strip_prefix("[possible values: ")
            .and_then(|v| v.strip_suffix(']'))
    }) {
        let _ = write!(line, ": possible values are {values}");
    }
    line
}

/// Clap's rendering of an unexpected argument that starts with a single `-` (clap takes it for
/// a flag, as in `--poll-interval-ms -1` or `--label-allowlist -a`), in one line saying why it
/// is refused; `None` for other unexpected arguments (a mistyped `--flag`: clap's own message,
/// with its suggestion, stands).
pub fn dash_value_error(rendered: &str) -> Option<String> {
    let first = rendered.lines().next()?;
    let arg = first
        .strip_prefix("error: unexpected argument '")?
        .strip_suffix("' found")?;
    let rest = arg.strip_prefix('-').filter(|r| !r.starts_with('-'))?;
    Some(if rest.parse::<f64>().is_ok() {
        format!(
            "{first}: no flag takes a negative number (counts, sizes and durations start at 0 or 1)"
        )
    } else {
        format!("{first}: a value starting with '-' is taken for a flag; give it as --flag={arg}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_value_among_possible_ones_is_one_line_naming_them() {
        let rendered = "error: invalid value 'xml' for '--log-format <LOG_FORMAT>'\n  [possible values: text, json]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line_error(rendered),
            "error: invalid value 'xml' for '--log-format <LOG_FORMAT>': possible values are text, json"
        );
        let plain = "error: invalid value '0' for '--x': 0 is not in 1..=2\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line_error(plain),
            "error: invalid value '0' for '--x': 0 is not in 1..=2"
        );
    }

    #[test]
    fn a_value_starting_with_a_dash_is_one_line() {
        let line = dash_value_error("error: unexpected argument '-a' found\n\nUsage: x\n").unwrap();
        assert!(line.ends_with("give it as --flag=-a"), "{line}");
    }

    #[test]
    fn a_negative_number_is_one_line() {
        let rendered = "error: unexpected argument '-1' found\n\n  tip: to pass '-1' as a value, use '-- -1'\n\nUsage: flowwatch run [OPTIONS]\n";
        let line = dash_value_error(rendered).unwrap();
        assert!(
            line.starts_with(
                "error: unexpected argument '-1' found: no flag takes a negative number"
            ),
            "{line}"
        );
        assert_eq!(
            dash_value_error("error: unexpected argument '--nope' found\n"),
            None
        );
    }

    #[test]
    fn label_allowlist_keys_are_checked_as_the_api_server_does() {
        assert_eq!(parse_label_key("app").unwrap(), "app");
        assert_eq!(
            parse_label_key("app.kubernetes.io/name").unwrap(),
            "app.kubernetes.io/name"
        );
        let e = parse_label_key("bad key!").unwrap_err();
        assert!(
            e.contains("invalid label key") && e.contains("app.kubernetes.io/name"),
            "{e}"
        );
        assert!(parse_label_key("").is_err());
        assert!(parse_label_key("Bad_Prefix!/x").is_err());
    }

    #[test]
    fn cidr_prefix_lengths_are_checked_per_family() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_cidr("fd00::/8").unwrap().to_string(), "fd00::/8");
        let e = parse_cidr("10.0.0.0/40").unwrap_err();
        assert!(e.contains("out of range 0..=32"), "{e}");
        let e = parse_cidr("fd00::/129").unwrap_err();
        assert!(e.contains("0..=128"), "{e}");
        assert!(parse_cidr("10.0.0.0/x")
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_cidr("ten/8")
            .unwrap_err()
            .contains("not an IP address"));
    }

    #[test]
    fn interface_patterns_that_cannot_match_are_refused() {
        assert_eq!(parse_interface_pattern("veth*").unwrap(), "veth*");
        assert_eq!(
            parse_interface_pattern("!vethwe-bridge").unwrap(),
            "!vethwe-bridge"
        );
        assert!(parse_interface_pattern("").unwrap_err().contains("empty"));
        assert!(parse_interface_pattern("  ").unwrap_err().contains("empty"));
        assert!(parse_interface_pattern("!")
            .unwrap_err()
            .contains("excludes nothing"));
        assert!(parse_interface_pattern("a-very-long-interface").is_err());
        assert!(parse_interface_pattern("eth 0").is_err());
    }

    #[test]
    fn listen_addresses_resolve_or_say_why_not() {
        assert_eq!(
            parse_listen("127.0.0.1:9810").unwrap(),
            "127.0.0.1:9810".parse().unwrap()
        );
        let local = parse_listen("localhost:9810").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 9810);
        assert!(parse_listen("0.0.0.0").unwrap_err().contains("no port"));
        assert!(parse_listen("0.0.0.0:99999").unwrap_err().contains("port"));
        assert!(parse_listen(":9810").unwrap_err().contains("no address"));
        assert!(parse_listen("no-such-host.invalid:9810")
            .unwrap_err()
            .contains("cannot resolve"));
    }

    #[test]
    fn seconds_outside_their_range_are_refused() {
        assert_eq!(parse_exit_after_secs("5"), Ok(5));
        assert!(parse_exit_after_secs("0").unwrap_err().contains("1..="));
        assert!(parse_series_ttl_secs("18446744073709551615").is_err());
        assert!(parse_series_ttl_secs("99999999999999999999999").is_err());
        assert_eq!(parse_series_ttl_secs("900"), Ok(900));
    }
}
