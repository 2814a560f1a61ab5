//! Plumbing shared by `allocator-svc` and `call-gateway-svc`, written once:
//!
//! - [`config`]: layered settings (defaults, optional TOML file, environment).
//! - [`telemetry`]: the tracing subscriber, quiet in tests unless `TEST_LOG` is set.
//! - [`auth`]: API keys with roles and tenant scopes, enforced by a tower layer on every RPC.
//! - [`grpc`]: health, reflection, the per-RPC trace span and the shutdown signal.
//! - [`db`]: connecting to `postgres://` or `sqlite://` URLs and running migrations.
//! - [`metrics`]: the Prometheus registry and its `/metrics` HTTP endpoint.
//! - [`mask`]: masking phone numbers and secrets for logs.
//! - [`service`]: the shared command line of the service binaries (serve, migrate, check-config).
//! - [`testing`]: a fresh PostgreSQL or SQLite database per test.
//! - [`validate`]: field rules shared by both services.
//! - [`tls`]: TLS and mutual TLS settings for servers and clients.

pub mod auth;
pub mod config;
pub mod db;
pub mod grpc;
pub mod mask;
pub mod metrics;
pub mod service;
pub mod telemetry;
pub mod testing;
pub mod tls;
pub mod validate;
