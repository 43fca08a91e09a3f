//! The Prometheus text exposition, read into samples (name, labels, value).

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map_or("", String::as_str)
    }
}

/// Parses the text format (`name{a="b",...} value`); comments and bad lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = if let Some(i) = line.find('{') {
        (&line[..i], &line[i..])
    } else {
        let (n, v) = line.split_once(' ')?;
        return Some(Sample {
            name: n.to_string(),
            labels: BTreeMap::new(),
            value: v.split_whitespace().next()?.parse().ok()?,
        });
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest[1..].char_indices().peekable();
    let body = &rest[1..];
    let mut end = None;
    let mut key_start = 0;
    while let Some((i, c)) = chars.next() {
        match c {
            '}' => {
                end = Some(i);
                break;
            }
            '=' => {
                let key = body[key_start..i]
                    .trim_start_matches(',')
                    .trim()
                    .to_string();
                // value in quotes, with \" escapes
                chars.next(); // opening quote
                let mut value = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, e)) = chars.next() {
                                value.push(match e {
                                    'n' => '\n',
                                    other => other,
                                });
                            }
                        }
                        '"' => break,
                        other => value.push(other),
                    }
                }
                labels.insert(key, value);
                key_start = chars.peek().map_or(body.len(), |(j, _)| *j);
            }
            _ => {}
        }
    }
    let end = end?;
    let value = body[end + 1..].split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[test]
fn parses_labels_and_values() {
    let s = parse(
        "# HELP x y\nflowwatch_connections_total{src_namespace=\"x\",verdict=\"denied\"} 3\nup 1\n",
    );
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].label("src_namespace"), "x");
    assert_eq!(s[0].label("verdict"), "denied");
    assert_eq!(s[0].value, 3.0);
    assert_eq!(s[1].name, "up");
}
