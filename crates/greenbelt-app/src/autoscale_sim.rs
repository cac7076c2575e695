//! `greenbelt autoscale simulate`: replay a request-rate trace (CSV
//! `time_s,rps`) through the recommender (`greenbelt_core::autoscale`)
//! every `step`, as the server would evaluate it, and measure what the
//! replicas it asks for would have done: time to react to the spike,
//! over-provisioning (replica-seconds above what the load needed) and
//! under-provisioning. The plot is a small hand-written SVG (no plotting
//! dependency): desired and ready replicas against the load, in replicas
//! of `target` requests per second.
//!
//! The model of the world is deliberately simple: one replica serves
//! `target` rps at 100 %; the load needs `ceil(rps / target)` replicas; a
//! replica the recommender adds is ready `startup` later (pods that start
//! take time), one it removes goes at once.

use std::fmt::Write;
use std::time::Duration;

use greenbelt_core::autoscale::{Metric, Observation, Policy, Recommender};
use serde::Serialize;

use crate::error::{AppError, Result};

/// One row of the trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TracePoint {
    pub time_s: f64,
    pub rps: f64,
}

/// Parse `time_s,rps` CSV (a header line is skipped; times must increase).
pub fn parse_trace(text: &str) -> Result<Vec<TracePoint>> {
    let mut out: Vec<TracePoint> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut cols = line.split(',').map(str::trim);
        let (Some(a), Some(b)) = (cols.next(), cols.next()) else {
            return Err(AppError::Invalid(format!(
                "trace line {}: expected time_s,rps, got \"{line}\"",
                i + 1
            )));
        };
        let (Ok(time_s), Ok(rps)) = (a.parse::<f64>(), b.parse::<f64>()) else {
            if out.is_empty() && i == 0 {
                continue; // the header
            }
            return Err(AppError::Invalid(format!(
                "trace line {}: \"{line}\" is not two numbers (time_s,rps)",
                i + 1
            )));
        };
        if !(time_s.is_finite() && rps.is_finite() && rps >= 0.0 && time_s >= 0.0) {
            return Err(AppError::Invalid(format!(
                "trace line {}: time_s and rps must be finite and >= 0",
                i + 1
            )));
        }
        if out.last().is_some_and(|p| time_s < p.time_s) {
            return Err(AppError::Invalid(format!(
                "trace line {}: time_s {time_s} goes back in time",
                i + 1
            )));
        }
        out.push(TracePoint { time_s, rps });
    }
    if out.len() < 2 {
        return Err(AppError::Invalid(
            "the trace needs at least two rows of time_s,rps".into(),
        ));
    }
    Ok(out)
}

/// The load at `t`, linear between rows (a step where two rows share a time).
pub fn rps_at(trace: &[TracePoint], t: f64) -> f64 {
    let i = trace.partition_point(|p| p.time_s <= t);
    match (i.checked_sub(1).and_then(|j| trace.get(j)), trace.get(i)) {
        (Some(a), Some(b)) if b.time_s > a.time_s => {
            a.rps + (b.rps - a.rps) * (t - a.time_s) / (b.time_s - a.time_s)
        }
        (Some(a), _) => a.rps,
        (None, Some(b)) => b.rps,
        (None, None) => 0.0,
    }
}

/// How to replay.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The recommender's policy; its `metric` should be `rps` (the trace is
    /// a rate) and its `target` what one replica serves.
    pub policy: Policy,
    /// Time between evaluations (the server's `[autoscale] interval`).
    pub step: Duration,
    /// How long a new replica takes to become ready.
    pub startup: Duration,
}

/// One evaluation of the replay.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SimPoint {
    pub time_s: f64,
    pub rps: f64,
    /// `ceil(rps / target)`.
    pub needed: u32,
    pub desired: u32,
    /// Replicas serving (added ones after `startup`).
    pub ready: u32,
    pub panic: bool,
}

