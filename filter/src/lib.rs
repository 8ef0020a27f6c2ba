//! tokenrouter's proxy-wasm filter: thin glue between Envoy and [`tokenrouter_engine`].
//!
//! One module, three roles chosen by the plugin configuration's `role`:
//! - `sync` (bootstrap singleton on the main thread): holds the gRPC stream to the control plane,
//!   writes snapshots and live provider scores into shared data, ships usage records from
//!   the shared queue.
//! - `edge` (downstream HTTP filter): auth, body parse, routing, response metadata, usage; for
//!   a request with one attempt also what the upstream filter does (a direct request).
//! - `upstream` (cluster HTTP filter, once per attempt): credential, authority, path and
//!   translation.
//!
//! # Layout
//! - [`alloc`]: the VM's allocator (size-class free lists over dlmalloc).
//! - [`host`]: checked wrappers over proxy-wasm host calls (the SDK's trait defaults panic).
//! - [`vm`]: per-VM cache of the decoded snapshot and scores, and the usage queue handle.
//! - [`root`]: the root context; parses the role and creates HTTP contexts.
//! - [`edge`], [`upstream`], [`sync`]: one module per role; [`held`]: a provider's answer held
//!   until it is whole and judged (upstream filter and direct requests); [`usage_wire`]: the
//!   usage records' framing, which the sync singleton forwards without decoding them.

pub mod alloc;
pub mod attempts;
pub mod edge;
pub mod held;
pub mod host;
pub mod root;
pub mod sync;
pub mod upstream;
pub mod usage_wire;
pub mod vm;

/// Shared data key holding the encoded snapshot.
pub const SNAPSHOT_KEY: &str = "tokenrouter.snapshot";
/// Shared data key holding the key delta (`config.v1.KeyDelta`) to apply to that snapshot; after
/// a full snapshot, an empty delta of that snapshot's version.
pub const KEY_DELTA_KEY: &str = "tokenrouter.snapshot.key_delta";
/// Shared data key holding the configuration version (u64 little-endian), written after the
/// snapshot and the key delta: the delta's version when it has one.
pub const SNAPSHOT_VERSION_KEY: &str = "tokenrouter.snapshot.version";
/// Shared data key holding the encoded live scores (`config.v1.Scores`).
pub const SCORES_KEY: &str = "tokenrouter.scores";
/// Shared data key holding the scores version (u64 little-endian), written after the scores.
pub const SCORES_VERSION_KEY: &str = "tokenrouter.scores.version";
/// Shared queue carrying encoded `UsageRecord`s from workers to the sync singleton.
pub const USAGE_QUEUE: &str = "tokenrouter.usage";
/// vm_id every tokenrouter wasm instance uses (shared data and queues are scoped by it).
pub const VM_ID: &str = "tokenrouter";

// SAFETY: a wasm32-wasip1 VM has one thread, and Envoy calls into it from one at a time.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: alloc::Pools = unsafe { alloc::Pools::new(std::alloc::System) };

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::default())
    });
}}
