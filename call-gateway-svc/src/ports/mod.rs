//! What the gateway needs from outside, in its own terms: the extension pool ([`Leases`],
//! served by allocator-svc over gRPC, see [`crate::allocator`]) and the call centre ([`Pbx`],
//! served by Infinity, see [`crate::infinity`]). The services depend on these traits only;
//! the adapters are the only code that knows the other side's protocol.

pub mod leases;
pub mod pbx;

pub use leases::{Acquired, LeaseError, Leases};
pub use pbx::{Dial, Pbx, PbxError, PbxExtension, RecordingLink};
