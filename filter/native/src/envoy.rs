//! Envoy's side: the dynamic-module ABI (v0.2 of Envoy 1.40) this module is loaded through,
//! its hooks, and the few callbacks the host calls need.
//!
//! Each hook enters the filter through the proxy-wasm SDK's entry point for the same event, on
//! Envoy's worker thread, with the stream's pointer recorded as the current one
//! ([`thread::in_stream`]) so that the filter's host calls act on that stream.

use std::ffi::{c_char, c_void};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use proxy_wasm::types::Action;
use serde::Deserialize;

use crate::thread::{self, Config, Deferred};
use crate::{control, sdk, stats};

pub type EnvoyPtr = *mut c_void;
type ModulePtr = *const c_void;

/// A buffer one side lends the other.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buffer {
    ptr: *const c_char,
    length: usize,
}

impl Buffer {
    pub const EMPTY: Buffer = Buffer {
        ptr: ptr::null(),
        length: 0,
    };

    pub fn of(bytes: &[u8]) -> Buffer {
        Buffer {
            ptr: bytes.as_ptr().cast(),
            length: bytes.len(),
        }
    }

    /// # Safety
    /// `ptr` must point to `length` readable bytes for the returned slice's lifetime.
    pub unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.length) }
    }
}

/// A header: name and value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Header {
    pub name: Buffer,
    pub value: Buffer,
}

pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;
pub const RECEIVED_REQUEST_BODY: u32 = 0;
pub const BUFFERED_REQUEST_BODY: u32 = 1;
pub const RECEIVED_RESPONSE_BODY: u32 = 2;
pub const BUFFERED_RESPONSE_BODY: u32 = 3;
/// `envoy_dynamic_module_type_attribute_id_ResponseCodeDetails`.
pub const ATTRIBUTE_RESPONSE_CODE_DETAILS: u32 = 16;

const CONTINUE: u32 = 0;
/// Headers: `StopIteration`; bodies: `StopIterationAndBuffer`; trailers: `StopIteration`.
const STOP: u32 = 1;

extern "C" {
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: EnvoyPtr, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: EnvoyPtr,
        kind: u32,
        out: *mut Header,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: EnvoyPtr,
        kind: u32,
        name: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: EnvoyPtr,
        kind: u32,
        name: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: EnvoyPtr,
        kind: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: EnvoyPtr,
        kind: u32,
        out: *mut Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_size(filter: EnvoyPtr, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_drain_body(
        filter: EnvoyPtr,
        kind: u32,
        bytes: usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_append_body(
        filter: EnvoyPtr,
        kind: u32,
        data: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: EnvoyPtr,
        status: u32,
        headers: *const Header,
        headers_size: usize,
        body: Buffer,
        details: Buffer,
    );
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: EnvoyPtr);
    fn envoy_dynamic_module_callback_http_filter_continue_encoding(filter: EnvoyPtr);
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: EnvoyPtr,
        attribute: u32,
        out: *mut Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_log(level: u32, message: Buffer);
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: EnvoyPtr,
        name: Buffer,
        label_names: *const Buffer,
        label_names_size: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: EnvoyPtr,
        id: usize,
        label_values: *const Buffer,
        label_values_size: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: EnvoyPtr);
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: EnvoyPtr) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: EnvoyPtr,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
}

/// A stream's scheduler: events committed to it (from any thread) run the stream's
/// `on_http_filter_scheduled` on its worker, unless the stream is gone by then. Deleted when
/// the stream and every call waiting to answer it have let go of it.
pub struct Scheduler(*mut c_void);

// SAFETY: Envoy's scheduler may be committed to from any thread (the ABI's promise); it is
// deleted once, by its last owner.
unsafe impl Send for Scheduler {}
// SAFETY: as above; `commit` takes `&self`.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    /// The running stream's scheduler; on its worker thread, inside one of its hooks.
    pub fn new(filter: EnvoyPtr) -> Option<Scheduler> {
        if filter.is_null() {
            return None;
        }
        // SAFETY: `filter` is the running stream's, on its worker thread.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(filter) };
        (!ptr.is_null()).then_some(Scheduler(ptr))
    }

    pub fn commit(&self, event_id: u64) {
        // SAFETY: the scheduler is alive while `self` is.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event_id) }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: made by `scheduler_new`, deleted once, here.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
    }
}

