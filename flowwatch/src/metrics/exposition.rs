//! Encoding the registry: OpenMetrics 1.0 text, and the Prometheus text format 0.0.4.
//!
//! prometheus-client writes OpenMetrics. The Prometheus text format differs in ways its
//! parsers (and `promtool check metrics`) care about: no `# EOF`, no `# UNIT`, counters
//! described under their sample name (`foo_total`), `untyped` instead of `unknown`, and no
//! `info` / `gaugehistogram` / `stateset` types. [`encode_prometheus_text`] rewrites the
//! OpenMetrics output line by line accordingly.

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::registry::Registry;

static LAST_LEN: AtomicUsize = AtomicUsize::new(0);

/// Content type of [`encode_openmetrics`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of [`encode_prometheus_text`]'s output.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The OpenMetrics text exposition, `# EOF` included.
pub fn encode_openmetrics(registry: &Registry) -> Result<String, std::fmt::Error> {
    // Start at the previous exposition's size: a big exposition is not regrown from scratch.
    let hint = LAST_LEN.load(Ordering::Relaxed).max(64 * 1024);
    let mut out = String::with_capacity(hint + hint / 8);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    LAST_LEN.store(out.len(), Ordering::Relaxed);
    Ok(out)
}

/// The Prometheus text exposition format 0.0.4.
pub fn encode_prometheus_text(registry: &Registry) -> Result<String, std::fmt::Error> {
    Ok(openmetrics_to_prometheus_text(&encode_openmetrics(
        registry,
    )?))
}

/// Where the next line starting with `#` begins (or the end). Searches for `#` (memchr-fast)
/// rather than for "\n#": sample lines rarely contain `#` at all.
fn next_metadata_line(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut from = 0;
    while let Some(i) = s[from..].find('#') {
        let at = from + i;
        if at > 0 && bytes[at - 1] == b'\n' {
            return at;
        }
        from = at + 1;
    }
    s.len()
}

/// Rewrites an OpenMetrics exposition (as prometheus-client writes it) to text format 0.0.4.
///
/// Only metadata lines change; runs of sample lines are copied as one block.
pub fn openmetrics_to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    // The metadata of the current family is buffered until its TYPE is known, because the
    // HELP line comes first and a counter's HELP must name `<family>_total`.
    let mut pending_help: Option<(&str, &str)> = None;
    let mut rest = om;
    while !rest.is_empty() {
        if !rest.starts_with('#') {
            // A block of samples, up to the next metadata line.
            let end = next_metadata_line(rest);
            let (block, tail) = rest.split_at(end);
            rest = tail;
            if let Some((help_name, help)) = pending_help.take() {
                out.push_str(&format!("# HELP {help_name} {help}\n"));
            }
            // Samples read the same in both formats: this catalogue registers no exemplars
            // and sets no created timestamps (which OpenMetrics would add as `_created`).
            out.push_str(block);
            if !block.ends_with('\n') {
                out.push('\n');
            }
            continue;
        }
        let (line, tail) = match rest.find('\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        rest = tail;
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(body) = line.strip_prefix("# HELP ") {
            if let Some((help_name, help)) = pending_help.take() {
                out.push_str(&format!("# HELP {help_name} {help}\n"));
            }
            pending_help = Some(body.split_once(' ').unwrap_or((body, "")));
            continue;
        }
        if let Some(body) = line.strip_prefix("# TYPE ") {
            let (family, ty) = body.split_once(' ').unwrap_or((body, "untyped"));
            let (name, ty) = match ty {
                "counter" => (format!("{family}_total"), "counter"),
                "unknown" => (family.to_string(), "untyped"),
                "info" => (format!("{family}_info"), "gauge"),
                "stateset" => (family.to_string(), "gauge"),
                "gaugehistogram" => (family.to_string(), "histogram"),
                other => (family.to_string(), other),
            };
            if let Some((help_name, help)) = pending_help.take() {
                let help_name = if help_name == family {
                    name.as_str()
                } else {
                    help_name
                };
                out.push_str(&format!("# HELP {help_name} {help}\n"));
            }
            out.push_str(&format!("# TYPE {name} {ty}\n"));
            continue;
        }
        if let Some((help_name, help)) = pending_help.take() {
            out.push_str(&format!("# HELP {help_name} {help}\n"));
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some((help_name, help)) = pending_help.take() {
        out.push_str(&format!("# HELP {help_name} {help}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_described_under_their_sample_name_and_eof_is_dropped() {
        let om = "# HELP flowwatch_x Things.\n# TYPE flowwatch_x counter\nflowwatch_x_total{a=\"b\"} 3\n\
                  # HELP flowwatch_y Level.\n# TYPE flowwatch_y gauge\n# UNIT flowwatch_y ratio\nflowwatch_y 0.5\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus_text(om),
            "# HELP flowwatch_x_total Things.\n# TYPE flowwatch_x_total counter\nflowwatch_x_total{a=\"b\"} 3\n\
             # HELP flowwatch_y Level.\n# TYPE flowwatch_y gauge\nflowwatch_y 0.5\n"
        );
    }

    #[test]
    fn info_becomes_gauge_and_samples_are_copied_verbatim() {
        let om = "# HELP b Build.\n# TYPE b info\nb_info{v=\"1\"} 1\n# TYPE c counter\nc_total{l=\"a # b\"} 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus_text(om),
            "# HELP b_info Build.\n# TYPE b_info gauge\nb_info{v=\"1\"} 1\n# TYPE c_total counter\nc_total{l=\"a # b\"} 1\n"
        );
    }
}
