//! The decision engine of tokenrouter.
//!
//! Plain Rust with no proxy-wasm dependency: the wasm filter calls it on the request path and the
//! control plane calls it to validate configuration before pushing it, so both hosts run the
//! same code.
//!
//! # Layout
//! - [`snapshot`]: the validated, indexed form of the pushed `config.v1.Snapshot`.
//! - [`auth`]: gateway key extraction and lookup.
//! - [`request`]: bounded parsing of client request bodies and their rewrite for the upstream.
//! - [`firewall`]: block / mask / warn rules over prompts, responses (streamed too) and metadata.
//! - [`routing`]: `model` → provider, cluster, upstream model and price.
//! - [`upstream`]: what the per-attempt upstream filter changes (authority, path, credential).
//! - [`translate`]: client API ↔ provider wire format, per attempt, SSE included.
//! - [`usage`]: token usage from client-format responses, JSON and SSE (incremental).
//! - [`annotate`]: the `tokenrouter` object (applied rules, warnings) added to response bodies.
//! - [`idempotency`]: `Idempotency-Key` validation and request fingerprints.
//! - [`models`]: the `GET /v1/models` reply (catalogue in OpenAI's list shape).
//! - [`money`]: exact cost arithmetic and formatting.
//! - [`catalogue`]: the built-in model catalogue.
//! - [`error`]: the one gateway error type and its JSON envelope.

pub mod admission;
pub mod annotate;
pub mod auth;
pub mod catalogue;
pub mod error;
pub mod firewall;
pub mod idempotency;
pub mod json;
pub mod keys;
pub mod models;
pub mod money;
pub mod request;
pub mod routing;
pub mod snapshot;
pub mod translate;
pub mod upstream;
pub mod usage;

pub use error::{ErrorKind, GatewayError};

/// The maps the request path looks names, key hashes and request ids up in: hashed by foldhash
/// (seeded per process) instead of SipHash, a few times fewer instructions per lookup. Their
/// entries come from the control plane or the edge itself (the request ids it generates), never
/// from a client, so a client cannot fill one with colliding keys; a client only chooses what is
/// looked up.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub use snapshot::Snapshot;