/// The replay's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub step_s: f64,
    pub startup_s: f64,
    pub target_rps_per_replica: f64,
    pub algorithm: greenbelt_core::autoscale::Algorithm,
    /// Where the largest rise between two trace rows begins.
    pub spike_at_s: f64,
    /// From the spike until the recommender first asked for more replicas.
    pub first_scale_up_s: Option<f64>,
    /// From the spike until ready replicas covered the load again (0 when
    /// they never stopped covering it; `None`: not within the trace).
    pub time_to_react_s: Option<f64>,
    /// Replica-seconds ready above what the load needed, over all ready
    /// replica-seconds.
    pub over_provisioning_share: f64,
    /// Replica-seconds the load needed beyond those ready, over all needed.
    pub under_provisioning_share: f64,
    pub ready_replica_seconds: f64,
    pub needed_replica_seconds: f64,
    pub peak_desired: u32,
    pub panic_evaluations: usize,
    pub points: Vec<SimPoint>,
}

/// Replay `trace` through a fresh recommender.
pub fn simulate(trace: &[TracePoint], options: &SimOptions) -> Result<SimReport> {
    let mut policy = options.policy.clone();
    policy.metric = Metric::Rps;
    policy
        .validate()
        .map_err(|e| AppError::Invalid(format!("autoscale policy: {e}")))?;
    if options.step.is_zero() {
        return Err(AppError::Invalid("step must be > 0".into()));
    }
    let (Some(first), Some(last)) = (trace.first(), trace.last()) else {
        return Err(AppError::Invalid("empty trace".into()));
    };
    let target = policy.target;
    let min = policy.min_replicas;
    let mut rec = Recommender::new(policy.clone());
    let step = options.step.as_secs_f64();
    let startup = options.startup.as_secs_f64();
    // (decided at, desired), to find what is ready `startup` later.
    let mut decisions: Vec<(f64, u32)> = Vec::new();
    let mut points = Vec::new();
    let mut ready = min;
    let mut t = first.time_s;
    let mut k: u32 = 0;
    while t <= last.time_s + 1e-9 {
        // The load of the interval that ends at `t` (its midpoint).
        let rps = rps_at(trace, (t - step / 2.0).max(first.time_s));
        let at = Duration::from_secs_f64(t - first.time_s);
        rec.observe(
            at,
            Observation {
                concurrency: 0.0,
                rps,
                p99_s: None,
            },
        );
        let r = rec.recommend(at, ready);
        decisions.push((t, r.desired_replicas));
        let before = decisions
            .iter()
            .rev()
            .find(|(d, _)| *d <= t - startup + 1e-9)
            .map_or(min, |(_, n)| *n);
        ready = r
            .desired_replicas
            .min(before.max(ready.min(r.desired_replicas)));
        points.push(SimPoint {
            time_s: t,
            rps,
            needed: needed(rps, target),
            desired: r.desired_replicas,
            ready,
            panic: r.panic_mode,
        });
        k += 1;
        t = first.time_s + f64::from(k) * step;
    }
    Ok(measure(trace, points, options, &policy))
}

fn needed(rps: f64, target: f64) -> u32 {
    let x = rps / target;
    if x <= 0.0 {
        0
    } else {
        // Float noise: 2.0000000001 is 2.
        (x - 1e-9).ceil().max(0.0) as u32
    }
}

