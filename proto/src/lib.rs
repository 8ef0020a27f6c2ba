//! Protobuf messages (and, with the `grpc` feature, tonic services) of tokenrouter.
//!
//! # Layout
//! - [`config::v1`]: the snapshot pushed to every Envoy (keys, providers, catalogue).
//! - [`sync::v1`]: the edge ↔ control plane stream (snapshots down, usage up, acks).
//! - [`admin::v1`]: the operator API.
//! - [`trace_runs`]: how a usage batch sends a run of equal rule traces once.

pub mod config {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tokenrouter.config.v1.rs"));
    }
}

pub mod sync {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tokenrouter.sync.v1.rs"));
    }
}

pub mod admin {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tokenrouter.admin.v1.rs"));
    }
}

pub mod trace_runs;

/// Encoded `FileDescriptorSet` of every tokenrouter proto, for gRPC server reflection.
#[cfg(feature = "grpc")]
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tokenrouter_descriptor.bin"));
