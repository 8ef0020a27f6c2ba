//! The proxy-wasm host, natively: the `proxy_*` functions the SDK imports (a wasm host's
//! exports), defined here for the SDK compiled into this module. Each acts on the current
//! thread's state ([`thread`]): the running stream through Envoy's dynamic-module callbacks,
//! shared data and queues through [`shared`], gRPC streams through the control thread.
//!
//! The SDK turns any status it does not expect from a host call into a panic, which here would
//! abort Envoy, so every function answers only with the statuses the SDK's wrapper for it
//! accepts (a failure it has no status for is logged and answered `Ok` with nothing done).
//!
//! Every pointer comes from the SDK in this module, pointing into this process's memory, with
//! its length: the `# Safety` of each function is that of the proxy-wasm ABI's call.
#![allow(clippy::missing_safety_doc)]

use std::time::{SystemTime, UNIX_EPOCH};

use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status, StreamType};

use crate::envoy::{self, EnvoyPtr};
use crate::thread::{self, Deferred};
use crate::{control, shared};

/// # Safety
/// `ptr` points to `len` readable bytes (or `len` is 0).
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the caller's promise.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// Hands `value` to the SDK, which takes it back with `Vec::from_raw_parts(ptr, len, len)`:
/// a boxed slice has exactly that layout. Nothing (a null pointer) for an empty value.
///
/// # Safety
/// `data` and `size` are writable.
unsafe fn give(value: Vec<u8>, data: *mut *mut u8, size: *mut usize) {
    let (ptr, len) = if value.is_empty() {
        (std::ptr::null_mut(), 0)
    } else {
        let boxed = value.into_boxed_slice();
        let len = boxed.len();
        (Box::into_raw(boxed).cast::<u8>(), len)
    };
    // SAFETY: the caller's promise.
    unsafe {
        *data = ptr;
        *size = len;
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn current() -> EnvoyPtr {
    thread::with(|h| h.filter)
}

fn header_kind(map: MapType) -> Option<u32> {
    match map {
        MapType::HttpRequestHeaders => Some(envoy::REQUEST_HEADERS),
        MapType::HttpResponseHeaders => Some(envoy::RESPONSE_HEADERS),
        _ => None,
    }
}

fn body_kinds(buffer: BufferType) -> Option<[u32; 2]> {
    match buffer {
        BufferType::HttpRequestBody => {
            Some([envoy::BUFFERED_REQUEST_BODY, envoy::RECEIVED_REQUEST_BODY])
        }
        BufferType::HttpResponseBody => {
            Some([envoy::BUFFERED_RESPONSE_BODY, envoy::RECEIVED_RESPONSE_BODY])
        }
        _ => None,
    }
}

/// proxy-wasm's serialized header map: a count, a (name length, value length) pair per
/// header, then each name and each value followed by a NUL.
pub fn serialize_map<'a>(
    pairs: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])> + Clone,
) -> Vec<u8> {
    let n = pairs.len();
    let size = 4
        + n * 8
        + pairs
            .clone()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let word = |x: usize| u32::try_from(x).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&word(n));
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&word(k.len()));
        out.extend_from_slice(&word(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The pairs of a serialized map; `None` when it does not add up.
pub fn parse_map(raw: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if raw.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let b: [u8; 4] = raw.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    let n = word(0)?;
    let mut at = n.checked_mul(8)?.checked_add(4)?;
    let mut out = Vec::with_capacity(n.min(raw.len() / 10));
    for i in 0..n {
        let (kl, vl) = (word(4 + i * 8)?, word(8 + i * 8)?);
        let k = raw.get(at..at.checked_add(kl)?)?.to_vec();
        at = at.checked_add(kl)?.checked_add(1)?;
        let v = raw.get(at..at.checked_add(vl)?)?.to_vec();
        at = at.checked_add(vl)?.checked_add(1)?;
        out.push((k, v));
    }
    Some(out)
}

#[no_mangle]
pub unsafe extern "C" fn proxy_log(level: LogLevel, data: *const u8, size: usize) -> Status {
    // SAFETY: the ABI's.
    let message = unsafe { bytes(data, size) };
    let level = match level {
        LogLevel::Trace => 0,
        LogLevel::Debug => 1,
        LogLevel::Info => 2,
        LogLevel::Warn => 3,
        LogLevel::Error => 4,
        _ => 5,
    };
    let mut line = b"tokenrouter: ".to_vec();
    line.extend_from_slice(message);
    envoy::log(level, &line);
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_log_level(level: *mut LogLevel) -> Status {
    // SAFETY: the ABI's.
    unsafe { *level = LogLevel::Info };
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_current_time_nanoseconds(time: *mut u64) -> Status {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    // SAFETY: the ABI's.
    unsafe { *time = now };
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_set_tick_period_milliseconds(period: u32) -> Status {
    thread::with(|h| h.set_tick(period));
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_buffer_bytes(
    buffer: BufferType,
    start: usize,
    max_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
) -> Status {
    let whole = match buffer {
        BufferType::PluginConfiguration => thread::with(|h| {
            h.configuring
                .as_ref()
                .map(|(_, c)| c.to_vec())
                .unwrap_or_default()
        }),
        BufferType::GrpcReceiveBuffer => thread::with(|h| std::mem::take(&mut h.grpc_message)),
        other => match body_kinds(other) {
            Some(kinds) => envoy::body(current(), kinds),
            None => return Status::NotFound,
        },
    };
    let end = start.saturating_add(max_size).min(whole.len());
    let part = whole
        .get(start..end)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    // SAFETY: the ABI's.
    unsafe { give(part, data, size) };
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_buffer_bytes(
    buffer: BufferType,
    start: usize,
    size: usize,
    data: *const u8,
    len: usize,
) -> Status {
    // SAFETY: the ABI's.
    let value = unsafe { bytes(data, len) };
    let Some(kinds) = body_kinds(buffer) else {
        log::warn!("cannot set buffer {buffer:?}");
        return Status::Ok;
    };
    let filter = current();
    // The filter replaces whole bodies: then the old one need not be read.
    let sizes = envoy::body_sizes(filter, kinds);
    let whole = start == 0 && size >= sizes.iter().sum();
    let spliced;
    let new: &[u8] = if whole {
        value
    } else {
        // proxy-wasm's replace of [start, start + size); past the end, an append.
        let old = envoy::body(filter, kinds);
        let start = start.min(old.len());
        let end = start.saturating_add(size).min(old.len());
        let mut new = Vec::with_capacity(old.len() - (end - start) + value.len());
        new.extend_from_slice(old.get(..start).unwrap_or_default());
        new.extend_from_slice(value);
        new.extend_from_slice(old.get(end..).unwrap_or_default());
        spliced = new;
        &spliced
    };
    if !envoy::replace_body(filter, kinds, sizes, new) {
        log::warn!("setting the body failed");
    }
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_header_map_pairs(
    map: MapType,
    data: *mut *mut u8,
    size: *mut usize,
) -> Status {
    let serialized = match header_kind(map) {
        Some(kind) => {
            let pairs = envoy::headers(current(), kind);
            serialize_map(pairs.iter().copied())
        }
        None => Vec::new(),
    };
    // SAFETY: the ABI's.
    unsafe { give(serialized, data, size) };
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_header_map_pairs(
    map: MapType,
    data: *const u8,
    size: usize,
) -> Status {
    // SAFETY: the ABI's.
    let raw = unsafe { bytes(data, size) };
    let (Some(kind), Some(pairs)) = (header_kind(map), parse_map(raw)) else {
        return Status::Ok;
    };
    let filter = current();
    let old: Vec<Vec<u8>> = envoy::headers(filter, kind)
        .into_iter()
        .map(|(k, _)| k.to_vec())
        .collect();
    for name in old {
        envoy::set_header(filter, kind, &name, None);
    }
    for (k, v) in pairs {
        envoy::add_header(filter, kind, &k, &v);
    }
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_header_map_value(
    map: MapType,
    key: *const u8,
    key_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
) -> Status {
    // SAFETY: the ABI's.
    let key = unsafe { bytes(key, key_size) };
    let Some(kind) = header_kind(map) else {
        return Status::NotFound;
    };
    let found = envoy::headers(current(), kind)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.to_vec());
    match found {
        Some(v) => {
            // SAFETY: the ABI's.
            unsafe { give(v, data, size) };
            Status::Ok
        }
        None => Status::NotFound,
    }
}

#[no_mangle]
pub unsafe extern "C" fn proxy_replace_header_map_value(
    map: MapType,
    key: *const u8,
    key_size: usize,
    value: *const u8,
    value_size: usize,
) -> Status {
    // SAFETY: the ABI's.
    let (key, value) = unsafe { (bytes(key, key_size), bytes(value, value_size)) };
    if let Some(kind) = header_kind(map) {
        envoy::set_header(current(), kind, key, Some(value));
    }
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_remove_header_map_value(
    map: MapType,
    key: *const u8,
    key_size: usize,
) -> Status {
    // SAFETY: the ABI's.
    let key = unsafe { bytes(key, key_size) };
    if let Some(kind) = header_kind(map) {
        envoy::set_header(current(), kind, key, None);
    }
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_add_header_map_value(
    map: MapType,
    key: *const u8,
    key_size: usize,
    value: *const u8,
    value_size: usize,
) -> Status {
    // SAFETY: the ABI's.
    let (key, value) = unsafe { (bytes(key, key_size), bytes(value, value_size)) };
    if let Some(kind) = header_kind(map) {
        envoy::add_header(current(), kind, key, value);
    }
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_property(
    path: *const u8,
    path_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
) -> Status {
    // SAFETY: the ABI's.
    let path = unsafe { bytes(path, path_size) };
    let parts: Vec<&[u8]> = path.split(|b| *b == 0).filter(|p| !p.is_empty()).collect();
    let value = match parts.as_slice() {
        [b"response", b"code_details"] => {
            envoy::attribute_string(current(), envoy::ATTRIBUTE_RESPONSE_CODE_DETAILS)
        }
        _ => None,
    };
    match value {
        Some(v) => {
            // SAFETY: the ABI's.
            unsafe { give(v, data, size) };
            Status::Ok
        }
        None => Status::NotFound,
    }
}

#[no_mangle]
pub extern "C" fn proxy_set_property(
    _path: *const u8,
    _path_size: usize,
    _value: *const u8,
    _value_size: usize,
) -> Status {
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_shared_data(
    key: *const u8,
    key_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
    cas: *mut u32,
) -> Status {
    // SAFETY: the ABI's.
    let key = text(unsafe { bytes(key, key_size) });
    match shared::get_data(&key) {
        Some((value, number)) => {
            // SAFETY: the ABI's.
            unsafe {
                give(value, data, size);
                *cas = number;
            }
            Status::Ok
        }
        None => Status::NotFound,
    }
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_shared_data(
    key: *const u8,
    key_size: usize,
    value: *const u8,
    value_size: usize,
    cas: u32,
) -> Status {
    // SAFETY: the ABI's.
    let (key, value) = unsafe { (text(bytes(key, key_size)), bytes(value, value_size)) };
    if shared::set_data(&key, value, cas) {
        Status::Ok
    } else {
        Status::CasMismatch
    }
}

#[no_mangle]
pub unsafe extern "C" fn proxy_register_shared_queue(
    name: *const u8,
    name_size: usize,
    id: *mut u32,
) -> Status {
    // SAFETY: the ABI's.
    let name = text(unsafe { bytes(name, name_size) });
    let waker = control::queue_waker();
    let queue = shared::register_queue(tokenrouter_filter::VM_ID, &name, waker);
    // SAFETY: the ABI's.
    unsafe { *id = queue };
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_resolve_shared_queue(
    vm_id: *const u8,
    vm_id_size: usize,
    name: *const u8,
    name_size: usize,
    id: *mut u32,
) -> Status {
    // SAFETY: the ABI's.
    let (vm_id, name) = unsafe { (text(bytes(vm_id, vm_id_size)), text(bytes(name, name_size))) };
    match shared::resolve_queue(&vm_id, &name) {
        Some(queue) => {
            // SAFETY: the ABI's.
            unsafe { *id = queue };
            Status::Ok
        }
        None => Status::NotFound,
    }
}

#[no_mangle]
pub unsafe extern "C" fn proxy_dequeue_shared_queue(
    queue: u32,
    data: *mut *mut u8,
    size: *mut usize,
) -> Status {
    match shared::dequeue(queue) {
        Ok(Some(item)) => {
            // SAFETY: the ABI's.
            unsafe { give(item, data, size) };
            Status::Ok
        }
        Ok(None) => Status::Empty,
        Err(()) => Status::NotFound,
    }
}

#[no_mangle]
pub unsafe extern "C" fn proxy_enqueue_shared_queue(
    queue: u32,
    data: *const u8,
    size: usize,
) -> Status {
    // SAFETY: the ABI's.
    if shared::enqueue(queue, unsafe { bytes(data, size) }) {
        Status::Ok
    } else {
        Status::NotFound
    }
}

#[no_mangle]
pub extern "C" fn proxy_continue_stream(stream: StreamType) -> Status {
    let deferred = match stream {
        StreamType::HttpRequest => Deferred::ContinueRequest,
        StreamType::HttpResponse => Deferred::ContinueResponse,
        _ => return Status::Ok,
    };
    thread::with(|h| h.deferred.push(deferred));
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_close_stream(_stream: StreamType) -> Status {
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_send_local_response(
    status: u32,
    details: *const u8,
    details_size: usize,
    body: *const u8,
    body_size: usize,
    headers: *const u8,
    headers_size: usize,
    _grpc_status: i32,
) -> Status {
    // SAFETY: the ABI's.
    let (details, body, headers) = unsafe {
        (
            bytes(details, details_size).to_vec(),
            bytes(body, body_size).to_vec(),
            parse_map(bytes(headers, headers_size)).unwrap_or_default(),
        )
    };
    thread::with(|h| {
        h.deferred.push(Deferred::LocalReply {
            status,
            headers,
            body,
            details,
        })
    });
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_http_call(
    _upstream: *const u8,
    _upstream_size: usize,
    _headers: *const u8,
    _headers_size: usize,
    _body: *const u8,
    _body_size: usize,
    _trailers: *const u8,
    _trailers_size: usize,
    _timeout: u32,
    _token: *mut u32,
) -> Status {
    Status::InternalFailure
}

/// A unary gRPC call (a worker's `Idempotency-Key` or admission question): made by the control
/// thread, answered on the stream's worker through its scheduler
/// (`envoy_dynamic_module_on_http_filter_scheduled`).
#[no_mangle]
pub unsafe extern "C" fn proxy_grpc_call(
    upstream: *const u8,
    upstream_size: usize,
    service: *const u8,
    service_size: usize,
    method: *const u8,
    method_size: usize,
    metadata: *const u8,
    metadata_size: usize,
    message: *const u8,
    message_size: usize,
    timeout_ms: u32,
    token: *mut u32,
) -> Status {
    // SAFETY: the ABI's.
    let (cluster, service, method, metadata, message) = unsafe {
        (
            text(bytes(upstream, upstream_size)),
            text(bytes(service, service_size)),
            text(bytes(method, method_size)),
            parse_map(bytes(metadata, metadata_size)).unwrap_or_default(),
            bytes(message, message_size).to_vec(),
        )
    };
    let filter = current();
    let scheduler = thread::with(|h| {
        if let Some(s) = h.schedulers.get(&(filter as usize)) {
            return Some(std::sync::Arc::clone(s));
        }
        let s = std::sync::Arc::new(envoy::Scheduler::new(filter)?);
        h.schedulers
            .insert(filter as usize, std::sync::Arc::clone(&s));
        Some(s)
    });
    let Some(scheduler) = scheduler else {
        return Status::InternalFailure;
    };
    let call = control::Call {
        cluster,
        path: format!("/{service}/{method}"),
        metadata,
        message,
        timeout: std::time::Duration::from_millis(u64::from(timeout_ms.max(1))),
        scheduler,
    };
    match control::call(call) {
        Some(id) => {
            // SAFETY: the ABI's.
            unsafe { *token = id };
            Status::Ok
        }
        None => Status::InternalFailure,
    }
}

#[no_mangle]
pub unsafe extern "C" fn proxy_grpc_stream(
    upstream: *const u8,
    upstream_size: usize,
    service: *const u8,
    service_size: usize,
    method: *const u8,
    method_size: usize,
    metadata: *const u8,
    metadata_size: usize,
    token: *mut u32,
) -> Status {
    // SAFETY: the ABI's.
    let (cluster, service, method, metadata) = unsafe {
        (
            text(bytes(upstream, upstream_size)),
            text(bytes(service, service_size)),
            text(bytes(method, method_size)),
            parse_map(bytes(metadata, metadata_size)).unwrap_or_default(),
        )
    };
    match control::open_stream(&cluster, &service, &method, metadata) {
        Some(id) => {
            // SAFETY: the ABI's.
            unsafe { *token = id };
            Status::Ok
        }
        None => Status::InternalFailure,
    }
}

#[no_mangle]
pub unsafe extern "C" fn proxy_grpc_send(
    token: u32,
    message: *const u8,
    size: usize,
    end_stream: bool,
) -> Status {
    // SAFETY: the ABI's.
    let message = unsafe { bytes(message, size) };
    if control::send(token, message, end_stream) {
        Status::Ok
    } else {
        Status::NotFound
    }
}

#[no_mangle]
pub extern "C" fn proxy_grpc_cancel(token: u32) -> Status {
    if control::cancel(token) {
        Status::Ok
    } else {
        Status::NotFound
    }
}

#[no_mangle]
pub extern "C" fn proxy_grpc_close(token: u32) -> Status {
    proxy_grpc_cancel(token)
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_status(
    code: *mut u32,
    data: *mut *mut u8,
    size: *mut usize,
) -> Status {
    let (status, message) = thread::with(|h| h.grpc_status.clone());
    // SAFETY: the ABI's.
    unsafe {
        *code = status;
        give(message.into_bytes(), data, size);
    }
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_set_effective_context(_context: u32) -> Status {
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_call_foreign_function(
    _name: *const u8,
    _name_size: usize,
    _arguments: *const u8,
    _arguments_size: usize,
    _results: *mut *mut u8,
    _results_size: *mut usize,
) -> Status {
    Status::NotFound
}

#[no_mangle]
pub extern "C" fn proxy_done() -> Status {
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_define_metric(
    _kind: MetricType,
    name: *const u8,
    name_size: usize,
    id: *mut u32,
) -> Status {
    // SAFETY: the ABI's.
    let name = text(unsafe { bytes(name, name_size) });
    let metric = shared::define_metric(&name);
    // SAFETY: the ABI's.
    unsafe { *id = metric };
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_metric(id: u32, value: *mut u64) -> Status {
    match shared::metric_value(id) {
        Some(v) => {
            // SAFETY: the ABI's.
            unsafe { *value = u64::try_from(v).unwrap_or(0) };
            Status::Ok
        }
        None => Status::NotFound,
    }
}

#[no_mangle]
pub extern "C" fn proxy_record_metric(id: u32, value: u64) -> Status {
    if shared::record_metric(id, i64::try_from(value).unwrap_or(i64::MAX)) {
        Status::Ok
    } else {
        Status::NotFound
    }
}

#[no_mangle]
pub extern "C" fn proxy_increment_metric(id: u32, by: i64) -> Status {
    if shared::increment_metric(id, by) {
        Status::Ok
    } else {
        Status::NotFound
    }
}
