//! Plumbing shared by `allocator-svc` and `call-gateway-svc`, written once:
//!
//! - [`config`]: layered settings (defaults, optional TOML file, environment).
//! - [`telemetry`]: the tracing subscriber, quiet in tests unless `TEST_LOG` is set.
//! - [`auth`]: API keys with roles and tenant scopes, enforced by a tower layer on every RPC.
//! - [`jwt`]: people's JWTs (HS256 secret, RS256/ES256 from a JWKS file reloaded on change).
//! - [`grpc`]: [`grpc::GrpcServer`], one server build for every gRPC port (health flipped per
//!   service, reflection v1 and v1alpha of the port's own services, request hygiene, auth), the
//!   per-RPC trace span and the shutdown signal.
//! - [`listen`]: listener settings and the connection cap and idle timeout of every port.
//! - [`http`]: serving an axum router with header, body and idle deadlines.
//! - [`db`]: connecting to `postgres://`, `mysql://` or `sqlite://` URLs and running migrations.
//! - [`sql`]: running one statement text on every backend (placeholders, values, rows, the
//!   pieces of SQL that differ, transactions, retries on contention).
//! - [`metrics`]: the Prometheus `/metrics` routes and metric label helpers.
//! - [`mask`]: masking phone numbers and secrets for logs.
//! - [`service`]: the shared command line of the service binaries (serve, migrate, check-config).
//! - `testing` (feature `testing`): a fresh PostgreSQL, MariaDB or SQLite database per test, and
//!   `on_every_backend!`, which instantiates a suite of scenarios once per backend.
//! - [`validate`]: field rules shared by both services.
//! - [`tls`]: TLS and mutual TLS settings for servers and clients.

pub mod auth;
pub mod coalesce;
pub mod config;
pub mod db;
pub mod grpc;
pub mod http;
pub mod jwt;
pub mod listen;
pub mod mask;
pub mod metrics;
pub mod service;
pub mod sql;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod validate;
