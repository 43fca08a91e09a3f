//! Reading `--flows` input one bounded line at a time: a line longer than
//! [`MAX_FLOW_LINE_BYTES`] (or input with no newline at all, such as `/dev/zero`) stops the run
//! with a clear error after reading at most that much, instead of growing a buffer until the
//! allocator gives up.

use std::io::{self, BufRead, Read};

/// Longest flow line (a flow record is a few hundred bytes).
pub const MAX_FLOW_LINE_BYTES: usize = 1 << 20;

/// Reads the next line into `buf` (cleared first), newline included; `Ok(0)` at the end of
/// input. A line holds at most `max` bytes besides its newline. `line_no` names the line in the error for one longer than `max` bytes.
pub fn read_line_bounded(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
    line_no: u64,
) -> io::Result<usize> {
    buf.clear();
    let n = input.by_ref().take(max as u64 + 1).read_until(b'\n', buf)?;
    if n > max && buf.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "line {line_no} is longer than {max} bytes, the most a flow line may hold \
                 (the input must be JSON lines, one flow object per line)"
            ),
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_up_to_the_limit_are_read_and_longer_ones_refused() {
        let mut input = io::Cursor::new(b"abc\nabcd\nabcde".to_vec());
        let mut buf = Vec::new();
        assert_eq!(read_line_bounded(&mut input, &mut buf, 4, 1).unwrap(), 4);
        assert_eq!(buf, b"abc\n");
        let e = read_line_bounded(&mut input, &mut buf, 3, 2).unwrap_err();
        assert!(
            e.to_string().contains("line 2 is longer than 3 bytes"),
            "{e}"
        );
    }

    #[test]
    fn endless_input_without_newlines_is_refused_after_the_limit() {
        let mut zeros = io::BufReader::new(io::repeat(0));
        let mut buf = Vec::new();
        assert!(read_line_bounded(&mut zeros, &mut buf, 1 << 16, 1).is_err());
        assert!(buf.len() <= (1 << 16) + 1);
    }
}
