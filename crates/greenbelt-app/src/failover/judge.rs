//! What the failover drill measured, and the pure [`judge`] that turns it
//! into a verdict: detection, RTO, RPO (acknowledged writes the surviving
//! region does not have), failed requests, fail-back, and the objectives
//! given on the command line. No I/O; times are wall-clock ms.

use std::collections::BTreeSet;

use serde::Serialize;

/// Which region answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    A,
    B,
}

/// One prediction the load sent, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    pub sent_ms: i64,
    /// When the answer arrived.
    pub done_ms: i64,
    pub ok: bool,
    /// The region that served it (None when it failed).
    pub region: Option<Region>,
}

/// What a write wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteKind {
    /// A registry version registration (PostgreSQL).
    Registry,
    /// A feature push (Redis).
    Feature,
}

/// One sequence-numbered write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Write {
    pub kind: WriteKind,
    pub seq: u64,
    pub sent_ms: i64,
    /// When it was acknowledged (2xx); None when it failed.
    pub acked_ms: Option<i64>,
    /// Refused because the region's store was a read-only replica.
    pub read_only: bool,
}

/// Sequence numbers found in a region's stores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Found {
    pub registry: BTreeSet<u64>,
    pub feature: BTreeSet<u64>,
    /// When they were read.
    pub read_ms: i64,
}

impl Found {
    fn has(&self, w: &Write) -> bool {
        match w.kind {
            WriteKind::Registry => self.registry.contains(&w.seq),
            WriteKind::Feature => self.feature.contains(&w.seq),
        }
    }
}

/// The fail-back as it ran.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Failback {
    pub started_ms: i64,
    /// Region A's database and Redis rebuilt as replicas of B and caught up.
    pub a_caught_up_ms: Option<i64>,
    /// A's database and Redis primary again (planned switchover).
    pub a_promoted_ms: Option<i64>,
    /// B's database rebuilt as a standby of A and streaming.
    pub b_standby_ms: Option<i64>,
}

/// What the drill measured (the input of [`judge`]).
#[derive(Debug, Clone, Default)]
pub struct Measurements {
    /// Region A taken down (the first kill).
    pub fail_ms: Option<i64>,
    /// The load balancer marked region A's server down.
    pub detected_ms: Option<i64>,
    /// Region B's database and Redis promoted.
    pub promoted_ms: Option<i64>,
    pub probes: Vec<Probe>,
    pub writes: Vec<Write>,
    /// What region B had after the failover.
    pub in_b: Option<Found>,
    pub failback: Option<Failback>,
    /// What region A had after the fail-back.
    pub in_a: Option<Found>,
}

/// The objectives from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Objectives {
    pub rto_ms: Option<i64>,
    pub rpo_ms: Option<i64>,
}

/// Writes of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct WriteStats {
    pub sent: u64,
    /// Acknowledged by region A before it went down.
    pub acked_by_a: u64,
    /// Acknowledged, but missing from region B after the failover.
    pub lost: u64,
    pub failed: u64,
    /// Of the failed, refused by a read-only replica (B before promotion).
    pub refused_read_only: u64,
    /// From the failure to the first write acknowledged after it.
    pub recovered_after_ms: Option<i64>,
    /// Acknowledged, but missing from region A after the fail-back.
    pub lost_in_failback: u64,
}

/// What the drill concludes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// From the failure to the balancer marking region A down.
    pub detection_ms: Option<i64>,
    /// From the failure to region B's stores promoted.
    pub promotion_ms: Option<i64>,
    /// From the failure to the first successful prediction served by B.
    pub rto_ms: Option<i64>,
    /// How far back acknowledged writes were lost: from the oldest lost
    /// write's acknowledgement to the failure (0: nothing lost).
    pub rpo_ms: Option<i64>,
    pub requests: u64,
    pub failed_requests: u64,
    /// Failed predictions from the failure to B's first answer.
    pub failed_during_failover: u64,
    /// Failed predictions from the fail-back's start to its end.
    pub failed_during_failback: u64,
    pub registry_writes: WriteStats,
    pub feature_pushes: WriteStats,
    /// From the fail-back's start to region A primary again and serving.
    pub failback_ms: Option<i64>,
    /// From the fail-back's start to B streaming again as A's standby.
    pub redundancy_restored_ms: Option<i64>,
    pub objectives: Objectives,
    pub passed: bool,
    pub notes: Vec<String>,
}

