//! Time in the feature store: every timestamp is UTC, held as microseconds
//! since the Unix epoch (`i64`). Text without an offset (naive) is read as
//! UTC; text with an offset is converted to UTC. Durations (TTL, freshness)
//! are humantime text such as `30days`, `2h`, `90s`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use crate::error::{FeatureError, Result};

/// Microseconds in one day.
pub const DAY_US: i64 = 86_400_000_000;

/// Parse RFC 3339 / ISO 8601 text (`2026-01-01T00:00:00Z`,
/// `2026-01-01 00:00:00`, `2026-01-01`) to UTC microseconds. Naive is UTC.
pub fn parse_ts(what: &str, s: &str) -> Result<i64> {
    let t = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc).timestamp_micros());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(n.and_utc().timestamp_micros());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map_or(0, |n| n.and_utc().timestamp_micros()));
    }
    Err(FeatureError::Invalid(format!(
        "{what}: \"{}\" is not a timestamp; use RFC 3339 like 2026-01-01T00:00:00Z (naive times are UTC)",
        s.chars().take(100).collect::<String>()
    )))
}

/// RFC 3339 UTC text with microseconds, e.g. `2026-01-01T00:00:00.000000Z`.
pub fn format_ts(us: i64) -> String {
    match DateTime::<Utc>::from_timestamp_micros(us) {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => format!("{us}us"),
    }
}

/// The UTC date (`YYYY-MM-DD`) of a timestamp.
pub fn date_of(us: i64) -> String {
    let day = us.div_euclid(DAY_US);
    format_ts(day * DAY_US)[..10].to_string()
}

/// Midnight UTC of the day holding `us`.
pub fn day_start(us: i64) -> i64 {
    us.div_euclid(DAY_US) * DAY_US
}

/// Parse a humantime duration (`30days`, `2h 30m`) to microseconds.
pub fn parse_duration(what: &str, s: &str) -> Result<i64> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        FeatureError::Invalid(format!(
            "{what}: \"{s}\" is not a duration ({e}); write it like 30days, 12h or 90s"
        ))
    })?;
    i64::try_from(d.as_micros())
        .map_err(|_| FeatureError::Invalid(format!("{what}: \"{s}\" is too long")))
}

/// The current time in UTC microseconds.
pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_naive_and_offsets() {
        let z = parse_ts("t", "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(z, 1_767_225_600_000_000);
        assert_eq!(parse_ts("t", "2026-01-01 00:00:00").unwrap(), z);
        assert_eq!(parse_ts("t", "2026-01-01").unwrap(), z);
        assert_eq!(parse_ts("t", "2026-01-01T01:00:00+01:00").unwrap(), z);
        assert_eq!(format_ts(z), "2026-01-01T00:00:00.000000Z");
        assert_eq!(date_of(z + 5), "2026-01-01");
        assert_eq!(date_of(z - 1), "2025-12-31");
        assert_eq!(date_of(-1), "1969-12-31");
        let e = parse_ts("start", "yesterday").unwrap_err().to_string();
        assert!(e.contains("start") && e.contains("RFC 3339"), "{e}");
        assert_eq!(parse_duration("ttl", "2h").unwrap(), 7_200_000_000);
        assert!(parse_duration("ttl", "soon").is_err());
    }
}
