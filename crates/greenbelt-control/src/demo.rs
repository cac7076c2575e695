//! A deterministic synthetic fraud data set for the demo project: card
//! transactions with entity ids, event timestamps (UTC) and a fraud label.
//! `drift` (0 = none, 1 = strong) shifts amounts, the foreign-transaction
//! share and the fraud pattern, for drift demos and drills.

use std::fmt::Write;

use greenbelt_train::rng::SplitMix64;

pub const COLUMNS: &[&str] = &[
    "tx_id",
    "user_id",
    "merchant_id",
    "event_ts",
    "amount",
    "hour",
    "merchant_risk",
    "user_tx_count_24h",
    "user_avg_amount_30d",
    "distance_km",
    "is_foreign",
    "device_age_days",
    "is_fraud",
];

fn normal(rng: &mut SplitMix64) -> f64 {
    // Box-Muller; next_f64 is in [0, 1).
    let u1 = rng.next_f64().max(1e-12);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// `rows` transactions as CSV text, ordered by event time, starting at
/// 2026-01-01T00:00:00Z and spanning about 60 days.
pub fn fraud_csv(rows: usize, seed: u64, drift: f64) -> String {
    fraud_csv_from(rows, seed, drift, 1_767_225_600) // 2026-01-01T00:00:00Z
}

/// [`fraud_csv`] starting at `start` (Unix seconds, UTC) instead: the
/// quickstart ends its data just before "now", so online features are
/// within their TTL when it serves them.
pub fn fraud_csv_from(rows: usize, seed: u64, drift: f64, start: u64) -> String {
    let mut rng = SplitMix64::new(seed);
    let mut out = COLUMNS.join(",");
    out.push('\n');
    let span = 60 * 86_400u64;
    let users = (rows / 20).max(10);
    let merchants = (rows / 100).max(5);
    for i in 0..rows {
        let ts = start + (i as u64 * span) / rows.max(1) as u64 + (rng.next_u64() % 60);
        let user = rng.below(users);
        let merchant = rng.below(merchants);
        let hour = ((ts / 3600) % 24) as f64;
        let merchant_risk = ((merchant * 7919) % 100) as f64 / 100.0;
        let user_avg = 20.0 + ((user * 104_729) % 200) as f64;
        let amount = (user_avg * (0.6 + 0.8 * rng.next_f64()) * (1.0 + drift * 1.5)
            + 5.0 * normal(&mut rng).abs())
        .max(0.5);
        let tx_count = (rng.below(8) + (i % 3)) as f64;
        let distance = (normal(&mut rng).abs() * 30.0 * (1.0 + 2.0 * drift)).min(5000.0);
        let foreign = if rng.next_f64() < 0.05 + 0.2 * drift {
            1.0
        } else {
            0.0
        };
        let device_age = (rng.next_f64() * 900.0).floor();
        let night = if !(6.0..23.0).contains(&hour) {
            1.0
        } else {
            0.0
        };
        let logit = -4.2
            + 2.2 * (amount / user_avg - 1.0).max(0.0)
            + 1.6 * merchant_risk * merchant_risk
            + 0.9 * night
            + 1.4 * foreign
            + 0.012 * distance
            + 0.35 * (tx_count - 4.0).max(0.0)
            - 0.002 * device_age
            + drift * (1.0 - 2.0 * merchant_risk)
            + 0.4 * normal(&mut rng);
        let p = 1.0 / (1.0 + (-logit).exp());
        let label = u8::from(rng.next_f64() < p);
        let ts_text = format_ts(ts);
        let _ = writeln!(
            out,
            "tx{i:07},u{user:05},m{merchant:04},{ts_text},{amount:.2},{hour},{merchant_risk:.2},{tx_count},{user_avg:.2},{distance:.3},{foreign},{device_age},{label}"
        );
    }
    out
}

/// RFC 3339 UTC for Unix seconds.
fn format_ts(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime_like(t)
}

fn humantime_like(t: std::time::SystemTime) -> String {
    // Civil-from-days (Howard Hinnant's algorithm), no time-zone database needed.
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_time_ordered_and_both_classes() {
        let a = fraud_csv(2000, 7, 0.0);
        assert_eq!(a, fraud_csv(2000, 7, 0.0));
        assert_ne!(a, fraud_csv(2000, 8, 0.0));
        let lines: Vec<&str> = a.lines().collect();
        assert_eq!(lines.len(), 2001);
        assert!(lines[1].contains("2026-01-01T"), "{}", lines[1]);
        let ts: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l.split(',').nth(3).unwrap())
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "ordered by event time");
        let frauds = lines[1..].iter().filter(|l| l.ends_with(",1")).count();
        assert!(frauds > 20 && frauds < 1000, "{frauds} frauds");
        assert_eq!(format_ts(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ts(1_767_225_600), "2026-01-01T00:00:00Z");
    }
}
