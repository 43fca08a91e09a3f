//! Encoding the registry: OpenMetrics 1.0 text, and the Prometheus text format 0.0.4.
//!
//! prometheus-client writes OpenMetrics. The Prometheus text format differs in ways its
//! parsers (and `promtool check metrics`) care about: no `# EOF`, no `# UNIT`, counters
//! described under their sample name (`foo_total`), `untyped` instead of `unknown`, and no
//! `info` / `gaugehistogram` / `stateset` types. [`encode_prometheus_text`] rewrites the
//! OpenMetrics output line by line accordingly.

use std::fmt::Write as _;
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

/// The Prometheus text exposition format 0.0.4, converted while prometheus-client writes (no
/// second copy of the exposition).
pub fn encode_prometheus_text(registry: &Registry) -> Result<String, std::fmt::Error> {
    let hint = LAST_LEN.load(Ordering::Relaxed).max(64 * 1024);
    let mut w = TextWriter::new(String::with_capacity(hint + hint / 8));
    prometheus_client::encoding::text::encode(&mut w, registry)?;
    let out = w.finish();
    LAST_LEN.store(out.len(), Ordering::Relaxed);
    Ok(out)
}

/// Rewrites an OpenMetrics exposition (as prometheus-client writes it) to text format 0.0.4.
pub fn openmetrics_to_prometheus_text(om: &str) -> String {
    let mut w = TextWriter::new(String::with_capacity(om.len()));
    // Writing to a String cannot fail.
    let _ = std::fmt::Write::write_str(&mut w, om);
    w.finish()
}

/// A `fmt::Write` that turns OpenMetrics into the Prometheus text format on the fly. Sample
/// lines pass straight through; metadata lines (`#...`) are buffered and rewritten.
struct TextWriter {
    out: String,
    /// The metadata line being written (only while `in_meta`).
    meta: String,
    at_line_start: bool,
    in_meta: bool,
    /// A HELP line waits for its TYPE line: a counter's HELP must name `<family>_total`.
    pending_help: Option<(String, String)>,
}

impl TextWriter {
    fn new(out: String) -> TextWriter {
        TextWriter {
            out,
            meta: String::new(),
            at_line_start: true,
            in_meta: false,
            pending_help: None,
        }
    }

    fn flush_help(&mut self) {
        if let Some((name, help)) = self.pending_help.take() {
            let _ = writeln!(self.out, "# HELP {name} {help}");
        }
    }

    fn metadata_line(&mut self) {
        let line = std::mem::take(&mut self.meta);
        if line == "# EOF" || line.starts_with("# UNIT ") {
            return;
        }
        if let Some(body) = line.strip_prefix("# HELP ") {
            self.flush_help();
            let (name, help) = body.split_once(' ').unwrap_or((body, ""));
            self.pending_help = Some((name.to_string(), help.to_string()));
            return;
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
            if let Some((help_name, help)) = self.pending_help.take() {
                let help_name = if help_name == family {
                    name.clone()
                } else {
                    help_name
                };
                let _ = writeln!(self.out, "# HELP {help_name} {help}");
            }
            let _ = writeln!(self.out, "# TYPE {name} {ty}");
            return;
        }
        self.flush_help();
        self.out.push_str(&line);
        self.out.push('\n');
    }

    fn finish(mut self) -> String {
        if self.in_meta && !self.meta.is_empty() {
            self.metadata_line();
        }
        self.flush_help();
        if !self.at_line_start {
            self.out.push('\n');
        }
        self.out
    }
}

impl std::fmt::Write for TextWriter {
    fn write_str(&mut self, mut s: &str) -> std::fmt::Result {
        while !s.is_empty() {
            if self.at_line_start {
                self.in_meta = s.starts_with('#');
                if !self.in_meta {
                    // Samples read the same in both formats: this catalogue registers no
                    // exemplars and sets no created timestamps.
                    self.flush_help();
                }
                self.at_line_start = false;
            }
            let (chunk, ends_line) = match s.find('\n') {
                Some(i) => (&s[..i], true),
                None => (s, false),
            };
            s = if ends_line { &s[chunk.len() + 1..] } else { "" };
            if self.in_meta {
                self.meta.push_str(chunk);
                if ends_line {
                    self.metadata_line();
                }
            } else {
                self.out.push_str(chunk);
                if ends_line {
                    self.out.push('\n');
                }
            }
            self.at_line_start = ends_line;
        }
        Ok(())
    }
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

    #[test]
    fn the_conversion_does_not_depend_on_how_the_encoder_splits_its_writes() {
        use std::fmt::Write;
        let om = "# HELP x Things.\n# TYPE x counter\nx_total{a=\"b\"} 3\nx_total{a=\"c\"} 4\n\
                  # HELP g Level.\n# TYPE g gauge\n# UNIT g ratio\ng 0.5\n# EOF\n";
        let whole = openmetrics_to_prometheus_text(om);
        for size in 1..8 {
            let mut w = TextWriter::new(String::new());
            let chars: Vec<char> = om.chars().collect();
            for chunk in chars.chunks(size) {
                w.write_str(&chunk.iter().collect::<String>()).unwrap();
            }
            assert_eq!(w.finish(), whole, "chunks of {size}");
        }
    }
}
