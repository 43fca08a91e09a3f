//! Text from the cluster (pod, workload, label and namespace names, addresses, YAML) on the
//! page: flow logs are not validated like API objects, so any name may carry markup. Every
//! string the page shows goes through [`text`], which is also safe inside a double-quoted
//! attribute value.

/// `s` as HTML text or a double-quoted attribute value: `&`, `<`, `>`, `"` and `'` become
/// character references; control characters other than tab and newline are dropped (they
/// have no business in a name and some end an attribute in old parsers).
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_becomes_text() {
        assert_eq!(
            text("<img src=x onerror=\"alert('1')\">&"),
            "&lt;img src=x onerror=&quot;alert(&#39;1&#39;)&quot;&gt;&amp;"
        );
        assert_eq!(text("shop/deployment/web"), "shop/deployment/web");
        assert_eq!(text("a\u{0}b\u{1b}c\n"), "abc\n");
    }
}
