//! An error with its causes, on one line: how flowwatch prints and logs errors.
//!
//! Errors keep their causes as typed `#[source]`s and say only their own part in their
//! message ("attaching TC to veth1"); the causes are joined here, once ("attaching TC to
//! veth1: netlink error: ..."), by `main` and wherever an error is logged, as controller-rs
//! does. A message that already ends with its cause's text is not repeated.

use std::fmt;

/// Displays an error and every cause of it, joined by `: `.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !line.ends_with(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = c.source();
        }
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("attaching TC to veth1")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("listing interfaces: {0}")]
    struct SaysItsCause(#[source] std::io::Error);

    #[test]
    fn joins_every_cause_once() {
        let e = Outer(std::io::Error::other("permission denied"));
        assert_eq!(
            Chain(&e).to_string(),
            "attaching TC to veth1: permission denied"
        );
        let e = SaysItsCause(std::io::Error::other("no such device"));
        assert_eq!(Chain(&e).to_string(), "listing interfaces: no such device");
    }
}