/// A filter configuration's scheduler: events committed to it (from any thread) run the
/// configuration's `on_http_filter_config_scheduled` on Envoy's main thread, unless the
/// configuration is gone by then (the scheduler holds it weakly).
pub struct ConfigScheduler(*mut c_void);

// SAFETY: as for `Scheduler`: committed to from any thread, deleted once by its owner.
unsafe impl Send for ConfigScheduler {}
// SAFETY: as above; `commit` takes `&self`.
unsafe impl Sync for ConfigScheduler {}

impl ConfigScheduler {
    /// The scheduler of the configuration Envoy is creating (`config`).
    pub fn new(config: EnvoyPtr) -> Option<ConfigScheduler> {
        if config.is_null() {
            return None;
        }
        // SAFETY: `config` is the configuration Envoy is creating, in its `config_new` hook.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(config) };
        (!ptr.is_null()).then_some(ConfigScheduler(ptr))
    }

    pub fn commit(&self, event_id: u64) {
        // SAFETY: the scheduler is alive while `self` is.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event_id)
        }
    }
}

impl Drop for ConfigScheduler {
    fn drop(&mut self) {
        // SAFETY: made by `config_scheduler_new`, deleted once, here.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: u32 = 0;

/// Defines a counter (with `label_count` label names at `labels`, or none) in the
/// configuration Envoy is creating; its id, or `None` when Envoy refuses.
pub fn define_counter(
    config: EnvoyPtr,
    name: &[u8],
    labels: *const Buffer,
    label_count: usize,
) -> Option<usize> {
    if config.is_null() {
        return None;
    }
    let mut id = 0usize;
    // SAFETY: `config` is the configuration Envoy is creating (the caller's promise); the name
    // and `label_count` label names are read during the call.
    let result = unsafe {
        envoy_dynamic_module_callback_http_filter_config_define_counter(
            config,
            Buffer::of(name),
            labels,
            label_count,
            &mut id,
        )
    };
    (result == METRICS_SUCCESS).then_some(id)
}

/// Adds `value` to counter `id` of the configuration `config` (on Envoy's main thread, in
/// one of its hooks), with the counter vec's label values (none for a plain counter).
pub fn increment_counter(config: EnvoyPtr, id: usize, label_values: &[Buffer], value: u64) {
    if config.is_null() {
        return;
    }
    let values = if label_values.is_empty() {
        ptr::null()
    } else {
        label_values.as_ptr()
    };
    // SAFETY: `config` is alive for the running hook; the values are read during the call. A
    // refused increment (an unknown id) changes nothing.
    unsafe {
        envoy_dynamic_module_callback_http_filter_config_increment_counter(
            config,
            id,
            values,
            label_values.len(),
            value,
        );
    }
}

/// Makes Envoy pick the route again (after the request's headers changed): Envoy's wasm host
/// does it on every write to the request's headers; this host once per callback that wrote.
pub fn clear_route_cache(filter: EnvoyPtr) {
    if !filter.is_null() {
        // SAFETY: `filter` is the stream whose callback just returned.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(filter) }
    }
}

/// The header map `kind` of the current stream, as (name, value) pairs lent by Envoy for the
/// running hook.
pub fn headers<'a>(filter: EnvoyPtr, kind: u32) -> Vec<(&'a [u8], &'a [u8])> {
    if filter.is_null() {
        return Vec::new();
    }
    // SAFETY: `filter` is the pointer of the stream whose hook runs.
    let n = unsafe { envoy_dynamic_module_callback_http_get_headers_size(filter, kind) };
    if n == 0 {
        return Vec::new();
    }
    let mut out = vec![
        Header {
            name: Buffer::EMPTY,
            value: Buffer::EMPTY,
        };
        n
    ];
    // SAFETY: `out` has room for the `n` headers Envoy just counted.
    if !unsafe { envoy_dynamic_module_callback_http_get_headers(filter, kind, out.as_mut_ptr()) } {
        return Vec::new();
    }
    out.into_iter()
        // SAFETY: Envoy lends each name and value for the running hook.
        .map(|h| unsafe { (h.name.bytes(), h.value.bytes()) })
        .collect()
}

/// Sets (replaces) a header; an empty value removes it (Envoy's set with no value).
pub fn set_header(filter: EnvoyPtr, kind: u32, name: &[u8], value: Option<&[u8]>) -> bool {
    if filter.is_null() {
        return false;
    }
    if kind == REQUEST_HEADERS {
        thread::with(|h| h.request_headers_changed = true);
    }
    let value = value.map_or(Buffer::EMPTY, Buffer::of);
    // SAFETY: `filter` is the running stream's; the buffers are ours and outlive the call.
    unsafe { envoy_dynamic_module_callback_http_set_header(filter, kind, Buffer::of(name), value) }
}

pub fn add_header(filter: EnvoyPtr, kind: u32, name: &[u8], value: &[u8]) -> bool {
    if filter.is_null() {
        return false;
    }
    if kind == REQUEST_HEADERS {
        thread::with(|h| h.request_headers_changed = true);
    }
    // SAFETY: as `set_header`.
    unsafe {
        envoy_dynamic_module_callback_http_add_header(
            filter,
            kind,
            Buffer::of(name),
            Buffer::of(value),
        )
    }
}

fn append_chunks(filter: EnvoyPtr, kind: u32, out: &mut Vec<u8>) {
    // SAFETY: `filter` is the running stream's.
    let n = unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(filter, kind) };
    if n == 0 {
        return;
    }
    let mut chunks = vec![Buffer::EMPTY; n];
    // SAFETY: `chunks` has room for the `n` chunks Envoy just counted.
    if !unsafe {
        envoy_dynamic_module_callback_http_get_body_chunks(filter, kind, chunks.as_mut_ptr())
    } {
        return;
    }
    for chunk in chunks {
        // SAFETY: Envoy lends each chunk for the running hook.
        out.extend_from_slice(unsafe { chunk.bytes() });
    }
}

