//! Admission: at most `max_inflight` requests and `max_inflight_bytes` of
//! request bodies are inside the server at once. A request that does not
//! fit is refused at once (503 with `Retry-After`), never queued; a server
//! that is draining refuses everything new.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ServeError;
use crate::metrics::Metrics;

/// Bytes are counted in units of this size (semaphores count `u32`).
const BYTE_UNIT: usize = 1024;

pub struct Admission {
    inflight: Arc<Semaphore>,
    max_inflight: usize,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
    draining: AtomicBool,
    metrics: Arc<Metrics>,
}

/// Held for as long as a request is inside the server.
#[derive(Debug)]
pub struct Permit {
    _inflight: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl Admission {
    pub fn new(max_inflight: usize, max_bytes: usize, metrics: Arc<Metrics>) -> Admission {
        let units = max_bytes
            .div_ceil(BYTE_UNIT)
            .clamp(1, Semaphore::MAX_PERMITS);
        Admission {
            inflight: Arc::new(Semaphore::new(
                max_inflight.clamp(1, Semaphore::MAX_PERMITS),
            )),
            max_inflight,
            bytes: Arc::new(Semaphore::new(units)),
            max_bytes,
            draining: AtomicBool::new(false),
            metrics,
        }
    }

    /// Let one request of `body_bytes` in, or refuse it now.
    pub fn admit(&self, body_bytes: usize) -> Result<Permit, ServeError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(ServeError::ShuttingDown);
        }
        let inflight = self.inflight.clone().try_acquire_owned().map_err(|_| {
            self.metrics.shed("inflight");
            ServeError::Overloaded {
                what: format!("{} requests in flight", self.max_inflight),
                retry_after_s: 1,
            }
        })?;
        let units = body_bytes.div_ceil(BYTE_UNIT);
        let bytes = if units == 0 {
            None
        } else {
            let units = u32::try_from(units).unwrap_or(u32::MAX);
            Some(
                self.bytes
                    .clone()
                    .try_acquire_many_owned(units)
                    .map_err(|_| {
                        self.metrics.shed("inflight_bytes");
                        ServeError::Overloaded {
                            what: format!(
                                "request bodies in flight would exceed [server] max_inflight_bytes = {}",
                                self.max_bytes
                            ),
                            retry_after_s: 1,
                        }
                    })?,
            )
        };
        Ok(Permit {
            _inflight: inflight,
            _bytes: bytes,
        })
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(inflight: usize, bytes: usize) -> Admission {
        Admission::new(inflight, bytes, Arc::new(Metrics::new()))
    }

    #[test]
    fn full_inflight_sheds_and_a_released_permit_admits_again() {
        let a = admission(2, 1 << 20);
        let p1 = a.admit(10).unwrap();
        let _p2 = a.admit(10).unwrap();
        let e = a.admit(10).unwrap_err();
        assert!(matches!(e, ServeError::Overloaded { .. }), "{e}");
        assert_eq!(e.retry_after(), Some(1));
        drop(p1);
        assert!(a.admit(10).is_ok());
    }

    #[test]
    fn the_byte_budget_sheds_large_bodies_but_not_small_ones() {
        let a = admission(100, 100 * 1024);
        let _big = a.admit(90 * 1024).unwrap();
        let e = a.admit(20 * 1024).unwrap_err();
        assert!(e.to_string().contains("max_inflight_bytes"), "{e}");
        assert!(a.admit(5 * 1024).is_ok());
        // A body larger than the whole budget can never get in.
        let a = admission(100, 1024);
        assert!(a.admit(10 * 1024 * 1024).is_err());
    }

    #[test]
    fn draining_refuses_everything() {
        let a = admission(10, 1 << 20);
        a.start_draining();
        assert!(matches!(a.admit(0), Err(ServeError::ShuttingDown)));
    }
}
