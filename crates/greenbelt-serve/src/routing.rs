//! Per-request version choice for a deployment: the stable version, a
//! canary at a weight, a blue/green preview reachable only when asked for,
//! and shadows that get an asynchronous copy. A [`Routing`] is an immutable
//! snapshot installed with the model entry; the rollout controller replaces
//! it atomically, so a request sees one consistent plan.
//!
//! Weights are basis points (1/100 of a percent). With a sticky key (a
//! header value, e.g. a user id) the choice is a hash of the key, so one key
//! sees one version, and a key that was on the canary stays there as the
//! weight grows. Without one, each request draws independently.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::error::ServeError;

/// Request header that forces a track (`stable`, `canary` or `preview`);
/// the same header on a response names the track that answered.
pub const TRACK_HEADER: &str = "x-greenbelt-track";

pub const FULL: u32 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    Stable,
    Canary,
    Preview,
    /// The client named the version (URL path).
    Pinned,
}

impl Track {
    pub const ALL: [Track; 4] = [Track::Stable, Track::Canary, Track::Preview, Track::Pinned];

    pub fn as_str(self) -> &'static str {
        match self {
            Track::Stable => "stable",
            Track::Canary => "canary",
            Track::Preview => "preview",
            Track::Pinned => "pinned",
        }
    }
}

/// One shadow: the version that gets a copy and the share of requests copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowRoute {
    pub version: u64,
    /// Basis points of requests mirrored (0..=10000).
    pub fraction_bp: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Routing {
    pub stable: u64,
    pub canary: Option<u64>,
    /// Basis points of traffic sent to the canary (0..=10000).
    pub canary_bp: u32,
    pub preview: Option<u64>,
    /// Header whose value keeps a caller on one version.
    pub sticky_header: Option<String>,
    pub shadows: Vec<ShadowRoute>,
    /// Drifted requests to a challenger (`[deployments.drift_routing]`).
    #[serde(skip)]
    pub drift: Option<DriftRoute>,
}

/// The resolved drift-routing rule of a plan: the challenger version and
/// the stable version's in-distribution bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftRoute {
    /// The challenger (one of the plan's shadows; it gets no other traffic).
    pub version: u64,
    pub action: crate::drift::DriftAction,
    pub bounds: std::sync::Arc<crate::drift::OodBounds>,
    pub min_features: usize,
}

// The bounds are reference quantiles of finite values (never NaN), so
// equality is reflexive: a plan compares equal to itself.
impl Eq for DriftRoute {}

impl Routing {
    pub fn stable_only(stable: u64) -> Routing {
        Routing {
            stable,
            canary: None,
            canary_bp: 0,
            preview: None,
            sticky_header: None,
            shadows: Vec::new(),
            drift: None,
        }
    }

