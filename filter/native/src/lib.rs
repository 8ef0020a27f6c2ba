//! tokenrouter's filter as an Envoy dynamic module (`envoy.filters.http.dynamic_modules`, ABI
//! v0.2 of Envoy 1.40): the proxy-wasm filter's code (`tokenrouter-filter`), unchanged, compiled
//! natively and hosted in Envoy's process by a proxy-wasm host written over the dynamic-module
//! ABI. The same edge, the same engine, the same records; no wasm VM between Envoy and them.
//!
//! # Layout
//! - [`envoy`]: the ABI's callbacks this host uses, and the hooks Envoy calls.
//! - [`host`]: the proxy-wasm host calls (`proxy_*`), defined for the SDK linked in here.
//! - [`thread`]: per-thread host state (a thread is what a VM is under wasm).
//! - [`shared`]: shared data, queues and metrics across threads.
//! - [`stats`]: the edge's counters in Envoy's own stats.
//! - [`control`]: the control thread, where the sync singleton runs and its stream is dialled.
//! - [`sdk`]: the SDK's entry points, called directly.
//! - [`alloc`]: the module's global allocator (mimalloc).

mod alloc;
mod control;
mod envoy;
mod host;
mod sdk;
mod shared;
mod stats;
mod thread;

/// The module's own allocator: mimalloc ([`alloc`]).
#[global_allocator]
static ALLOCATOR: alloc::MiMalloc = alloc::MiMalloc;