/// The body as proxy-wasm shows it: what Envoy buffered, then the chunk of the running hook.
pub fn body(filter: EnvoyPtr, kinds: [u32; 2]) -> Vec<u8> {
    let mut out = Vec::new();
    if filter.is_null() {
        return out;
    }
    out.reserve_exact(body_size(filter, kinds));
    let [buffered, received] = kinds;
    append_chunks(filter, buffered, &mut out);
    append_chunks(filter, received, &mut out);
    out
}

/// The sizes of the buffered part and of the running chunk.
pub fn body_sizes(filter: EnvoyPtr, [buffered, received]: [u32; 2]) -> [usize; 2] {
    if filter.is_null() {
        return [0, 0];
    }
    // SAFETY: `filter` is the running stream's.
    unsafe {
        [
            envoy_dynamic_module_callback_http_get_body_size(filter, buffered),
            envoy_dynamic_module_callback_http_get_body_size(filter, received),
        ]
    }
}

pub fn body_size(filter: EnvoyPtr, kinds: [u32; 2]) -> usize {
    body_sizes(filter, kinds).iter().sum()
}

/// Replaces the whole body (buffered part and running chunk, of `sizes` as [`body_sizes`]
/// read them) with `body`.
pub fn replace_body(
    filter: EnvoyPtr,
    [buffered, received]: [u32; 2],
    sizes: [usize; 2],
    body: &[u8],
) -> bool {
    if filter.is_null() {
        return false;
    }
    // SAFETY: `filter` is the running stream's; `body` is ours and outlives the calls.
    unsafe {
        if sizes[0] > 0 {
            envoy_dynamic_module_callback_http_drain_body(filter, buffered, sizes[0]);
        }
        if sizes[1] > 0 {
            envoy_dynamic_module_callback_http_drain_body(filter, received, sizes[1]);
        }
        // Into the running chunk, which Envoy adds to what it buffered when the hook holds
        // the body; outside a body hook, into the buffered body.
        envoy_dynamic_module_callback_http_append_body(filter, received, Buffer::of(body))
            || envoy_dynamic_module_callback_http_append_body(filter, buffered, Buffer::of(body))
    }
}