fn write_stats(m: &Measurements, kind: WriteKind) -> (WriteStats, Option<i64>) {
    let fail = m.fail_ms.unwrap_or(i64::MAX);
    let ws: Vec<&Write> = m.writes.iter().filter(|w| w.kind == kind).collect();
    let acked_before = |w: &&Write, by: Option<&Found>| {
        by.is_some_and(|f| w.acked_ms.is_some_and(|a| a <= f.read_ms))
    };
    let lost: Vec<&&Write> = ws
        .iter()
        .filter(|w| acked_before(w, m.in_b.as_ref()) && m.in_b.as_ref().is_some_and(|f| !f.has(w)))
        .collect();
    let oldest_lost = lost.iter().filter_map(|w| w.acked_ms).min();
    let stats = WriteStats {
        sent: ws.len() as u64,
        acked_by_a: ws
            .iter()
            .filter(|w| w.acked_ms.is_some_and(|a| a < fail))
            .count() as u64,
        lost: lost.len() as u64,
        failed: ws.iter().filter(|w| w.acked_ms.is_none()).count() as u64,
        refused_read_only: ws.iter().filter(|w| w.read_only).count() as u64,
        recovered_after_ms: ws
            .iter()
            .filter(|w| w.sent_ms >= fail)
            .filter_map(|w| w.acked_ms)
            .min()
            .map(|a| a - fail),
        lost_in_failback: ws
            .iter()
            .filter(|w| {
                acked_before(w, m.in_a.as_ref()) && m.in_a.as_ref().is_some_and(|f| !f.has(w))
            })
            .count() as u64,
    };
    (stats, oldest_lost)
}

fn need(notes: &mut Vec<String>, ok: bool, why: impl FnOnce() -> String) {
    if !ok {
        notes.push(why());
    }
}