fn measure(trace: &[TracePoint], points: Vec<SimPoint>, o: &SimOptions, p: &Policy) -> SimReport {
    let step = o.step.as_secs_f64();
    let spike_at = trace
        .windows(2)
        .max_by(|a, b| {
            let da = a[1].rps - a[0].rps;
            let db = b[1].rps - b[0].rps;
            da.total_cmp(&db)
        })
        .map_or(0.0, |w| w[0].time_s);
    let at_spike = points.iter().find(|x| x.time_s >= spike_at);
    let first_scale_up = at_spike.and_then(|s| {
        points
            .iter()
            .find(|x| x.time_s >= s.time_s && x.desired > s.desired)
            .map(|x| x.time_s - spike_at)
    });
    // Under-served from the spike on: react once ready covers needed again.
    let after: Vec<&SimPoint> = points.iter().filter(|x| x.time_s >= spike_at).collect();
    let time_to_react = match after.iter().position(|x| x.ready < x.needed) {
        None => Some(0.0),
        Some(i) => after
            .iter()
            .skip(i)
            .find(|x| x.ready >= x.needed)
            .map(|x| x.time_s - spike_at),
    };
    let (mut ready_s, mut needed_s, mut over_s, mut under_s) = (0.0, 0.0, 0.0, 0.0);
    for x in &points {
        let (r, n) = (f64::from(x.ready), f64::from(x.needed));
        ready_s += r * step;
        needed_s += n * step;
        over_s += (r - n).max(0.0) * step;
        under_s += (n - r).max(0.0) * step;
    }
    let share = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    SimReport {
        step_s: step,
        startup_s: o.startup.as_secs_f64(),
        target_rps_per_replica: p.target,
        algorithm: p.algorithm,
        spike_at_s: spike_at,
        first_scale_up_s: first_scale_up,
        time_to_react_s: time_to_react,
        over_provisioning_share: share(over_s, ready_s),
        under_provisioning_share: share(under_s, needed_s),
        ready_replica_seconds: ready_s,
        needed_replica_seconds: needed_s,
        peak_desired: points.iter().map(|x| x.desired).max().unwrap_or(0),
        panic_evaluations: points.iter().filter(|x| x.panic).count(),
        points,
    }
}

impl SimReport {
    /// The text form.
    pub fn text(&self) -> String {
        let secs = |x: Option<f64>| x.map_or_else(|| "never".to_string(), |s| format!("{s:.0} s"));
        format!(
            "algorithm                 {:?}\n\
             target                    {} rps per replica, evaluated every {} s, replicas ready {} s after they are asked for\n\
             spike at                  {:.0} s\n\
             first scale-up            {} after the spike\n\
             time to react             {} (until ready replicas covered the load again)\n\
             over-provisioning share   {:.1} % of ready replica-seconds\n\
             under-provisioning share  {:.1} % of needed replica-seconds\n\
             replica-seconds           {:.0} ready, {:.0} needed\n\
             peak desired replicas     {}\n\
             evaluations in panic      {}\n",
            self.algorithm,
            self.target_rps_per_replica,
            self.step_s,
            self.startup_s,
            self.spike_at_s,
            secs(self.first_scale_up_s),
            secs(self.time_to_react_s),
            self.over_provisioning_share * 100.0,
            self.under_provisioning_share * 100.0,
            self.ready_replica_seconds,
            self.needed_replica_seconds,
            self.peak_desired,
            self.panic_evaluations,
        )
    }

    /// The plot: the whole trace above, the half hour around the spike below.
    pub fn svg(&self) -> String {
        let (w, h) = (960.0, 640.0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="{w}" height="{h}" fill="white"/>"#
        );
        let (Some(first), Some(last)) = (self.points.first(), self.points.last()) else {
            out.push_str("</svg>\n");
            return out;
        };
        let whole = (first.time_s, last.time_s);
        let zoom = (
            (self.spike_at_s - 600.0).max(first.time_s),
            (self.spike_at_s + 1200.0).min(last.time_s),
        );
        self.panel(&mut out, 30.0, "whole trace", whole);
        self.panel(&mut out, 345.0, "around the spike", zoom);
        out.push_str("</svg>\n");
        out
    }

