//! Encoding the registry: OpenMetrics 1.0 text, and the Prometheus text format 0.0.4.
//!
//! prometheus-client writes OpenMetrics. The Prometheus text format differs in ways its
//! parsers (and `promtool check metrics`) care about: no `# EOF`, no `# UNIT`, counters
//! described under their sample name (`foo_total`), `untyped` instead of `unknown`, and no
//! `info` / `gaugehistogram` / `stateset` types. [`encode_prometheus_text`] rewrites the
//! OpenMetrics output line by line accordingly.

use prometheus_client::registry::Registry;

/// Content type of [`encode_openmetrics`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of [`encode_prometheus_text`]'s output.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The OpenMetrics text exposition, `# EOF` included.
pub fn encode_openmetrics(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(64 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// The Prometheus text exposition format 0.0.4.
pub fn encode_prometheus_text(registry: &Registry) -> Result<String, std::fmt::Error> {
    Ok(openmetrics_to_prometheus_text(&encode_openmetrics(
        registry,
    )?))
}

/// Rewrites an OpenMetrics exposition (as prometheus-client writes it) to text format 0.0.4.
pub fn openmetrics_to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    // The metadata of the current family is buffered until its TYPE is known, because the
    // HELP line comes first and a counter's HELP must name `<family>_total`.
    let mut pending_help: Option<(&str, &str)> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, ty) = match ty {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_string(), "untyped"),
                "info" | "stateset" => (format!("{name}_info"), "gauge"),
                "gaugehistogram" => (name.to_string(), "histogram"),
                other => (name.to_string(), other),
            };
            if let Some((help_name, help)) = pending_help.take() {
                if help_name == rest.split(' ').next().unwrap_or("") {
                    out.push_str(&format!("# HELP {name} {help}\n"));
                }
            }
            out.push_str(&format!("# TYPE {name} {ty}\n"));
            continue;
        }
        if let Some((help_name, help)) = pending_help.take() {
            out.push_str(&format!("# HELP {help_name} {help}\n"));
        }
        // Samples: drop OpenMetrics exemplars (` # {...} v`) and `_created` samples.
        let sample = match line.find(" # ") {
            Some(i) if !line.starts_with('#') => &line[..i],
            _ => line,
        };
        if sample
            .split(['{', ' '])
            .next()
            .is_some_and(|n| n.ends_with("_created"))
        {
            continue;
        }
        out.push_str(sample);
        out.push('\n');
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
    fn info_becomes_gauge_and_exemplars_are_dropped() {
        let om = "# HELP b Build.\n# TYPE b info\nb_info{v=\"1\"} 1\n# TYPE c counter\nc_total 1 # {t=\"x\"} 1.0\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus_text(om),
            "# HELP b_info Build.\n# TYPE b_info gauge\nb_info{v=\"1\"} 1\n# TYPE c_total counter\nc_total 1\n"
        );
    }
}
