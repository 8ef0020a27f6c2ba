//! Wire ↔ domain conversion only: gRPC services and the REST endpoints call the service layer.

pub mod demo;
pub mod grpc;
pub mod rest;
