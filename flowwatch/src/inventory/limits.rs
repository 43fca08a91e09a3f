//! Bounds on snapshot text, enforced in one linear pass before a parser sees it.
//!
//! The YAML parser takes time quadratic in the nesting depth of flow collections (`[[[...`,
//! `{a: {a: ...`) and checks its depth limit only after it has read a whole document: a 117 KB
//! document held a reload up for 31 s. So, before parsing:
//!
//! - a flow collection (or JSON array or object) that opens deeper than [`MAX_NESTING`] is
//!   replaced, up to its matching close, by a marker string: the object holding it is reported
//!   (with the field path) and skipped, the rest of the file is loaded; one that never closes
//!   fails the file at once;
//! - a plain number out of range (an integer beyond 64 bits, a float beyond `f64`) is replaced
//!   the same way: a per-field error, not a failed file;
//! - a leading UTF-8 byte order mark is dropped.
//!
//! The markers start with U+0001, which no Kubernetes object holds; the loader turns a marker it
//! meets into an error for its object ([`marker_reason`]).
//!
//! The pass follows YAML's lexical rules as far as they matter for brackets and numbers:
//! quoted scalars, comments, block scalars (`|`, `>`), and brackets that start a collection
//! only where a value can start (a `[` inside a plain scalar such as `a: x[0]` is text).

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

/// Deepest nesting of flow collections kept (a Kubernetes object nests about 12 deep; the
/// parsers' own limit is 128).
pub const MAX_NESTING: usize = 64;

/// Largest snapshot file read (a `kubectl get pods -A -o yaml` of 100,000 pods is about 500 MB).
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// Reads a snapshot file, refusing one larger than [`MAX_SNAPSHOT_BYTES`] without reading more
/// than that, and binary data (a NUL byte, which neither YAML nor JSON text holds: `/dev/zero`)
/// at its first block.
pub fn read_to_string_bounded(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?.take(MAX_SNAPSHOT_BYTES + 1);
    let mut bytes = Vec::new();
    let mut block = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut block) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(at) = block[..n].iter().position(|b| *b == 0) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "binary data (a NUL byte at offset {}): not YAML or JSON text",
                    bytes.len() + at
                ),
            ));
        }
        bytes.extend_from_slice(&block[..n]);
    }
    if bytes.len() as u64 > MAX_SNAPSHOT_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_SNAPSHOT_BYTES} bytes, the most a snapshot file may hold"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text: {e}"),
        )
    })
}

const MARKER: &str = "\u{1}flowwatch: ";

/// The reason a marker string stands for, if `s` is one.
pub fn marker_reason(s: &str) -> Option<&str> {
    s.strip_prefix(MARKER)
}

/// `s` without its leading UTF-8 byte order mark.
pub fn strip_bom(s: &str) -> &str {
    s.strip_prefix('\u{feff}').unwrap_or(s)
}

/// The text a parser may read: markers in place of what is too deep or out of range. `Err` for
/// a collection too deep that never closes (the file cannot parse anyway).
pub fn bound(text: &str) -> Result<Cow<'_, str>, String> {
    Scanner::new(strip_bom(text)).run()
}

/// Which parser's error to report for text starting with `{` or `[` that neither JSON nor
/// YAML could read: JSON's when the text looks like JSON (its first key quoted), else YAML's:
/// flow-style YAML (`{kind: List, items: [...]}`) gets a YAML error, not a JSON parser's.
pub fn syntax_error(text: &str, json_error: &str, yaml_error: &str) -> String {
    let rest = text.trim_start_matches(|c: char| c == '[' || c.is_whitespace());
    let looks_like_json = match rest.strip_prefix('{') {
        Some(obj) => matches!(obj.trim_start().chars().next(), Some('"' | '}')),
        None => {
            matches!(
                rest.chars().next(),
                None | Some('"' | ']' | '-' | '0'..='9')
            ) || ["true", "false", "null"]
                .iter()
                .any(|w| rest.starts_with(w))
        }
    };
    if looks_like_json {
        format!("JSON: {json_error}")
    } else {
        format!("YAML: {yaml_error}")
    }
}

/// `last` inside a plain scalar: no value starts after it.
const PLAIN: u8 = b'a';

