//! Registry behaviour on SQLite and, when GREENBELT_TEST_POSTGRES_URL is set
//! (e.g. postgres://postgres@127.0.0.1:5432/test), on PostgreSQL: each test
//! runs once per backend against a fresh database.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod backends;
mod http;
mod notify;
mod registry;
mod rollouts;
mod s3;