/// A string attribute of the stream (`response.code_details`).
pub fn attribute_string(filter: EnvoyPtr, attribute: u32) -> Option<Vec<u8>> {
    if filter.is_null() {
        return None;
    }
    let mut out = Buffer::EMPTY;
    // SAFETY: `filter` is the running stream's; `out` is ours.
    let found = unsafe {
        envoy_dynamic_module_callback_http_filter_get_attribute_string(filter, attribute, &mut out)
    };
    // SAFETY: Envoy lends the value for the running hook; it is copied at once.
    found.then(|| unsafe { out.bytes() }.to_vec())
}

/// Writes a line to Envoy's log (its `dynamic_modules` logger).
pub fn log(level: u32, message: &[u8]) {
    // SAFETY: the buffer is ours and outlives the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level, Buffer::of(message)) }
}

/// Makes a call the filter deferred, once its callback has returned.
pub fn run_deferred(filter: EnvoyPtr, deferred: Deferred) {
    if filter.is_null() {
        return;
    }
    match deferred {
        Deferred::LocalReply {
            status,
            headers,
            body,
            details,
        } => {
            let headers: Vec<Header> = headers
                .iter()
                .map(|(n, v)| Header {
                    name: Buffer::of(n),
                    value: Buffer::of(v),
                })
                .collect();
            // SAFETY: `filter` is the stream whose callback just returned; every buffer is
            // ours and outlives the call (Envoy copies them).
            unsafe {
                envoy_dynamic_module_callback_http_send_response(
                    filter,
                    status,
                    headers.as_ptr(),
                    headers.len(),
                    Buffer::of(&body),
                    Buffer::of(&details),
                );
            }
        }
        // SAFETY: as above.
        Deferred::ContinueRequest => unsafe {
            envoy_dynamic_module_callback_http_filter_continue_decoding(filter)
        },
        // SAFETY: as above.
        Deferred::ContinueResponse => unsafe {
            envoy_dynamic_module_callback_http_filter_continue_encoding(filter)
        },
    }
}

/// The module's configuration in Envoy's filter (`filter_config`, JSON).
#[derive(Deserialize)]
struct ModuleConfig {
    /// The proxy-wasm plugin configuration, as the wasm filter gets it (`role` and the rest).
    plugin: serde_json::Value,
    /// The sync singleton's plugin configuration: the first filter configuration that has one
    /// starts this process's control thread.
    #[serde(default)]
    sync: Option<serde_json::Value>,
    /// Endpoints of the clusters the filter's gRPC calls and streams name (`http://host:port`,
    /// one or several replicas), since
    /// the control thread dials them itself.
    #[serde(default)]
    clusters: std::collections::HashMap<String, control::Endpoints>,
}

/// The ABI version this module was written for (Envoy 1.40's).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    static LOGGER: Once = Once::new();
    LOGGER.call_once(|| proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info));
    c"v0.2.0".as_ptr()
}

/// Parses the filter configuration; `null` (Envoy refuses it) when it is not valid.
///
/// # Safety
/// Envoy lends `config` for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy: EnvoyPtr,
    _name: Buffer,
    config: Buffer,
) -> ModulePtr {
    static KEYS: AtomicUsize = AtomicUsize::new(1);
    // SAFETY: Envoy lends the configuration for this call.
    let raw = unsafe { config.bytes() };
    let parsed: ModuleConfig = match serde_json::from_slice(raw) {
        Ok(c) => c,
        Err(e) => {
            log(
                4,
                format!("tokenrouter: invalid module configuration: {e}").as_bytes(),
            );
            return ptr::null();
        }
    };
    if let Some(sync) = parsed.sync {
        control::start(sync.to_string().into_bytes(), parsed.clusters);
    }
    let key = KEYS.fetch_add(1, Ordering::Relaxed);
    // Only the edge counts; upstream filters' configurations would show the counters again,
    // at zero, under every provider cluster's stats.
    if parsed
        .plugin
        .get("role")
        .and_then(serde_json::Value::as_str)
        == Some("edge")
    {
        stats::define(envoy, key);
    }
    let config = Box::new(Config {
        key,
        plugin: Arc::from(parsed.plugin.to_string().into_bytes()),
    });
    Box::into_raw(config).cast_const().cast()
}

