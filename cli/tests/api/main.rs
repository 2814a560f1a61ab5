//! The integration tests of cli: one binary, one module per area, one scenario per test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod console;
mod faults;
mod pg_restart;
mod stack;
mod tracing;
