//! The integration tests of call-gateway-svc: one binary, one module per area, one scenario per test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth_matrix;
mod calls;
mod common;
mod compliance;
mod configs;
mod events;
mod fuzz;
mod grpc_web;
mod hostile;
mod infinity_client;
mod integration;
mod log_secrets;
mod metrics;
mod mixed_run;
mod nats;
mod people;
mod sqlite_upgrade;
mod tls;
mod work_per_call;