    /// Versions this plan needs loaded.
    pub fn versions(&self) -> Vec<u64> {
        let mut v = vec![self.stable];
        v.extend(self.canary);
        v.extend(self.preview);
        v.extend(self.shadows.iter().map(|s| s.version));
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Choose the version for one request. `track` is the forcing header's
    /// value; `key` the sticky key's value, if any.
    pub fn choose(
        &self,
        track: Option<&str>,
        key: Option<&[u8]>,
    ) -> Result<(u64, Track), ServeError> {
        if let Some(t) = track.map(str::trim).filter(|t| !t.is_empty()) {
            return match t {
                "stable" => Ok((self.stable, Track::Stable)),
                "canary" => self.canary.map(|v| (v, Track::Canary)).ok_or_else(|| {
                    ServeError::InvalidInput(format!(
                        "{TRACK_HEADER}: canary, but no canary is running; use stable"
                    ))
                }),
                "preview" => self.preview.map(|v| (v, Track::Preview)).ok_or_else(|| {
                    ServeError::InvalidInput(format!(
                        "{TRACK_HEADER}: preview, but no preview version is deployed; use stable"
                    ))
                }),
                other => Err(ServeError::InvalidInput(format!(
                    "{TRACK_HEADER} \"{}\" is not a track; use stable, canary or preview",
                    other.chars().take(64).collect::<String>()
                ))),
            };
        }
        match self.canary {
            Some(c) if self.canary_bp > 0 => {
                let b = match key {
                    Some(k) => bucket(k),
                    None => random_bucket(),
                };
                if b < self.canary_bp {
                    Ok((c, Track::Canary))
                } else {
                    Ok((self.stable, Track::Stable))
                }
            }
            _ => Ok((self.stable, Track::Stable)),
        }
    }

    /// The shadows this request is copied to (each drawn independently).
    pub fn mirror_to(&self) -> impl Iterator<Item = u64> + '_ {
        self.shadows
            .iter()
            .filter(|s| {
                s.fraction_bp >= FULL || (s.fraction_bp > 0 && random_bucket() < s.fraction_bp)
            })
            .filter(|s| self.drift.as_ref().is_none_or(|d| d.version != s.version))
            .map(|s| s.version)
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable bucket in 0..10000 for a key: FNV-1a, then a mixing finaliser
/// so that similar keys spread. The same on every replica and release.
pub fn bucket(key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (splitmix64(h) % u64::from(FULL)) as u32
}

static DRAWS: AtomicU64 = AtomicU64::new(0x5eed);

/// An independent bucket per call (a counter through splitmix64: uniform,
/// lock-free, no RNG state to share).
pub fn random_bucket() -> u32 {
    let n = DRAWS.fetch_add(1, Ordering::Relaxed);
    (splitmix64(n) % u64::from(FULL)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(bp: u32) -> Routing {
        Routing {
            canary: Some(2),
            canary_bp: bp,
            ..Routing::stable_only(1)
        }
    }

    /// A binomial share within 5 standard deviations of the weight.
    fn assert_share(hits: u64, n: u64, p: f64) {
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        let mean = n as f64 * p;
        assert!(
            (hits as f64 - mean).abs() <= 5.0 * sd + 1.0,
            "{hits} of {n}, expected {mean} ± {}",
            5.0 * sd
        );
    }

    #[test]
    fn weights_are_honoured_without_a_key() {
        for bp in [0, 100, 1_000, 2_500, 5_000, 9_000, 10_000] {
            let r = canary(bp);
            let n = 40_000;
            let hits = (0..n)
                .filter(|_| r.choose(None, None).ok().map(|c| c.1) == Some(Track::Canary))
                .count() as u64;
            assert_share(hits, n, f64::from(bp) / 1e4);
        }
    }

    #[test]
    fn weights_are_honoured_over_keys_and_keys_are_sticky() {
        let r = canary(2_000);
        let keys: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let first: Vec<u64> = keys
            .iter()
            .map(|k| r.choose(None, Some(k.as_bytes())).map(|c| c.0).unwrap_or(0))
            .collect();
        let hits = first.iter().filter(|v| **v == 2).count() as u64;
        assert_share(hits, keys.len() as u64, 0.2);
        // Same key, same version, every time.
        for (k, v) in keys.iter().zip(&first).take(2_000) {
            for _ in 0..3 {
                assert_eq!(
                    r.choose(None, Some(k.as_bytes())).ok().map(|c| c.0),
                    Some(*v)
                );
            }
        }
        // Raising the weight never moves a canary user back to stable.
        let r2 = canary(5_000);
        for (k, v) in keys.iter().zip(&first) {
            if *v == 2 {
                assert_eq!(
                    r2.choose(None, Some(k.as_bytes())).ok().map(|c| c.0),
                    Some(2)
                );
            }
        }
    }

    #[test]
    fn track_header_forces_a_version() {
        let mut r = canary(0);
        r.preview = Some(3);
        assert_eq!(
            r.choose(Some("canary"), None).ok(),
            Some((2, Track::Canary))
        );
        assert_eq!(
            r.choose(Some("preview"), None).ok(),
            Some((3, Track::Preview))
        );
        assert_eq!(
            r.choose(Some("stable"), None).ok(),
            Some((1, Track::Stable))
        );
        let e = Routing::stable_only(1)
            .choose(Some("canary"), None)
            .unwrap_err();
        assert!(e.to_string().contains("no canary"), "{e}");
        let e = r.choose(Some("blue"), None).unwrap_err();
        assert!(e.to_string().contains("stable, canary or preview"), "{e}");
    }

    #[test]
    fn mirror_fraction_is_honoured() {
        let r = Routing {
            shadows: vec![
                ShadowRoute {
                    version: 7,
                    fraction_bp: 5_000,
                },
                ShadowRoute {
                    version: 8,
                    fraction_bp: 10_000,
                },
                ShadowRoute {
                    version: 9,
                    fraction_bp: 0,
                },
            ],
            ..Routing::stable_only(1)
        };
        let n = 20_000;
        let mut counts = [0u64; 3];
        for _ in 0..n {
            for v in r.mirror_to() {
                counts[(v - 7) as usize] += 1;
            }
        }
        assert_share(counts[0], n, 0.5);
        assert_eq!(counts[1], n);
        assert_eq!(counts[2], 0);
        assert_eq!(r.versions(), vec![1, 7, 8, 9]);
    }
}
