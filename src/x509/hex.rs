//! The one hex encoder: SHA-256 fingerprints (lowercase, as `sha256sum` prints them), serial numbers
//! and OpenSSL's escapes and dumps (uppercase, as OpenSSL prints them).

/// The letter case of the digits a-f.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Case {
    Lower,
    Upper,
}

/// Appends two hex digits per byte of `bytes` to `out`, without separators.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8], case: Case) {
    out.reserve(2 * bytes.len());
    for &b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            // A nibble is always a digit of base 16.
            let digit = char::from_digit(u32::from(nibble), 16).unwrap_or('0');
            out.push(match case {
                Case::Lower => digit,
                Case::Upper => digit.to_ascii_uppercase(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8], case: Case) -> String {
        let mut out = String::from(">");
        push_hex(&mut out, bytes, case);
        out
    }

    #[test]
    fn two_digits_per_byte_in_the_case_asked_for_appended() {
        assert_eq!(hex(&[], Case::Lower), ">");
        assert_eq!(hex(&[0x00, 0x0a, 0xbc, 0xff], Case::Lower), ">000abcff");
        assert_eq!(hex(&[0x00, 0x0a, 0xbc, 0xff], Case::Upper), ">000ABCFF");
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all, Case::Lower), format!(">{expected}"));
        assert_eq!(hex(&all, Case::Upper), format!(">{}", expected.to_ascii_uppercase()));
    }
}
