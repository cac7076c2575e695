//! The input every trainer takes: a validated, row-major, dense `f64` matrix
//! borrowed from the caller, plus label checks shared by trainers and metrics.

use crate::error::TrainError;

/// A row-major `rows x cols` matrix of finite `f64`, borrowed from the caller.
/// Construction checks the shape and that every value is finite, so trainers
/// and predictors never see NaN.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenseMatrix<'a> {
    data: &'a [f64],
    rows: usize,
    cols: usize,
}

impl<'a> DenseMatrix<'a> {
    /// Wrap `data` (row `i` is `data[i * cols..(i + 1) * cols]`).
    pub fn new(data: &'a [f64], rows: usize, cols: usize) -> Result<Self, TrainError> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(TrainError::Shape {
                rows,
                cols,
                len: data.len(),
            });
        }
        check_finite("features", data)?;
        Ok(DenseMatrix { data, rows, cols })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The whole buffer, row-major.
    pub fn data(&self) -> &'a [f64] {
        self.data
    }

    /// Row `i`. Panics when `i >= rows()`, like slice indexing.
    pub fn row(&self, i: usize) -> &'a [f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Every row, in order.
    pub fn iter_rows(&self) -> impl Iterator<Item = &'a [f64]> + '_ {
        // Not `chunks_exact(cols)`: it panics for cols = 0, where `rows`
        // empty rows are still owed.
        let cols = self.cols;
        (0..self.rows).map(move |i| &self.data[i * cols..(i + 1) * cols])
    }
}

/// Fail on the first NaN or infinity.
pub(crate) fn check_finite(what: &'static str, values: &[f64]) -> Result<(), TrainError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(TrainError::NotFinite {
            what,
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

/// Check binary labels (each exactly 0.0 or 1.0) and count the positives.
pub(crate) fn check_labels(what: &'static str, y: &[f64]) -> Result<usize, TrainError> {
    let mut positives = 0;
    for (index, &value) in y.iter().enumerate() {
        if value == 1.0 {
            positives += 1;
        } else if value != 0.0 {
            return Err(if value.is_nan() {
                TrainError::NotFinite { what, index, value }
            } else {
                TrainError::InvalidLabel { what, index, value }
            });
        }
    }
    Ok(positives)
}

/// Fail unless both classes occur among `n` labels with `positives` ones.
pub(crate) fn require_both_classes(
    what: &'static str,
    n: usize,
    positives: usize,
) -> Result<(), TrainError> {
    if positives == 0 {
        Err(TrainError::SingleClass { what, class: 0 })
    } else if positives == n {
        Err(TrainError::SingleClass { what, class: 1 })
    } else {
        Ok(())
    }
}

/// Fail unless the two slices are non-empty and equally long.
pub(crate) fn check_pair(
    what: &'static str,
    left_name: &'static str,
    left: usize,
    right_name: &'static str,
    right: usize,
) -> Result<(), TrainError> {
    if left != right {
        return Err(TrainError::LengthMismatch {
            what,
            left_name,
            left,
            right_name,
            right,
        });
    }
    if left == 0 {
        return Err(TrainError::Empty { what });
    }
    Ok(())
}

/// The numerically stable logistic function.
pub(crate) fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_checks_shape_and_finiteness() {
        let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let m = DenseMatrix::new(&data, 2, 3).unwrap();
        assert_eq!(m.row(1), &[4.0, 5.0, 6.0]);
        assert_eq!(m.iter_rows().count(), 2);
        assert!(matches!(
            DenseMatrix::new(&data, 4, 2),
            Err(TrainError::Shape { len: 6, .. })
        ));
        let bad = [1.0, f64::NAN];
        let err = DenseMatrix::new(&bad, 1, 2).unwrap_err();
        assert!(matches!(err, TrainError::NotFinite { index: 1, .. }));
        assert!(err.to_string().contains("index 1"), "{err}");
    }

    #[test]
    fn labels_must_be_zero_or_one() {
        assert_eq!(check_labels("y", &[0.0, 1.0, 1.0]).unwrap(), 2);
        assert!(matches!(
            check_labels("y", &[0.0, 2.0]),
            Err(TrainError::InvalidLabel { index: 1, .. })
        ));
        assert!(matches!(
            check_labels("y", &[f64::NAN]),
            Err(TrainError::NotFinite { .. })
        ));
    }

    #[test]
    fn sigmoid_is_stable_at_the_extremes() {
        assert_eq!(sigmoid(1000.0), 1.0);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-16);
        assert!((sigmoid(2.0) + sigmoid(-2.0) - 1.0).abs() <= 2.0 * f64::EPSILON);
    }
}
