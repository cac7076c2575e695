//! Durations in config files: one style everywhere, humantime text
//! (`500us`, `250ms`, `10s`, `2m`, `1h`), written back the same way.
//!
//! Settings that used to be integers in a unit named by the key
//! (`request_timeout_ms = 10000`, `max_queue_delay_us = 500`,
//! `timeout_s = 600`) keep their Rust field, in that unit, and take the new
//! key with the old one as a serde alias:
//!
//! ```ignore
//! #[serde(rename = "request_timeout", alias = "request_timeout_ms", with = "duration::ms")]
//! #[schemars(with = "String")]
//! pub request_timeout_ms: u64,
//! ```
//!
//! The value may be humantime text under either key, or an integer in the
//! field's unit (what the old key always meant). `GREENBELT__…` overrides
//! replace a key's other spellings: [`spellings`].

use std::time::Duration;

/// A duration as humantime text: whole seconds as `10s`, whole
/// milliseconds as `100ms`, else microseconds.
pub fn text(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

/// The suffixes a duration key's old spelling carried, with their unit.
const SUFFIXES: [(&str, Duration); 3] = [
    ("_ms", Duration::from_millis(1)),
    ("_us", Duration::from_micros(1)),
    ("_s", Duration::from_secs(1)),
];

/// Every spelling of a duration key other than `key` itself: the bare
/// name and the name with each old unit suffix (`request_timeout`,
/// `request_timeout_ms`, `request_timeout_us`, `request_timeout_s`). An
/// override of one spelling removes the others, so that a file's
/// `request_timeout = "10s"` and the environment's
/// `…__REQUEST_TIMEOUT_MS=500` do not collide.
pub fn spellings(key: &str) -> Vec<String> {
    let stem = SUFFIXES
        .iter()
        .find_map(|(s, _)| key.strip_suffix(s))
        .unwrap_or(key);
    std::iter::once(stem.to_string())
        .chain(SUFFIXES.iter().map(|(s, _)| format!("{stem}{s}")))
        .filter(|k| k != key)
        .collect()
}

/// Serde for a duration held as an integer count of `UNIT` (in
/// nanoseconds): written as humantime text, read from text or from an
/// integer in the unit.
struct Units<const UNIT_NS: u64>;

impl<const UNIT_NS: u64> Units<UNIT_NS> {
    const UNIT: Duration = Duration::from_nanos(UNIT_NS);

    fn serialize<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        let nanos = u128::from(*v) * u128::from(UNIT_NS);
        let d = Duration::new(
            u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX),
            (nanos % 1_000_000_000) as u32,
        );
        s.serialize_str(&text(d))
    }

    fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Visit::<UNIT_NS>)
    }

    fn unit_name() -> &'static str {
        SUFFIXES
            .iter()
            .find(|(_, u)| *u == Self::UNIT)
            .map_or("units", |(s, _)| &s[1..])
    }
}

struct Visit<const UNIT_NS: u64>;

impl<'de, const UNIT_NS: u64> serde::de::Visitor<'de> for Visit<UNIT_NS> {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "a duration as text (\"500ms\", \"10s\", \"2m\") or a whole number of {}",
            Units::<UNIT_NS>::unit_name()
        )
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| {
            E::custom(format!(
                "{v} is negative: a duration is at least 0 (e.g. \"0s\")"
            ))
        })
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
        let d = humantime::parse_duration(v.trim()).map_err(|e| {
            E::custom(format!(
                "\"{v}\" is not a duration ({e}); write e.g. \"500ms\", \"10s\" or \"2m\""
            ))
        })?;
        let units = d.as_nanos() / u128::from(UNIT_NS);
        if units * u128::from(UNIT_NS) != d.as_nanos() {
            return Err(E::custom(format!(
                "\"{v}\" is finer than this setting's unit ({}); round it",
                Units::<UNIT_NS>::unit_name()
            )));
        }
        u64::try_from(units).map_err(|_| E::custom(format!("\"{v}\" is too long")))
    }
}

macro_rules! unit_module {
    ($name:ident, $ns:expr, $doc:literal) => {
        #[doc = $doc]
        pub mod $name {
            pub fn serialize<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
                super::Units::<{ $ns }>::serialize(v, s)
            }
            pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
                super::Units::<{ $ns }>::deserialize(d)
            }
        }
    };
}

unit_module!(
    ms,
    1_000_000,
    "A `u64` of milliseconds (`with = \"duration::ms\"`)."
);
unit_module!(
    us,
    1_000,
    "A `u64` of microseconds (`with = \"duration::us\"`)."
);
unit_module!(
    secs,
    1_000_000_000,
    "A `u64` of seconds (`with = \"duration::secs\"`)."
);

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct T {
        #[serde(rename = "timeout", alias = "timeout_ms", with = "ms")]
        timeout_ms: u64,
        #[serde(rename = "delay", alias = "delay_us", default, with = "us")]
        delay_us: u64,
    }

    fn parse(text: &str) -> Result<T, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn new_keys_take_text_and_old_keys_their_unit() {
        assert_eq!(parse("timeout = \"2s\"").unwrap().timeout_ms, 2000);
        assert_eq!(parse("timeout = \"1m 30s\"").unwrap().timeout_ms, 90_000);
        assert_eq!(parse("timeout_ms = 250").unwrap().timeout_ms, 250);
        assert_eq!(parse("timeout_ms = \"250ms\"").unwrap().timeout_ms, 250);
        let t = parse("timeout = 5\ndelay_us = 500").unwrap();
        assert_eq!((t.timeout_ms, t.delay_us), (5, 500));
        assert!(parse("timeout = \"1\"").is_err());
        assert_eq!(
            parse("timeout = \"1ms\"\ndelay = \"1ms\"")
                .unwrap()
                .delay_us,
            1000
        );
    }

    #[test]
    fn bad_values_name_the_fix() {
        let e = parse("timeout = \"ten seconds\"").unwrap_err();
        assert!(e.contains("not a duration") && e.contains("\"10s\""), "{e}");
        let e = parse("timeout = -1").unwrap_err();
        assert!(e.contains("negative"), "{e}");
        let e = parse("timeout = \"1500us\"").unwrap_err();
        assert!(e.contains("finer than") && e.contains("ms"), "{e}");
        let e = parse("timeout = \"1s\"\ntimeout_ms = 5").unwrap_err();
        assert!(e.contains("duplicate"), "{e}");
    }

    #[test]
    fn written_back_as_text() {
        let t = T {
            timeout_ms: 10_000,
            delay_us: 1500,
        };
        let s = toml::to_string(&t).unwrap();
        assert!(s.contains("timeout = \"10s\""), "{s}");
        assert!(s.contains("delay = \"1500us\""), "{s}");
        assert_eq!(parse(&s).unwrap(), t);
    }

    #[test]
    fn spellings_are_the_stem_and_its_suffixes() {
        assert_eq!(
            spellings("request_timeout_ms"),
            ["request_timeout", "request_timeout_us", "request_timeout_s"]
        );
        assert_eq!(
            spellings("timeout"),
            ["timeout_ms", "timeout_us", "timeout_s"]
        );
        assert_eq!(text(Duration::from_millis(1500)), "1500ms");
        assert_eq!(text(Duration::from_secs(30)), "30s");
    }
}
