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
///
/// A protobuf `Timestamp` must lie in 0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999999999Z
/// (clients refuse others: proto3 JSON rendering fails on them), while `chrono` reaches far
/// beyond; these functions never produce or accept a timestamp outside that range.
pub mod time {
    use chrono::{DateTime, Utc};
    use pbjson_types::Timestamp;

    /// Seconds of 0001-01-01T00:00:00Z, the earliest valid timestamp.
    pub const MIN_SECONDS: i64 = -62_135_596_800;
    /// Seconds of 9999-12-31T23:59:59Z, the last second of the valid range.
    pub const MAX_SECONDS: i64 = 253_402_300_799;

    /// A protobuf timestamp for `t`, or `None` when `t` is outside the protobuf range.
    pub fn to_valid_timestamp(t: DateTime<Utc>) -> Option<Timestamp> {
        (MIN_SECONDS..=MAX_SECONDS)
            .contains(&t.timestamp())
            .then(|| Timestamp {
                seconds: t.timestamp(),
                nanos: i32::try_from(t.timestamp_subsec_nanos().min(999_999_999)).unwrap_or(0),
            })
    }

    /// A protobuf timestamp for `t`, clamped into the protobuf range (for times that always
    /// have a value, such as `created_at`; ours come from the clock and are in range).
    pub fn to_timestamp(t: DateTime<Utc>) -> Timestamp {
        to_valid_timestamp(t).unwrap_or(Timestamp {
            seconds: t.timestamp().clamp(MIN_SECONDS, MAX_SECONDS),
            nanos: 0,
        })
    }

    /// The time a protobuf timestamp names; `None` when it is outside the protobuf range or
    /// malformed (nanos outside 0..1e9).
    pub fn from_timestamp(t: &Timestamp) -> Option<DateTime<Utc>> {
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) {
            return None;
        }
        u32::try_from(t.nanos)
            .ok()
            .filter(|n| *n < 1_000_000_000)
            .and_then(|n| DateTime::from_timestamp(t.seconds, n))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn range_is_enforced_both_ways() {
            let year0 =
                DateTime::parse_from_rfc3339("0000-12-31T00:00:00Z").map(|t| t.with_timezone(&Utc));
            // chrono may or may not parse year 0; build the instant from seconds instead.
            let year0 = year0
                .ok()
                .or_else(|| DateTime::from_timestamp(MIN_SECONDS - 86_400, 0));
            let year0 = year0.expect("an instant before year 1");
            assert!(to_valid_timestamp(year0).is_none());
            assert_eq!(to_timestamp(year0).seconds, MIN_SECONDS);
            let far = DateTime::from_timestamp(MAX_SECONDS + 1, 0).expect("year 10000");
            assert!(to_valid_timestamp(far).is_none());
            assert_eq!(to_timestamp(far).seconds, MAX_SECONDS);
            let now = Utc::now();
            assert_eq!(from_timestamp(&to_timestamp(now)), Some(now));
            for bad in [
                Timestamp {
                    seconds: MAX_SECONDS + 1,
                    nanos: 0,
                },
                Timestamp {
                    seconds: MIN_SECONDS - 1,
                    nanos: 0,
                },
                Timestamp {
                    seconds: 0,
                    nanos: -1,
                },
                Timestamp {
                    seconds: 0,
                    nanos: 1_000_000_000,
                },
                Timestamp {
                    seconds: i64::MIN,
                    nanos: 0,
                },
            ] {
                assert!(from_timestamp(&bad).is_none(), "{bad:?}");
            }
        }
    }
}
