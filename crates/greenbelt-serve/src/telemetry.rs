//! Request identity: request ids and W3C `traceparent` handling.

use std::fmt::Write;

/// A parsed or freshly started W3C trace context.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceContext {
    pub trace_id: String,
    pub flags: String,
    /// Our span id, sent back as the parent id in the response header.
    pub span_id: String,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        let chunk = uuid::Uuid::new_v4().as_u128();
        let _ = write!(out, "{chunk:032x}");
    }
    out.truncate(bytes * 2);
    out
}

impl TraceContext {
    /// Continue the caller's trace when `header` is a valid version-00
    /// `traceparent`; otherwise start a new one.
    pub fn from_header(header: Option<&str>) -> TraceContext {
        if let Some(h) = header {
            let parts: Vec<&str> = h.trim().split('-').collect();
            if let [version, trace_id, parent, flags] = parts.as_slice()
                && is_hex(version, 2)
                && *version != "ff"
                && is_hex(trace_id, 32)
                && *trace_id != "00000000000000000000000000000000"
                && is_hex(parent, 16)
                && *parent != "0000000000000000"
                && is_hex(flags, 2)
            {
                return TraceContext {
                    trace_id: trace_id.to_string(),
                    flags: flags.to_string(),
                    span_id: random_hex(8),
                };
            }
        }
        TraceContext {
            trace_id: random_hex(16),
            flags: "01".into(),
            span_id: random_hex(8),
        }
    }

    /// The `traceparent` to send back: same trace, our span as parent.
    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// The client's request id when it is short and printable, else a new one.
pub fn request_id(header: Option<&str>) -> String {
    match header {
        Some(h) if !h.is_empty() && h.len() <= 128 && h.bytes().all(|b| b.is_ascii_graphic()) => {
            h.to_string()
        }
        _ => uuid::Uuid::new_v4().simple().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_valid_traceparent() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::from_header(Some(h));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let out = t.header();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert_ne!(out, h, "our span id replaces the parent id");
    }

    #[test]
    fn invalid_traceparent_starts_new_trace() {
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let t = TraceContext::from_header(Some(bad));
            assert_eq!(t.trace_id.len(), 32);
            assert_ne!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        }
    }

    #[test]
    fn request_ids_are_bounded() {
        assert_eq!(request_id(Some("abc-1")), "abc-1");
        assert_eq!(request_id(Some(&"x".repeat(500))).len(), 32);
        assert_eq!(request_id(Some("has space")).len(), 32);
    }
}
