//! call-gateway-svc: tenant configs, collectors, and (next) calls to Infinity.
pub mod crypto;
pub mod domain;
pub mod infinity;
pub mod store;
