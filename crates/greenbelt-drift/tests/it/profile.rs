//! Profile tests.
