//! Request identity: request ids (W3C `traceparent` handling is in
//! `crate::traces`).

/// The client's request id when it is short and printable, else a new one.
pub fn request_id(header: Option<&str>) -> String {
    match header {
        Some(h) if !h.is_empty() && h.len() <= 128 && h.bytes().all(|b| b.is_ascii_graphic()) => {
            h.to_string()
        }
        // A thread-local generator: no syscall on the request path.
        _ => format!("{:032x}", fastrand::u128(..)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded() {
        assert_eq!(request_id(Some("abc-1")), "abc-1");
        assert_eq!(request_id(Some(&"x".repeat(500))).len(), 32);
        assert_eq!(request_id(Some("has space")).len(), 32);
    }
}