/// # Safety
/// `config` is a pointer `envoy_dynamic_module_on_http_filter_config_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ModulePtr) {
    if !config.is_null() {
        // SAFETY: made by `Box::into_raw` in `config_new`, destroyed once by Envoy. Streams
        // never outlive their configuration.
        let config = unsafe { Box::from_raw(config.cast_mut().cast::<Config>()) };
        stats::forget(config.key);
        // Each thread's root for it goes at that thread's next stream.
        thread::retire(config.key);
    }
}

/// A stream: its proxy-wasm context on this thread, and Envoy's pointer of it (which keys its
/// scheduler, if a call made one).
struct Stream {
    context: u32,
    filter: EnvoyPtr,
}

/// # Safety
/// `config` is a pointer `envoy_dynamic_module_on_http_filter_config_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ModulePtr,
    filter: EnvoyPtr,
) -> ModulePtr {
    // SAFETY: alive while Envoy makes streams with it.
    let Some(config) = (unsafe { config.cast::<Config>().as_ref() }) else {
        return ptr::null();
    };
    let root = thread::root(config);
    thread::tick_due();
    let context = thread::new_context(root);
    thread::with(|h| h.live.push(filter));
    Box::into_raw(Box::new(Stream { context, filter }))
        .cast_const()
        .cast()
}

/// # Safety
/// `module` is a pointer `envoy_dynamic_module_on_http_filter_new` returned, not destroyed.
unsafe fn context(module: ModulePtr) -> u32 {
    // SAFETY: the caller's promise.
    unsafe { module.cast::<Stream>().as_ref() }.map_or(0, |s| s.context)
}

fn status(action: Action) -> u32 {
    match action {
        Action::Continue => CONTINUE,
        _ => STOP,
    }
}

/// # Safety
/// Envoy's pointers of one live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: EnvoyPtr,
    module: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: the caller's promise.
    let id = unsafe { context(module) };
    // SAFETY: as above.
    let n = unsafe { envoy_dynamic_module_callback_http_get_headers_size(filter, REQUEST_HEADERS) };
    status(thread::in_stream(filter, || {
        sdk::request_headers(id, n, end_of_stream)
    }))
}

/// # Safety
/// Envoy's pointers of one live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter: EnvoyPtr,
    module: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: the caller's promise.
    let id = unsafe { context(module) };
    let size = body_size(filter, [BUFFERED_REQUEST_BODY, RECEIVED_REQUEST_BODY]);
    status(thread::in_stream(filter, || {
        sdk::request_body(id, size, end_of_stream)
    }))
}

/// # Safety
/// Envoy's pointers of one live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter: EnvoyPtr,
    module: ModulePtr,
) -> u32 {
    // SAFETY: the caller's promise.
    let id = unsafe { context(module) };
    status(thread::in_stream(filter, || sdk::request_trailers(id, 0)))
}

/// # Safety
/// Envoy's pointers of one live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter: EnvoyPtr,
    module: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: the caller's promise.
    let id = unsafe { context(module) };
    // SAFETY: as above.
    let n =
        unsafe { envoy_dynamic_module_callback_http_get_headers_size(filter, RESPONSE_HEADERS) };
    status(thread::in_stream(filter, || {
        sdk::response_headers(id, n, end_of_stream)
    }))
}

/// # Safety
/// Envoy's pointers of one live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    filter: EnvoyPtr,
    module: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: the caller's promise.
    let id = unsafe { context(module) };
    let size = body_size(filter, [BUFFERED_RESPONSE_BODY, RECEIVED_RESPONSE_BODY]);
    status(thread::in_stream(filter, || {
        sdk::response_body(id, size, end_of_stream)
    }))
}

/// # Safety
/// Envoy's pointers of one live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    filter: EnvoyPtr,
    module: ModulePtr,
) -> u32 {
    // SAFETY: the caller's promise.
    let id = unsafe { context(module) };
    status(thread::in_stream(filter, || sdk::response_trailers(id, 0)))
}

/// The stream's end: the filter's log callback (its usage record), as proxy-wasm's.
///
/// # Safety
/// Envoy's pointers of one live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter: EnvoyPtr,
    module: ModulePtr,
) {
    // SAFETY: the caller's promise.
    let id = unsafe { context(module) };
    thread::in_stream(filter, || sdk::log(id));
}

