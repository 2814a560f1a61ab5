//! call-gateway-svc: tenant configs, collectors, calls, and the Infinity integration.
//!
//! Direction of travel: [`grpc`] (protobuf <-> domain, auth scopes) -> [`service`] (rules) ->
//! [`store`] (one trait; PostgreSQL and SQLite) and [`infinity`] (the vendor API client).
//!
//! - [`app`]: `Application::build` then `run_until_stopped`.
//! - [`settings`]: typed, layered configuration.
//! - [`domain`]: validated types (configs, phone numbers, collectors) and the error.
//! - [`crypto`]: AES-256-GCM sealing of secrets at rest with a rotating key ring.
//! - [`allocator`]: the gRPC client of allocator-svc.
//! - [`calls`]: the call flow (MakeCall, settling, the release outbox, the reconciler).
//! - [`callback`]: Infinity's call-record callback over HTTP.
pub mod allocator;
pub mod app;
pub mod background;
pub mod callback;
pub mod calls;
pub mod crypto;
pub mod domain;
pub mod grpc;
pub mod infinity;
pub mod service;
pub mod settings;
pub mod store;
