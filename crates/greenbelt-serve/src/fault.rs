//! Fault injection for release drills (`greenbelt drill bad-deploy`): a
//! model version registered with the tag `fault` is served through a wrapper
//! that breaks it the chosen way, after its warm-up call succeeded (the
//! realistic bad deploy: it loads fine and fails on live traffic).
//!
//! - `error`: every call fails with a runtime error (HTTP 500).
//! - `slow:<duration>`: every call first sleeps, e.g. `slow:200ms`.
//! - `wrong`: outputs are wrong — scores become `1 - score`, integer labels
//!   `1 - label` — so the version answers, quickly, with bad answers.
//!
//! Only a server with `[server] allow_fault_injection = true` serves such a
//! version; otherwise loading it is refused with a message saying so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use greenbelt_core::{Signature, Tensor, TensorData};
use greenbelt_runtime::{Backend, Model, RuntimeError};

/// The longest injected delay: a slow fault holds a compute thread for
/// this long per call, so it is bounded.
pub const MAX_SLOW: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    Error,
    Slow(Duration),
    Wrong,
}

impl Fault {
    pub fn parse(text: &str) -> Result<Fault, String> {
        let t = text.trim();
        match t {
            "error" => Ok(Fault::Error),
            "wrong" => Ok(Fault::Wrong),
            _ => match t.strip_prefix("slow:") {
                Some(d) => {
                    let d = humantime::parse_duration(d.trim())
                        .map_err(|e| format!("fault \"{t}\": {e}; write e.g. slow:200ms"))?;
                    if d > MAX_SLOW {
                        return Err(format!(
                            "fault \"{t}\": the delay is longer than the {} s bound; a slow fault holds a compute thread for every call",
                            MAX_SLOW.as_secs()
                        ));
                    }
                    Ok(Fault::Slow(d))
                }
                None => Err(format!(
                    "fault \"{t}\" is unknown; use error, slow:<duration> or wrong"
                )),
            },
        }
    }
}

/// A model that misbehaves after its first (warm-up) call.
pub struct FaultyModel {
    inner: Arc<dyn Model>,
    fault: Fault,
    armed: AtomicBool,
}

impl FaultyModel {
    pub fn wrap(inner: Arc<dyn Model>, fault: Fault) -> Arc<dyn Model> {
        Arc::new(FaultyModel {
            inner,
            fault,
            armed: AtomicBool::new(false),
        })
    }
}

fn flip(t: &mut Tensor) {
    match &mut t.data {
        TensorData::Fp32(v) => v.iter_mut().for_each(|x| *x = 1.0 - *x),
        TensorData::Fp64(v) => v.iter_mut().for_each(|x| *x = 1.0 - *x),
        TensorData::Fp16(v) => v
            .iter_mut()
            .for_each(|x| *x = half::f16::from_f32(1.0 - x.to_f32())),
        TensorData::Int64(v) => v.iter_mut().for_each(|x| *x = 1 - *x),
        TensorData::Int32(v) => v.iter_mut().for_each(|x| *x = 1 - *x),
        _ => {}
    }
}

impl Model for FaultyModel {
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    fn instances(&self) -> Option<usize> {
        self.inner.instances()
    }

    fn set_instances(&self, n: usize) -> Result<Option<usize>, RuntimeError> {
        self.inner.set_instances(n)
    }

    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        if !self.armed.swap(true, Ordering::Relaxed) {
            return self.inner.infer(inputs);
        }
        match &self.fault {
            Fault::Error => Err(RuntimeError::Inference(
                "injected fault: this version fails every request (drill)".into(),
            )),
            Fault::Slow(d) => {
                // Model calls run on compute (blocking) threads, never on
                // the async runtime, so a blocking sleep is the faithful
                // imitation of a slow model.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep((*d).min(MAX_SLOW));
                self.inner.infer(inputs)
            }
            Fault::Wrong => {
                let mut out = self.inner.infer(inputs)?;
                out.iter_mut().for_each(flip);
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_faults() {
        assert_eq!(Fault::parse("error"), Ok(Fault::Error));
        assert_eq!(Fault::parse(" wrong "), Ok(Fault::Wrong));
        assert_eq!(
            Fault::parse("slow:250ms"),
            Ok(Fault::Slow(Duration::from_millis(250)))
        );
        assert!(
            Fault::parse("slow:soon")
                .unwrap_err()
                .contains("slow:200ms")
        );
        assert!(Fault::parse("flaky").unwrap_err().contains("error, slow"));
        assert_eq!(
            Fault::parse("slow:30s"),
            Ok(Fault::Slow(Duration::from_secs(30)))
        );
        assert!(Fault::parse("slow:1h").unwrap_err().contains("30 s bound"));
        assert!(Fault::parse("slow:100000000y").is_err());
    }
}
