//! The gateway's HTTP port: Infinity's call-record callback ([`callback`]) beside the
//! platform's `/metrics` and `/healthz`. Served by the platform's HTTP server, with its header,
//! body and idle deadlines and connection cap.

pub mod callback;

pub use callback::sign;
