//! The page's Content-Security-Policy: nothing may be loaded from anywhere (`default-src
//! 'none'`), and only the page's own style and script run, named by their SHA-256 (an
//! injected `<script>` or `style` attribute would not match and is refused).

use ring::digest::{digest, SHA256};

/// The policy for a page whose only style element holds `style` and whose only script
/// element holds `script`.
pub fn policy(style: &str, script: &str) -> String {
    format!(
        "default-src 'none'; style-src '{}'; script-src '{}'; img-src 'none'; font-src 'none'; \
         connect-src 'none'; media-src 'none'; object-src 'none'; frame-src 'none'; \
         base-uri 'none'; form-action 'none'",
        source_hash(style),
        source_hash(script)
    )
}

/// `sha256-BASE64` of an inline element's text, as CSP names it.
pub fn source_hash(text: &str) -> String {
    format!(
        "sha256-{}",
        base64(digest(&SHA256, text.as_bytes()).as_ref())
    )
}

/// Standard base64 with padding (RFC 4648), all CSP needs.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn hashes_are_the_sha256_csp_expects() {
        // printf '' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            source_hash(""),
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        let p = policy("a", "b");
        assert!(p.starts_with("default-src 'none'; style-src 'sha256-"));
    }
}