    fn panel(&self, out: &mut String, top: f64, title: &str, (t0, t1): (f64, f64)) {
        let (left, width, height) = (70.0, 800.0, 250.0);
        let pts: Vec<&SimPoint> = self
            .points
            .iter()
            .filter(|p| p.time_s >= t0 && p.time_s <= t1)
            .collect();
        let ymax = pts
            .iter()
            .map(|p| f64::from(p.desired.max(p.ready).max(p.needed)))
            .fold(1.0, f64::max)
            .max(1.0)
            * 1.1;
        let span = (t1 - t0).max(1e-9);
        let hours = span > 7200.0;
        let x = |t: f64| left + (t - t0) / span * width;
        let y = |v: f64| top + height - v / ymax * height;
        let _ = writeln!(
            out,
            r##"<text x="{left}" y="{}" font-size="14">{title}: load (in replicas of {} rps) and replicas ({:?})</text>
<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#999"/>"##,
            top - 8.0,
            self.target_rps_per_replica,
            self.algorithm
        );
        for i in 0..=5 {
            let v = ymax / 1.1 * f64::from(i) / 5.0;
            let _ = writeln!(
                out,
                r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text><text x="{}" y="{:.1}">{:.0} rps</text>"##,
                left + width,
                left - 6.0,
                y(v) + 4.0,
                left + width + 6.0,
                y(v) + 4.0,
                v * self.target_rps_per_replica,
                yy = y(v),
            );
        }
        for i in 0..=6 {
            let t = t0 + span * f64::from(i) / 6.0;
            let label = if hours {
                format!("{:.1} h", t / 3600.0)
            } else {
                format!("{:.0} s", t)
            };
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
                x(t),
                top + height + 16.0
            );
        }
        // At most ~1600 points a series: the largest of each bucket.
        let per = (pts.len() / 1600).max(1);
        let series = |f: &dyn Fn(&SimPoint) -> u32| -> String {
            let mut path = String::new();
            for chunk in pts.chunks(per) {
                let (Some(c0), Some(v)) = (chunk.first(), chunk.iter().map(|p| f(p)).max()) else {
                    continue;
                };
                let _ = write!(
                    path,
                    "{}{:.1},{:.1} ",
                    if path.is_empty() { "M" } else { "L" },
                    x(c0.time_s),
                    y(f64::from(v))
                );
            }
            path
        };
        let load: String = {
            let mut path = String::new();
            for chunk in pts.chunks(per) {
                let (Some(c0), Some(v)) =
                    (chunk.first(), chunk.iter().map(|p| p.rps).reduce(f64::max))
                else {
                    continue;
                };
                let _ = write!(
                    path,
                    "{}{:.1},{:.1} ",
                    if path.is_empty() { "M" } else { "L" },
                    x(c0.time_s),
                    y(v / self.target_rps_per_replica)
                );
            }
            path
        };
        let _ = writeln!(
            out,
            r##"<path d="{load}" fill="none" stroke="#bbb" stroke-width="3"/>
<path d="{}" fill="none" stroke="#888" stroke-width="1" stroke-dasharray="3,2"/>
<path d="{}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>
<path d="{}" fill="none" stroke="#2ca02c" stroke-width="1.5"/>"##,
            series(&|p| p.needed),
            series(&|p| p.desired),
            series(&|p| p.ready),
        );
        if self.spike_at_s >= t0 && self.spike_at_s <= t1 {
            let _ = writeln!(
                out,
                r##"<line x1="{sx:.1}" x2="{sx:.1}" y1="{top}" y2="{}" stroke="#d62728" stroke-dasharray="4,3"/>"##,
                top + height,
                sx = x(self.spike_at_s)
            );
        }
        let ly = top + 14.0;
        let lx = left + 10.0;
        let _ = writeln!(
            out,
            r##"<g font-size="11"><line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="#bbb" stroke-width="3"/><text x="{}" y="{}">load / target</text>
<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="#888" stroke-dasharray="3,2"/><text x="{}" y="{}">needed</text>
<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="#1f77b4" stroke-width="1.5"/><text x="{}" y="{}">desired</text>
<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="#2ca02c" stroke-width="1.5"/><text x="{}" y="{}">ready</text></g>"##,
            lx + 20.0,
            lx + 24.0,
            ly + 4.0,
            lx + 110.0,
            lx + 130.0,
            lx + 134.0,
            ly + 4.0,
            lx + 190.0,
            lx + 210.0,
            lx + 214.0,
            ly + 4.0,
            lx + 270.0,
            lx + 290.0,
            lx + 294.0,
            ly + 4.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenbelt_core::autoscale::Algorithm;

    fn trace(text: &str) -> Vec<TracePoint> {
        parse_trace(text).unwrap()
    }

    #[test]
    fn traces_parse_with_a_header_and_bad_rows_name_the_line() {
        let t = trace("time_s,rps\n0,10\n10,30\n");
        assert_eq!(t.len(), 2);
        assert!((rps_at(&t, 5.0) - 20.0).abs() < 1e-9);
        assert_eq!(rps_at(&t, 50.0), 30.0);
        let e = parse_trace("time_s,rps\n0,10\nten,3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
        let e = parse_trace("0,10\n-1,3\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        // A step: two rows at one time.
        let t = trace("0,10\n60,10\n60,100\n120,100\n");
        assert_eq!(rps_at(&t, 59.0), 10.0);
        assert_eq!(rps_at(&t, 61.0), 100.0);
    }

    #[test]
    fn a_spike_is_met_by_panic_mode_and_the_numbers_add_up() {
        // 100 rps (1 replica of 100) for 2 minutes, then 1000 rps for 2
        // minutes. Target 100 at utilization 1.0, 2 s steps, instant start.
        let t = trace("0,100\n120,100\n120,1000\n240,1000\n");
        let options = SimOptions {
            policy: Policy {
                target: 100.0,
                target_utilization: 1.0,
                ..Policy::default()
            },
            step: Duration::from_secs(2),
            startup: Duration::ZERO,
        };
        let r = simulate(&t, &options).unwrap();
        assert_eq!(r.spike_at_s, 120.0);
        // The interval ending at 122 s is the first at 1000 rps. Panic
        // window (6 s: the samples of 118, 120, 122 s): (100 + 100 + 1000)
        // / 3 = 400 → 4 replicas of 1 ready, 400 % ≥ 200 %: panic, 4. At
        // 124 s: (100 + 1000 + 1000) / 3 = 700 → 7 (in panic, never down).
        // At 126 s: 1000 → 10, which covers the load.
        assert_eq!(r.first_scale_up_s, Some(2.0));
        assert_eq!(r.time_to_react_s, Some(6.0));
        assert_eq!(r.peak_desired, 10);
        assert!(r.panic_evaluations > 0);
        // Needed: 1 replica for 61 evaluations (0..=120 s), 10 for 60.
        assert_eq!(r.needed_replica_seconds, (61.0 + 600.0) * 2.0);
        // Short by 6 (at 122 s) and 3 (at 124 s) replicas for 2 s each.
        assert!((r.under_provisioning_share - 18.0 / 1322.0).abs() < 1e-9);
        assert_eq!(r.over_provisioning_share, 0.0);
        let svg = r.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(r.text().contains("time to react"));
    }

    #[test]
    fn a_slow_start_delays_readiness_and_hpa_limits_the_rate() {
        let t = trace("0,100\n120,100\n120,1000\n240,1000\n");
        let options = SimOptions {
            policy: Policy {
                algorithm: Algorithm::Hpa,
                target: 100.0,
                target_utilization: 1.0,
                ..Policy::default()
            },
            step: Duration::from_secs(2),
            startup: Duration::from_secs(10),
        };
        let r = simulate(&t, &options).unwrap();
        // HPA's default scale-up policy from 1: max(+100 %, +4) = 5 first.
        let first = r.points.iter().find(|p| p.desired > 1).unwrap();
        assert_eq!(first.desired, 5);
        // Those are ready 10 s later, not before.
        let ready5 = r.points.iter().find(|p| p.ready >= 5).unwrap();
        assert!(ready5.time_s - first.time_s >= 10.0, "{ready5:?} {first:?}");
        assert!(r.time_to_react_s.unwrap() > 10.0);
        assert!(r.under_provisioning_share > 0.0);
    }
}
