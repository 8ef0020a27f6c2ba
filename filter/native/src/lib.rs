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
//! - [`control`]: the control thread, where the sync singleton runs and its stream is dialled.
//! - [`sdk`]: the SDK's entry points, called directly.

mod control;
mod envoy;
mod host;
mod sdk;
mod shared;
mod thread;

/// The module's own allocator. Through Envoy's exported `malloc` (tcmalloc) the filter's many
/// small per-request allocations cost ≈ 30 000 instructions a request; mimalloc's thread-local
/// heaps serve them for less, and free safely across threads (queue items and call answers are
/// freed on the sync thread). Envoy never frees the module's memory, nor the module Envoy's.
/// Built with local-dynamic TLS (`local_dynamic_tls`): Envoy loads the module with `dlopen`,
/// where initial-exec TLS would need glibc's small static TLS surplus.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
