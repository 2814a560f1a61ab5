//! Protobuf contracts shared by `allocator-svc` and `call-gateway-svc`.
//!
//! - [`allocator::v1`]: `ExtensionAllocator` (lease and free extensions) and `ExtensionPool`
//!   (pool administration).
//! - [`gateway::v1`]: `TenantPolicies` (served by the gateway, read by the allocator).
//! - [`FILE_DESCRIPTOR_SET`]: every file above, for gRPC reflection.
//!
//! Every message also implements serde's `Serialize`/`Deserialize` in the proto3 JSON mapping
//! (pbjson), with proto field names; well-known types come from `pbjson_types`.

pub use pbjson_types;

/// The encoded `FileDescriptorSet` of every contract, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cco_descriptor.bin"));

/// Contracts of `allocator-svc`.
pub mod allocator {
    /// Version 1 of `cco.infinity.allocator`.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("cco.infinity.allocator.v1");
        include!(concat!(
            env!("OUT_DIR"),
            "/cco.infinity.allocator.v1.serde.rs"
        ));
    }
}

/// Contracts of `call-gateway-svc`.
pub mod gateway {
    /// Version 1 of `cco.infinity.gateway`.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("cco.infinity.gateway.v1");
        include!(concat!(
            env!("OUT_DIR"),
            "/cco.infinity.gateway.v1.serde.rs"
        ));
    }
}

/// Conversions between protobuf timestamps and `chrono`, used by every service and client.
pub mod time {
    use chrono::{DateTime, Utc};
    use pbjson_types::Timestamp;

    /// A protobuf timestamp for `t`.
    pub fn to_timestamp(t: DateTime<Utc>) -> Timestamp {
        Timestamp {
            seconds: t.timestamp(),
            nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
        }
    }

    /// The time a protobuf timestamp names; `None` when it is out of range or malformed.
    pub fn from_timestamp(t: &Timestamp) -> Option<DateTime<Utc>> {
        u32::try_from(t.nanos)
            .ok()
            .and_then(|n| DateTime::from_timestamp(t.seconds, n))
    }
}
