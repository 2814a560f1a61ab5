//! allocator-svc: the Infinity extension pool and its leases.
//!
//! Direction of travel: [`grpc`] (protobuf <-> domain, auth scopes) -> [`service`] (rules,
//! policies) -> [`store`] (one trait; one store for PostgreSQL, MySQL and SQLite).
//!
//! - [`app`]: `Application::build` then `run_until_stopped`.
//! - [`settings`]: typed, layered configuration.
//! - [`domain`]: validated types and the error (no tonic, no sqlx).
//! - [`policy`]: tenant policies from the gateway (cached) or static settings.
//! - [`reaper`]: frees expired leases.
//! - [`metrics`]: Prometheus metric names.
pub mod app;
pub mod domain;
pub mod grpc;
pub mod metrics;
pub mod policy;
pub mod reaper;
pub mod service;
pub mod settings;
pub mod store;
