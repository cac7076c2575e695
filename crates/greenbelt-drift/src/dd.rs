//! A small double-double type (an unevaluated sum `hi + lo` of two `f64`s,
//! about 106 bits), for the one-sided Smirnov sum, whose terms are products
//! of large binomials and high powers. Only the operations that sum needs.
//! Also `frexp`/`ldexp` for plain `f64`, which `std` lacks.

use std::ops::{Add, Mul, Sub};

/// `hi + lo` with `|lo| <= ulp(hi)/2`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Dd {
    pub hi: f64,
    pub lo: f64,
}

fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

fn quick_two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    (s, b - (s - a))
}

fn two_prod(a: f64, b: f64) -> (f64, f64) {
    let p = a * b;
    (p, a.mul_add(b, -p))
}

impl Dd {
    pub fn new(x: f64) -> Self {
        Dd { hi: x, lo: 0.0 }
    }

    fn renorm(hi: f64, lo: f64) -> Self {
        let (hi, lo) = quick_two_sum(hi, lo);
        Dd { hi, lo }
    }

    /// The nearest `f64`.
    pub fn to_f64(self) -> f64 {
        self.hi + self.lo
    }

    pub fn is_finite(self) -> bool {
        self.hi.is_finite()
    }

    /// `self / b` for a plain `f64`.
    pub fn div_f64(self, b: f64) -> Self {
        let q1 = self.hi / b;
        let (p1, p2) = two_prod(q1, b);
        let (s, e) = two_sum(self.hi, -p1);
        let e = e + self.lo - p2;
        let q2 = (s + e) / b;
        Dd::renorm(q1, q2)
    }

    /// The largest integer not above `self`.
    pub fn floor(self) -> Self {
        let hi = self.hi.floor();
        if hi == self.hi {
            Dd::renorm(hi, self.lo.floor())
        } else {
            Dd { hi, lo: 0.0 }
        }
    }

    /// `(m, e)` with `self = m·2^e` and `|m.hi|` in [0.5, 1).
    pub fn frexp(self) -> (Self, i64) {
        let (hi, e) = frexp(self.hi);
        (
            Dd {
                hi,
                lo: ldexp(self.lo, -e),
            },
            e,
        )
    }

    /// `self·2^e`.
    pub fn ldexp(self, e: i64) -> Self {
        Dd {
            hi: ldexp(self.hi, e),
            lo: ldexp(self.lo, e),
        }
    }
}

impl Add for Dd {
    type Output = Dd;
    fn add(self, b: Dd) -> Dd {
        let (s1, s2) = two_sum(self.hi, b.hi);
        let (t1, t2) = two_sum(self.lo, b.lo);
        let (s1, s2) = quick_two_sum(s1, s2 + t1);
        Dd::renorm(s1, s2 + t2)
    }
}

impl Add<f64> for Dd {
    type Output = Dd;
    fn add(self, b: f64) -> Dd {
        let (s1, s2) = two_sum(self.hi, b);
        Dd::renorm(s1, s2 + self.lo)
    }
}

impl Sub<f64> for Dd {
    type Output = Dd;
    fn sub(self, b: f64) -> Dd {
        self + (-b)
    }
}

impl Sub for Dd {
    type Output = Dd;
    fn sub(self, b: Dd) -> Dd {
        self + Dd {
            hi: -b.hi,
            lo: -b.lo,
        }
    }
}

impl Mul for Dd {
    type Output = Dd;
    fn mul(self, b: Dd) -> Dd {
        let (p1, p2) = two_prod(self.hi, b.hi);
        Dd::renorm(p1, p2 + (self.hi * b.lo + self.lo * b.hi))
    }
}

impl Mul<f64> for Dd {
    type Output = Dd;
    fn mul(self, b: f64) -> Dd {
        let (p1, p2) = two_prod(self.hi, b);
        Dd::renorm(p1, p2 + self.lo * b)
    }
}

/// `(m, e)` with `x = m·2^e`, `|m|` in [0.5, 1); zero, infinities and NaN
/// come back unchanged with `e = 0` (C's `frexp`).
pub(crate) fn frexp(x: f64) -> (f64, i64) {
    if x == 0.0 || !x.is_finite() {
        return (x, 0);
    }
    // Scale subnormals into the normal range first.
    let (x, extra) = if x.abs() < f64::MIN_POSITIVE {
        (x * 2f64.powi(64), -64)
    } else {
        (x, 0)
    };
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i64;
    let mantissa = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
    (mantissa, exp - 1022 + extra)
}

/// `x·2^e` (C's `ldexp`), exact unless the result over- or underflows.
pub(crate) fn ldexp(x: f64, e: i64) -> f64 {
    let mut x = x;
    let mut e = e.clamp(-4000, 4000);
    while e > 1000 {
        x *= pow2(1000);
        e -= 1000;
    }
    while e < -1000 {
        x *= pow2(-1000);
        e += 1000;
    }
    // |e| <= 1000: 2^e is a normal f64; one rounding at most (subnormal x·2^e).
    x * pow2(e)
}

/// 2^e for -1022 <= e <= 1023, built from its bits.
fn pow2(e: i64) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frexp_and_ldexp_round_trip() {
        for x in [1.0, 0.75, -3.5, 1e-310, 6.0e300, -2.5e-320, f64::MAX] {
            let (m, e) = frexp(x);
            assert!((0.5..1.0).contains(&m.abs()), "{x}: {m}");
            assert_eq!(ldexp(m, e), x);
        }
        assert_eq!(frexp(0.0), (0.0, 0));
        assert_eq!(ldexp(1.0, -1074), 5e-324);
        assert_eq!(ldexp(1.0, 2000), f64::INFINITY);
    }

    #[test]
    fn double_double_keeps_the_low_part() {
        // (1 + 2^-60)·3 is not an f64 but is a double-double.
        let a = Dd::new(1.0) + 2f64.powi(-60);
        assert_eq!(a.lo, 2f64.powi(-60));
        let b = a * 3.0;
        assert_eq!((b.hi, b.lo), (3.0, 3.0 * 2f64.powi(-60)));
        let c = Dd::new(1.0).div_f64(3.0) * 3.0;
        assert!((c.hi - 1.0 + c.lo).abs() < 1e-31);
        assert_eq!((Dd::new(7.0) + 2f64.powi(-70)).floor().to_f64(), 7.0);
        assert_eq!((Dd::new(7.0) - 2f64.powi(-70)).floor().to_f64(), 6.0);
    }
}