/// Whether a byte before a bracket, quote or number lets a value start there.
fn value_can_start(last: u8) -> bool {
    matches!(last, b'\n' | b':' | b'-' | b'[' | b'{' | b',' | b'?')
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    out: Option<String>,
    /// Bytes of `text` already copied into `out`.
    copied: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Scanner<'a> {
        Scanner {
            text,
            b: text.as_bytes(),
            out: None,
            copied: 0,
        }
    }

    fn replace(&mut self, start: usize, end: usize, reason: &str) {
        let out = self
            .out
            .get_or_insert_with(|| String::with_capacity(self.text.len()));
        out.push_str(&self.text[self.copied..start]);
        out.push('"');
        out.push_str("\\u0001flowwatch: ");
        out.push_str(reason);
        out.push('"');
        self.copied = end;
    }

    fn line_of(&self, at: usize) -> usize {
        // Lines are what the newlines split: one more than there are newlines.
        self.b[..at].split(|c| *c == b'\n').count()
    }

    fn run(mut self) -> Result<Cow<'a, str>, String> {
        let b = self.b;
        let n = b.len();
        let mut i = 0;
        let mut depth = 0usize;
        // The last significant byte outside strings on this line (`\n` at a line's start).
        let mut last = b'\n';
        // This line's indentation.
        let mut indent = 0usize;
        // Inside a block scalar: the indentation of the line that opened it.
        let mut block_scalar: Option<usize> = None;
        // A collection too deep being cut: (its first byte, the depth it opened at).
        let mut cut: Option<(usize, usize)> = None;
        let mut at_line_start = true;
        // Block sequence entries opened on this line so far (`- - - x` nests three deep).
        let mut line_entries = 0usize;
        while i < n {
            if at_line_start {
                at_line_start = false;
                let start = i;
                while i < n && b[i] == b' ' {
                    i += 1;
                }
                indent = i - start;
                last = b'\n';
                line_entries = 0;
                if let Some(parent) = block_scalar {
                    let blank = i >= n || b[i] == b'\n' || b[i] == b'\r';
                    if blank || indent > parent {
                        // Text of the block scalar: skip the line.
                        while i < n && b[i] != b'\n' {
                            i += 1;
                        }
                        if i < n {
                            i += 1;
                            at_line_start = true;
                        }
                        continue;
                    }
                    block_scalar = None;
                }
                continue;
            }
            let c = b[i];
            match c {
                b'\n' => {
                    i += 1;
                    at_line_start = true;
                    continue;
                }
                b' ' | b'\t' | b'\r' => {
                    i += 1;
                    continue;
                }
                b'#' if i == 0 || matches!(b[i - 1], b' ' | b'\t' | b'\n') => {
                    while i < n && b[i] != b'\n' {
                        i += 1;
                    }
                    continue;
                }
                b'"' if value_can_start(last) => {
                    i += 1;
                    while i < n && b[i] != b'"' {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                    last = b'"';
                    continue;
                }
                b'\'' if value_can_start(last) => {
                    i += 1;
                    loop {
                        while i < n && b[i] != b'\'' {
                            i += 1;
                        }
                        // '' is an escaped quote inside the scalar.
                        if i + 1 < n && b[i + 1] == b'\'' {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                    last = b'\'';
                    continue;
                }
                b'[' | b'{' if depth > 0 || value_can_start(last) => {
                    depth += 1;
                    if depth > MAX_NESTING && cut.is_none() {
                        cut = Some((i, depth));
                    }
                }
                b']' | b'}' if depth > 0 => {
                    if cut.is_some_and(|(_, d)| d == depth) {
                        let (start, _) = cut.take().unwrap_or((i, depth));
                        self.replace(
                            start,
                            i + 1,
                            &format!("nested deeper than {MAX_NESTING} levels"),
                        );
                    }
                    depth -= 1;
                }
                b'|' | b'>' if depth == 0 && value_can_start(last) => {
                    // A block scalar header (`|`, `>-`, `|2+`...) ends its line.
                    let mut j = i + 1;
                    while j < n && matches!(b[j], b'-' | b'+' | b'0'..=b'9') {
                        j += 1;
                    }
                    while j < n && matches!(b[j], b' ' | b'\t' | b'\r') {
                        j += 1;
                    }
                    if j >= n || b[j] == b'\n' || b[j] == b'#' {
                        block_scalar = Some(indent);
                    }
                }
                b'-' if depth == 0
                    && matches!(last, b'\n' | b'-')
                    && (i + 1 >= n || matches!(b[i + 1], b' ' | b'\t' | b'\r' | b'\n')) =>
                {
                    line_entries += 1;
                    if line_entries > MAX_NESTING {
                        return Err(format!(
                            "nested deeper than {MAX_NESTING} levels at line {}",
                            self.line_of(i)
                        ));
                    }
                }
                b'-' | b'+' | b'.' | b'0'..=b'9' if cut.is_none() && value_can_start(last) => {
                    let end = self.number_end(i);
                    if end > i {
                        if let Some(reason) = out_of_range(&self.text[i..end]) {
                            self.replace(i, end, &reason);
                        }
                        i = end;
                        last = b'0';
                        continue;
                    }
                }
                _ => {}
            }
            last = if self.is_indicator(i, depth) {
                c
            } else {
                PLAIN
            };
            i += 1;
        }
        if let Some((start, _)) = cut {
            return Err(format!(
                "nested deeper than {MAX_NESTING} levels from line {} and never closed",
                self.line_of(start)
            ));
        }
        Ok(match self.out {
            None => Cow::Borrowed(self.text),
            Some(mut out) => {
                out.push_str(&self.text[self.copied..]);
                Cow::Owned(out)
            }
        })
    }

    /// Whether the byte at `i` is YAML or JSON syntax after which a value may start, rather
    /// than a character of a plain scalar: a `-` inside `bea10384-...-3741e8895081` must not
    /// make the uid's last segment read as a number (out of range, it would be replaced, and
    /// the replacement inside the scalar breaks the document).
    fn is_indicator(&self, i: usize, depth: usize) -> bool {
        let b = self.b;
        let spaced = i + 1 >= b.len() || matches!(b[i + 1], b' ' | b'\t' | b'\r' | b'\n');
        match b[i] {
            // Flow collections (JSON included): `,`, `[`, `{` and `:` without a space.
            b'[' | b'{' | b',' => depth > 0,
            b':' => spaced || depth > 0,
            // A block sequence entry, a complex key.
            b'-' | b'?' => spaced,
            _ => false,
        }
    }

    /// The end of a plain number token starting at `i` (a JSON or YAML number followed by a
    /// delimiter), or `i` if none starts there.
    fn number_end(&self, i: usize) -> usize {
        let b = self.b;
        let n = b.len();
        let mut j = i;
        if j < n && (b[j] == b'-' || b[j] == b'+') {
            j += 1;
        }
        let digits = j;
        while j < n && (b[j].is_ascii_digit() || matches!(b[j], b'.' | b'e' | b'E' | b'_')) {
            // A sign only right after an exponent mark.
            j += 1;
            if j < n && matches!(b[j - 1], b'e' | b'E') && matches!(b[j], b'-' | b'+') {
                j += 1;
            }
        }
        let delimited = j >= n
            || matches!(
                b[j],
                b' ' | b'\t' | b'\r' | b'\n' | b',' | b']' | b'}' | b'#'
            );
        if j == digits || !delimited || !b[digits].is_ascii_digit() {
            return i;
        }
        j
    }
}

/// Why a number token is out of range, if it is.
fn out_of_range(token: &str) -> Option<String> {
    let plain: String = token.chars().filter(|c| *c != '_').collect();
    let is_integer = plain
        .trim_start_matches(['-', '+'])
        .bytes()
        .all(|c| c.is_ascii_digit());
    let shown: String = plain.chars().take(24).collect();
    let ellipsis = if plain.len() > 24 { "..." } else { "" };
    if is_integer {
        if plain.parse::<i64>().is_ok() || plain.trim_start_matches('+').parse::<u64>().is_ok() {
            return None;
        }
        return Some(format!(
            "number {shown}{ellipsis} is out of range (integers are at most 64 bits)"
        ));
    }
    match plain.parse::<f64>() {
        Ok(v) if v.is_infinite() => Some(format!(
            "number {shown}{ellipsis} is out of range (beyond a 64-bit float)"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounded(text: &str) -> String {
        bound(text).unwrap().into_owned()
    }

    #[test]
    fn ordinary_text_is_passed_through_untouched() {
        for text in [
            "kind: List\nitems:\n- a: [1, 2, {b: c}]\n",
            r#"{"kind":"List","items":[{"a":[1,2,3]}]}"#,
            "a: x[0\nb: 'it''s [ here'\nc: \"[[[\"\nd: |\n  [[[[\n  {{{\ne: 5 # [[[\n",
            "a: -1\nb: 9223372036854775807\nc: 18446744073709551615\nd: 1.5e300\n",
        ] {
            assert!(matches!(bound(text), Ok(Cow::Borrowed(_))), "{text}");
        }
    }

    #[test]
    fn collections_nested_too_deep_become_markers_up_to_their_close() {
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_NESTING + 5),
            "]".repeat(MAX_NESTING + 5)
        );
        let text = format!("a: {deep}\nb: 2\n");
        let out = bounded(&text);
        assert!(out.contains("\\u0001flowwatch: nested deeper than 64 levels"));
        assert!(out.ends_with("\nb: 2\n"), "{out}");
        let parsed: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(parsed["b"], serde_yaml::Value::from(2));
        let json = format!(r#"{{"a": {deep}, "b": 2}}"#);
        let parsed: serde_json::Value = serde_json::from_str(&bounded(&json)).unwrap();
        assert_eq!(parsed["b"], 2);
    }

    #[test]
    fn a_deep_collection_that_never_closes_fails_at_once() {
        let text = format!("a: 1\nb: {}", "{a: ".repeat(500_000));
        let start = std::time::Instant::now();
        let e = bound(&text).unwrap_err();
        assert!(e.contains("line 2") && e.contains("never closed"), "{e}");
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn block_sequences_nested_on_one_line_are_bounded() {
        assert!(bound("a:\n- - - x\n").is_ok());
        let text = format!("a:\n{}x\n", "- ".repeat(500_000));
        let e = bound(&text).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn numbers_out_of_range_become_markers() {
        let out = bounded("a: 123456789012345678901234567890\nb: 1e400\nc: 12\n");
        assert!(out.contains("integers are at most 64 bits"), "{out}");
        assert!(out.contains("beyond a 64-bit float"), "{out}");
        assert!(out.ends_with("c: 12\n"));
        let parsed: serde_json::Value =
            serde_json::from_str(&bounded(r#"{"a": 99999999999999999999999, "b": [1e999]}"#))
                .unwrap();
        assert!(marker_reason(parsed["a"].as_str().unwrap()).is_some());
        assert!(marker_reason(parsed["b"][0].as_str().unwrap()).is_some());
    }

    #[test]
    fn flow_style_yaml_gets_the_yaml_error() {
        let e = syntax_error("{kind: List, items: [}", "json says", "yaml says");
        assert_eq!(e, "YAML: yaml says");
        let e = syntax_error("[{\"kind\": 1,}]", "json says", "yaml says");
        assert_eq!(e, "JSON: json says");
    }

    #[test]
    fn binary_files_are_refused_at_their_first_block() {
        let e = read_to_string_bounded(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("NUL byte at offset 0"), "{e}");
    }

    #[test]
    fn a_byte_order_mark_is_dropped() {
        assert_eq!(bounded("\u{feff}kind: List\n"), "kind: List\n");
    }
}

#[cfg(test)]
mod folded_scalars {
    use super::*;

    /// kubectl folds long quoted strings across lines: a scheduling message's braces and
    /// colons on a continuation line are text inside the quotes.
    #[test]
    fn a_folded_quoted_message_is_passed_through() {
        let text = "items:\n- status:\n    conditions:\n    - lastProbeTime: null\n      message: '0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready:\n        }. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.'\n      reason: Unschedulable\n";
        let out = bound(text).unwrap();
        assert_eq!(out, text);
        let double = "items:\n- status:\n    message: \"0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready:\n      }. preemption: 99999999999999999999999 [x\"\n    reason: Unschedulable\n";
        assert_eq!(bound(double).unwrap(), double);
    }

    /// A uid or hash whose first run of characters reads as a number beyond `f64` is text.
    #[test]
    fn a_uid_that_starts_like_a_huge_number_is_text() {
        for text in [
            "uid: 7e123456-b0ac-42f2-b33c-5ee3a6029593\n",
            "uid: 1234e567-b0ac-42f2-b33c-5ee3a6029593\n",
            "- 99999999999999999999999-x\n",
            "name: 9e999.svc\n",
        ] {
            assert_eq!(bound(text).unwrap(), text);
        }
    }

    /// ... and one whose *last* segment does (seen in a real `kubectl get -o yaml`: the
    /// marker put inside the uid broke the whole snapshot). A value inside a plain scalar,
    /// after `-`, `:`, `,`, `[` or `{` without the syntax around them, is text too.
    #[test]
    fn a_uid_that_ends_like_a_huge_number_is_text() {
        for text in [
            "metadata:\n  uid: bea10384-c907-4c19-9701-3741e8895081\n",
            "- uid: 00000000-0000-0000-0000-1e9999999999\n",
            "url: http://host:1e999\n",
            "labels: {a: b}\nnote: x,1e999 y[1e999 z{1e999\n",
        ] {
            assert_eq!(bound(text).unwrap(), text, "changed: {text}");
            let _: serde_yaml::Value = serde_yaml::from_str(&bound(text).unwrap())
                .unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        // Values still are values, in block and flow style.
        for text in [
            "a: 1e999\n",
            "- 1e999\n",
            "? 1e999\n: x\n",
            "{\"a\":1e999}",
            "[1,1e999]",
            "{a: [x, 1e999]}\n",
        ] {
            assert!(
                bound(text).unwrap().contains("beyond a 64-bit float"),
                "{text}"
            );
        }
    }
}
