//! Tables for people: aligned columns on a terminal, or Markdown (`-o md`) for a pull
//! request comment.

use std::io::{self, Write};

/// How a `policy` command prints its answer.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns (the default on a terminal).
    Table,
    /// Machine-readable JSON.
    Json,
    /// A Markdown table.
    Md,
}

impl Format {
    /// `chosen`, or a table when stdout is a terminal and `otherwise` when it is not.
    pub fn or_default(chosen: Option<Format>, otherwise: Format) -> Format {
        chosen.unwrap_or_else(|| {
            if io::IsTerminal::is_terminal(&io::stdout()) {
                Format::Table
            } else {
                otherwise
            }
        })
    }
}

/// Writes `rows` under `header` as aligned columns or as Markdown.
pub fn write_table(
    out: &mut dyn Write,
    markdown: bool,
    header: &[&str],
    rows: &[Vec<String>],
) -> io::Result<()> {
    if markdown {
        let escape = |s: &str| s.replace('|', "\\|");
        writeln!(out, "| {} |", header.join(" | "))?;
        writeln!(
            out,
            "|{}",
            header.iter().map(|_| "---|").collect::<String>()
        )?;
        for row in rows {
            let cells: Vec<String> = row.iter().map(|c| escape(c)).collect();
            writeln!(out, "| {} |", cells.join(" | "))?;
        }
        return Ok(());
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    writeln!(out, "{}", line(&mut header.iter().copied()))?;
    for row in rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_markdown_escapes_pipes() {
        let rows = vec![
            vec!["would_break".to_string(), "a/b".to_string()],
            vec!["x".to_string(), "c|d".to_string()],
        ];
        let mut out = Vec::new();
        write_table(&mut out, false, &["CHANGE", "EDGE"], &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "CHANGE       EDGE\nwould_break  a/b\nx            c|d\n"
        );
        let mut out = Vec::new();
        write_table(&mut out, true, &["CHANGE", "EDGE"], &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "| CHANGE | EDGE |\n|---|---|\n| would_break | a/b |\n| x | c\\|d |\n"
        );
    }
}
