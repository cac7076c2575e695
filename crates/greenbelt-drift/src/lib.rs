//! Drift statistics for features, serving and the CLI.
//!
//! Every statistic here equals its scipy counterpart (golden tests in
//! `tests/`): two-sample Kolmogorov–Smirnov ([`ks`]), the population
//! stability index with one binning convention ([`psi`], also used by the
//! feature contracts), chi-square, Jensen–Shannon distance ([`categorical`])
//! and Wasserstein-1 ([`wasserstein`]). [`profile`] holds what a model
//! version's reference looks like and the bounded, mergeable window sketches
//! that live traffic is counted into.
//!
//! This crate owns the maths only: no I/O, no clocks, no async.

pub mod categorical;
mod dd;
mod gamma;
mod kolmogorov;
pub mod ks;
pub mod profile;
pub mod psi;
pub mod wasserstein;

pub use categorical::{ChiSquare, chisquare, jensenshannon};
pub use ks::{KsMethod, KsResult, ks_2samp, ks_2samp_sorted, ks_pvalue};
pub use psi::{PSI_EPS, bin_of, psi, quantile, quantile_edges};
pub use wasserstein::{wasserstein_distance, wasserstein_sorted};

/// What can go wrong computing a statistic.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DriftError {
    /// A sample the statistic needs has no values.
    #[error("{0} sample is empty: the statistic needs at least one value")]
    Empty(&'static str),
    /// A value is NaN or infinite where a finite number is needed.
    #[error("{0} sample contains a NaN or infinite value; drop missing values before comparing")]
    NotFinite(&'static str),
    /// Two inputs that must line up do not.
    #[error("{0}")]
    Mismatch(String),
}

/// `Result` with [`DriftError`].
pub type Result<T> = std::result::Result<T, DriftError>;