/// Judge a drill: did region A go down, was it detected, was B promoted
/// and serving predictions and writes, which acknowledged writes were
/// lost, did the fail-back bring A back without losing any, and were the
/// objectives met?
pub fn judge(m: &Measurements, o: &Objectives) -> Verdict {
    let mut notes = Vec::new();
    let fail = m.fail_ms;
    let since = |x: Option<i64>| fail.zip(x).map(|(f, x)| (x - f).max(0));
    let after_fail = |p: &&Probe| fail.is_some_and(|f| p.sent_ms >= f);
    let first_b = m
        .probes
        .iter()
        .filter(after_fail)
        .filter(|p| p.ok && p.region == Some(Region::B))
        .map(|p| p.done_ms)
        .min();
    let (registry, reg_lost) = write_stats(m, WriteKind::Registry);
    let (feature, feat_lost) = write_stats(m, WriteKind::Feature);
    let oldest_lost = reg_lost.into_iter().chain(feat_lost).min();
    let rpo_ms = match (fail, &m.in_b) {
        (Some(f), Some(_)) => Some(oldest_lost.map_or(0, |a| (f - a).max(0))),
        _ => None,
    };
    let failed_during_failover = m
        .probes
        .iter()
        .filter(after_fail)
        .filter(|p| !p.ok && first_b.is_none_or(|b| p.sent_ms <= b))
        .count() as u64;
    let fb = m.failback;
    let fb_end = fb.and_then(|f| f.a_promoted_ms.max(f.b_standby_ms));
    let failed_during_failback = m
        .probes
        .iter()
        .filter(|p| {
            !p.ok
                && fb.is_some_and(|f| p.sent_ms >= f.started_ms)
                && fb_end.is_none_or(|e| p.sent_ms <= e)
        })
        .count() as u64;
    // Region A serving again: promoted, and a prediction served by it.
    let a_back = fb.and_then(|f| {
        let served = m
            .probes
            .iter()
            .filter(|p| p.ok && p.region == Some(Region::A) && p.sent_ms >= f.started_ms)
            .map(|p| p.done_ms)
            .min()?;
        Some(served.max(f.a_promoted_ms?) - f.started_ms)
    });

    need(&mut notes, fail.is_some(), || {
        "region A was never taken down".into()
    });
    need(&mut notes, m.detected_ms.is_some(), || {
        "the load balancer never marked region A down".into()
    });
    need(&mut notes, m.promoted_ms.is_some(), || {
        "region B was never promoted".into()
    });
    need(&mut notes, first_b.is_some(), || {
        "no prediction was served by region B after region A went down".into()
    });
    need(&mut notes, m.in_b.is_some(), || {
        "region B's registry and online store could not be read after the failover".into()
    });
    for (what, s) in [("registry write", &registry), ("feature push", &feature)] {
        need(&mut notes, s.acked_by_a > 0, || {
            format!(
                "no {what} was acknowledged by region A before the failure: nothing to measure the RPO with"
            )
        });
        need(&mut notes, s.recovered_after_ms.is_some(), || {
            format!("no {what} succeeded after region A went down (region B never took writes)")
        });
        need(&mut notes, s.lost_in_failback == 0, || {
            format!(
                "{} acknowledged {what}s are missing from region A after the fail-back (a planned switchover must lose none)",
                s.lost_in_failback
            )
        });
    }
    match fb {
        None => notes.push("the fail-back did not run".into()),
        Some(f) => {
            need(&mut notes, f.a_promoted_ms.is_some(), || {
                "region A was not made primary again".into()
            });
            need(&mut notes, a_back.is_some(), || {
                "no prediction was served by region A after the fail-back".into()
            });
            need(&mut notes, f.b_standby_ms.is_some(), || {
                "region B did not rejoin as region A's standby".into()
            });
            need(&mut notes, m.in_a.is_some(), || {
                "region A's registry and online store could not be read after the fail-back".into()
            });
        }
    }
    let rto_ms = since(first_b);
    if let (Some(want), Some(got)) = (o.rto_ms, rto_ms)
        && got > want
    {
        notes.push(format!("RTO {got} ms misses the objective of {want} ms"));
    }
    if let (Some(want), Some(got)) = (o.rpo_ms, rpo_ms)
        && got > want
    {
        notes.push(format!(
            "RPO {got} ms misses the objective of {want} ms ({} registry writes and {} feature pushes lost)",
            registry.lost, feature.lost
        ));
    }
    Verdict {
        detection_ms: since(m.detected_ms),
        promotion_ms: since(m.promoted_ms),
        rto_ms,
        rpo_ms,
        requests: m.probes.len() as u64,
        failed_requests: m.probes.iter().filter(|p| !p.ok).count() as u64,
        failed_during_failover,
        failed_during_failback,
        registry_writes: registry,
        feature_pushes: feature,
        failback_ms: a_back,
        redundancy_restored_ms: fb.and_then(|f| Some(f.b_standby_ms? - f.started_ms)),
        objectives: *o,
        passed: notes.is_empty(),
        notes,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const FAIL: i64 = 1_000_000;

    /// A drill by the book: a prediction every 20 ms from -4 s to +14 s,
    /// served by A until the failure, failing until B answers at +600 ms,
    /// by B until the fail-back at +8 s, failing for 100 ms while A takes
    /// over at +9.5 s, then by A. Writes every 100 ms; B refuses them
    /// (read-only) until promoted at +700 ms; writes 1..=40 acked by A.
    fn drill() -> Measurements {
        let probes = (-200..700)
            .map(|i| {
                let at = i * 20;
                let (ok, region) = match at {
                    x if x < 0 => (true, Some(Region::A)),
                    x if x < 600 => (false, None),
                    x if x < 9500 => (true, Some(Region::B)),
                    x if x < 9600 => (false, None),
                    _ => (true, Some(Region::A)),
                };
                Probe {
                    sent_ms: FAIL + at,
                    done_ms: FAIL + at + 5,
                    ok,
                    region,
                }
            })
            .collect();
        let mut writes = Vec::new();
        for (n, i) in (-40..140).enumerate() {
            let at = i * 100;
            for kind in [WriteKind::Registry, WriteKind::Feature] {
                let acked = !(0..700).contains(&at) && !(9500..9600).contains(&at);
                writes.push(Write {
                    kind,
                    seq: n as u64 + 1,
                    sent_ms: FAIL + at,
                    acked_ms: acked.then_some(FAIL + at + 3),
                    read_only: (100..700).contains(&at),
                });
            }
        }
        let acked = |upto: i64| -> BTreeSet<u64> {
            writes
                .iter()
                .filter(|w| w.kind == WriteKind::Registry && w.acked_ms.is_some_and(|a| a <= upto))
                .map(|w| w.seq)
                .collect()
        };
        let in_b = Found {
            registry: acked(FAIL + 7000),
            feature: acked(FAIL + 7000),
            read_ms: FAIL + 7000,
        };
        let in_a = Found {
            registry: acked(FAIL + 13_000),
            feature: acked(FAIL + 13_000),
            read_ms: FAIL + 13_000,
        };
        Measurements {
            fail_ms: Some(FAIL),
            detected_ms: Some(FAIL + 450),
            promoted_ms: Some(FAIL + 650),
            probes,
            writes,
            in_b: Some(in_b),
            failback: Some(Failback {
                started_ms: FAIL + 8000,
                a_caught_up_ms: Some(FAIL + 9000),
                a_promoted_ms: Some(FAIL + 9600),
                b_standby_ms: Some(FAIL + 10_500),
            }),
            in_a: Some(in_a),
        }
    }

    #[test]
    fn a_drill_by_the_book_passes_and_measures_each_step() {
        let v = judge(&drill(), &Objectives::default());
        assert!(v.passed, "{v:?}");
        assert_eq!(v.detection_ms, Some(450));
        assert_eq!(v.promotion_ms, Some(650));
        // B's first answer: sent at +600, done 5 ms later.
        assert_eq!(v.rto_ms, Some(605));
        assert_eq!(v.rpo_ms, Some(0));
        assert_eq!(v.requests, 900);
        assert_eq!(v.failed_during_failover, 30);
        assert_eq!(v.failed_during_failback, 5);
        assert_eq!(v.failed_requests, 35);
        let r = v.registry_writes;
        assert_eq!(
            (r.sent, r.acked_by_a, r.lost, r.lost_in_failback),
            (180, 40, 0, 0)
        );
        assert_eq!((r.failed, r.refused_read_only), (8, 6));
        assert_eq!(r.recovered_after_ms, Some(703));
        assert_eq!(v.feature_pushes, r);
        // A promoted at +9.6 s, its first answer sent at +9.6 s, done +5 ms.
        assert_eq!(v.failback_ms, Some(1605));
        assert_eq!(v.redundancy_restored_ms, Some(2500));
    }

    #[test]
    fn lost_writes_give_the_rpo_and_are_judged_against_the_objective() {
        let mut m = drill();
        // The last two registry writes A acknowledged (at -97 and -197 ms)
        // never reached B; one feature push (at -297 ms) neither.
        let b = m.in_b.as_mut().unwrap();
        b.registry.remove(&40);
        b.registry.remove(&39);
        b.feature.remove(&38);
        let v = judge(&m, &Objectives::default());
        assert!(
            v.passed,
            "without an RPO objective losses are reported: {v:?}"
        );
        assert_eq!(v.registry_writes.lost, 2);
        assert_eq!(v.feature_pushes.lost, 1);
        assert_eq!(v.rpo_ms, Some(297));
        let v = judge(
            &m,
            &Objectives {
                rto_ms: Some(1000),
                rpo_ms: Some(250),
            },
        );
        assert!(!v.passed);
        assert_eq!(
            v.notes,
            [
                "RPO 297 ms misses the objective of 250 ms (2 registry writes and 1 feature pushes lost)"
            ]
        );
        let v = judge(
            &m,
            &Objectives {
                rto_ms: Some(500),
                rpo_ms: Some(300),
            },
        );
        assert_eq!(v.notes, ["RTO 605 ms misses the objective of 500 ms"]);
    }

    #[test]
    fn a_failover_that_never_happened_names_each_missing_step() {
        let mut m = drill();
        m.detected_ms = None;
        m.promoted_ms = None;
        m.in_b = None;
        for p in &mut m.probes {
            if p.region == Some(Region::B) {
                *p = Probe {
                    ok: false,
                    region: None,
                    ..*p
                };
            }
        }
        for w in &mut m.writes {
            if w.sent_ms >= FAIL && w.sent_ms < FAIL + 9600 {
                w.acked_ms = None;
            }
        }
        let v = judge(&m, &Objectives::default());
        assert!(!v.passed);
        assert_eq!(v.rto_ms, None);
        assert_eq!(v.rpo_ms, None);
        for want in [
            "never marked region A down",
            "region B was never promoted",
            "no prediction was served by region B",
            "could not be read after the failover",
        ] {
            assert!(
                v.notes.iter().any(|n| n.contains(want)),
                "{want}: {:?}",
                v.notes
            );
        }
        // Writes recovered only after the fail-back: B never took them.
        assert_eq!(v.registry_writes.recovered_after_ms, Some(9603));
    }

    #[test]
    fn the_failback_must_bring_a_back_and_lose_nothing() {
        let mut m = drill();
        m.in_a.as_mut().unwrap().registry.remove(&100);
        let v = judge(&m, &Objectives::default());
        assert_eq!(v.registry_writes.lost_in_failback, 1);
        assert!(v.notes[0].contains("1 acknowledged registry writes are missing from region A"));

        let mut m = drill();
        m.failback = Some(Failback {
            started_ms: FAIL + 8000,
            ..Failback::default()
        });
        let v = judge(&m, &Objectives::default());
        assert_eq!(v.failback_ms, None);
        for want in ["not made primary again", "did not rejoin"] {
            assert!(
                v.notes.iter().any(|n| n.contains(want)),
                "{want}: {:?}",
                v.notes
            );
        }
        m.failback = None;
        let v = judge(&m, &Objectives::default());
        assert!(v.notes.iter().any(|n| n == "the fail-back did not run"));
    }

    #[test]
    fn nothing_acknowledged_before_the_failure_cannot_measure_the_rpo() {
        let mut m = drill();
        m.writes.retain(|w| w.sent_ms >= FAIL);
        let v = judge(&m, &Objectives::default());
        assert!(!v.passed);
        assert!(
            v.notes
                .iter()
                .any(|n| n.contains("nothing to measure the RPO with"))
        );
    }
}
