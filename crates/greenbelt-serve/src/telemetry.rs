//! Request identity: request ids (W3C `traceparent` handling is in
//! `crate::traces`).

/// The client's request id when it is short and printable, else a new one.
pub fn request_id(header: Option<&str>) -> String {
    match header {
        Some(h) if !h.is_empty() && h.len() <= 128 && h.bytes().all(|b| b.is_ascii_graphic()) => {
            h.to_string()
        }
        // A thread-local generator: no syscall on the request path.
        _ => {
            let mut id = String::with_capacity(32);
            push_hex(&mut id, &fastrand::u128(..).to_be_bytes());
            id
        }
    }
}

/// Append `bytes` as lowercase hex: what `{:x}` prints for them, without
/// the formatting machinery (ids and trace headers are built per request).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let [hi, lo] = hex_byte(*b);
        out.push(char::from(hi));
        out.push(char::from(lo));
    }
}

/// One byte's two lowercase hex digits.
pub fn hex_byte(b: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0x0f)]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded() {
        assert_eq!(request_id(Some("abc-1")), "abc-1");
        assert_eq!(request_id(Some(&"x".repeat(500))).len(), 32);
        assert_eq!(request_id(Some("has space")).len(), 32);
        let id = request_id(None);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{id}"
        );
    }

    #[test]
    fn hex_is_what_the_formatter_prints() {
        let v: u128 = 0x00f0_67aa_0ba9_02b7_4bf9_2f35_77b3_4da6;
        let mut s = String::new();
        push_hex(&mut s, &v.to_be_bytes());
        assert_eq!(s, format!("{v:032x}"));
    }
}