/// # Safety
/// `module` is a pointer `envoy_dynamic_module_on_http_filter_new` returned; Envoy destroys
/// each once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: ModulePtr) {
    if module.is_null() {
        return;
    }
    // SAFETY: made by `Box::into_raw` in `http_filter_new`.
    let stream = unsafe { Box::from_raw(module.cast_mut().cast::<Stream>()) };
    sdk::done(stream.context);
    sdk::delete(stream.context);
    let idle = thread::with(|h| {
        h.schedulers.remove(&(stream.filter as usize));
        if let Some(at) = h.live.iter().position(|f| *f == stream.filter) {
            h.live.swap_remove(at);
        }
        // A tick this stream carried is lost with it (Envoy drops a destroyed stream's
        // events): another live stream carries the next.
        if h.timer
            .as_ref()
            .is_some_and(|(carrier, _)| *carrier == stream.filter)
        {
            h.timer = None;
        }
        h.live.is_empty()
    });
    if idle {
        // Nothing left to carry a tick: the usage records this worker holds go to the control
        // thread, which sends them on its next tick with what other idle moments parked
        // (batched, so sequential requests form runs of equal traces), or to the queue now
        // when that thread does not run. Under load streams overlap, and records go in
        // batches on the ticks the live streams carry.
        if control::ticking() {
            tokenrouter_filter::vm::park_usage_backlog();
        } else {
            tokenrouter_filter::vm::flush_usage_backlog();
        }
    } else {
        thread::arm_tick();
    }
}

/// The answer of a gRPC call the stream made ([`control::call`]) is in: the filter gets it on
/// the stream's worker, as proxy-wasm delivers it.
///
/// # Safety
/// Envoy's pointers of one live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter: EnvoyPtr,
    module: ModulePtr,
    event_id: u64,
) {
    if event_id == thread::TICK_EVENT {
        thread::on_tick_event();
        return;
    }
    // SAFETY: the caller's promise.
    let id = unsafe { context(module) };
    let Ok(token) = u32::try_from(event_id) else {
        return;
    };
    let Some(answer) = control::take_answer(token) else {
        return;
    };
    thread::in_stream(filter, || match answer {
        Ok(message) => {
            let size = message.len();
            thread::with(|h| h.grpc_message = message);
            sdk::grpc_receive(id, token, size);
        }
        Err((code, message)) => {
            thread::with(|h| h.grpc_status = (code, message));
            sdk::grpc_close(id, token, code);
        }
    });
}

/// An event of a configuration's scheduler, on Envoy's main thread: the counters' flush.
///
/// # Safety
/// Envoy's pointers of a live configuration.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    envoy: EnvoyPtr,
    _config: ModulePtr,
    event_id: u64,
) {
    if event_id == stats::FLUSH_EVENT {
        stats::flush(envoy);
    }
}

/// Hooks Envoy requires to exist; this module starts no callout or stream of Envoy's and
/// keeps no per-route configuration, so they are never called with anything to do.
macro_rules! unused_hooks {
    ($($name:ident),* $(,)?) => {
        $(
            #[no_mangle]
            pub extern "C" fn $name() -> usize {
                0
            }
        )*
    };
}

unused_hooks!(
    envoy_dynamic_module_on_http_filter_per_route_config_new,
    envoy_dynamic_module_on_http_filter_per_route_config_destroy,
    envoy_dynamic_module_on_http_filter_http_callout_done,
    envoy_dynamic_module_on_http_filter_http_stream_headers,
    envoy_dynamic_module_on_http_filter_http_stream_data,
    envoy_dynamic_module_on_http_filter_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_http_stream_complete,
    envoy_dynamic_module_on_http_filter_http_stream_reset,
    envoy_dynamic_module_on_http_filter_config_http_callout_done,
    envoy_dynamic_module_on_http_filter_config_http_stream_headers,
    envoy_dynamic_module_on_http_filter_config_http_stream_data,
    envoy_dynamic_module_on_http_filter_config_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_config_http_stream_complete,
    envoy_dynamic_module_on_http_filter_config_http_stream_reset,
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark,
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark,
    envoy_dynamic_module_on_http_filter_local_reply,
);
