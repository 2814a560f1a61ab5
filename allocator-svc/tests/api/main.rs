//! The integration tests of allocator-svc: one binary, one module per area, one scenario per test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod binary;
mod common;
mod conformance;
mod lease_channel;
mod mysql_migrations;
mod mysql_store;
mod pg_store;
mod policy;
mod sqlite_store;
mod sqlite_upgrade;
