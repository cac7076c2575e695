//! greenbelt-drift integration tests: one binary (see CONVENTIONS.md).
//!
//! - `golden`: every statistic against scipy/numpy answers stored in
//!   `tests/golden.json` (written by `scripts/drift-golden.py`);
//! - `props`: property tests of the statistics and the window sketches;
//! - `profile`: the profile grid, its PSI exactness, the measured KS
//!   approximation and the categorical bound.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod golden;
mod profile;
mod props;
mod support;
