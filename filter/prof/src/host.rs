//! Envoy's side of the proxy-wasm ABI (0.2.1), for the filter linked natively: the functions
//! the SDK imports from the host, defined here with the same names and signatures. Each keeps
//! to what Envoy does for the calls the filter makes (header maps, bodies, shared data, the
//! usage queue, stats, properties, local replies); gRPC and HTTP callouts are refused, as
//! Envoy refuses a callout to an unknown cluster, and the filter treats that as the control
//! plane being away.
//!
//! Memory handed to the filter comes from its own allocator (`proxy_on_memory_allocate`), as
//! Envoy's does, so the SDK frees it as it would in the VM.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status, StreamType};

/// What the host holds for the filter: one request's maps and bodies at a time, and the VM's
/// shared data, queue and stats.
#[derive(Default)]
pub struct Host {
    pub plugin_configuration: Vec<u8>,
    pub request_headers: Vec<(String, Vec<u8>)>,
    pub request_body: Vec<u8>,
    pub response_headers: Vec<(String, Vec<u8>)>,
    pub response_body: Vec<u8>,
    /// Stream properties the filter set (`set_property`), by path.
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    /// Property paths the filter asked for and the host did not have.
    pub unknown_properties: BTreeMap<String, u64>,
    pub shared_data: HashMap<String, (Vec<u8>, u32)>,
    /// Messages the filter put on the usage queue.
    pub usage_messages: u64,
    pub usage_bytes: u64,
    pub metrics: Vec<(String, u64)>,
    pub now_ns: u64,
    pub tick_period_ms: u32,
    /// Local replies the filter sent (status, body).
    pub local_replies: Vec<(u32, Vec<u8>)>,
    /// Host calls by function name.
    pub calls: BTreeMap<&'static str, u64>,
    /// Log lines at warn or above.
    pub warnings: Vec<String>,
}

/// The queue id of the usage queue (`tokenrouter.usage`), the only one the edge resolves.
const USAGE_QUEUE_ID: u32 = 1;

thread_local! {
    pub static HOST: RefCell<Host> = RefCell::new(Host::default());
}

fn with<T>(name: &'static str, f: impl FnOnce(&mut Host) -> T) -> T {
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        *h.calls.entry(name).or_default() += 1;
        f(&mut h)
    })
}

/// # Safety
/// `data` points to `size` readable bytes (or `size` is 0).
unsafe fn bytes<'a>(data: *const u8, size: usize) -> &'a [u8] {
    if data.is_null() || size == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(data, size)
    }
}

/// Hands `value` to the filter in memory of its own allocator.
///
/// # Safety
/// `data` and `size` are writable.
unsafe fn give(value: &[u8], data: *mut *mut u8, size: *mut usize) {
    if value.is_empty() {
        *data = std::ptr::null_mut();
        *size = 0;
        return;
    }
    let to = crate::vm::proxy_on_memory_allocate(value.len());
    std::ptr::copy_nonoverlapping(value.as_ptr(), to, value.len());
    *data = to;
    *size = value.len();
}

/// The proxy-wasm map wire format: count, (name length, value length) pairs, then each name
/// and value followed by a NUL.
fn serialize_map(map: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        4 + map
            .iter()
            .map(|(n, v)| n.len() + v.len() + 10)
            .sum::<usize>(),
    );
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (name, value) in map {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in map {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

fn deserialize_map(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = word(0)?;
    let mut p = 4 + n * 8;
    let mut map = Vec::with_capacity(n);
    for i in 0..n {
        let name_len = word(4 + i * 8)?;
        let value_len = word(8 + i * 8)?;
        let name = bytes.get(p..p + name_len)?;
        p += name_len + 1;
        let value = bytes.get(p..p + value_len)?;
        p += value_len + 1;
        map.push((String::from_utf8(name.to_vec()).ok()?, value.to_vec()));
    }
    Some(map)
}

fn map(h: &mut Host, map_type: MapType) -> Option<&mut Vec<(String, Vec<u8>)>> {
    match map_type {
        MapType::HttpRequestHeaders => Some(&mut h.request_headers),
        MapType::HttpResponseHeaders => Some(&mut h.response_headers),
        _ => None,
    }
}

fn buffer(h: &mut Host, buffer_type: BufferType) -> Option<&mut Vec<u8>> {
    match buffer_type {
        BufferType::HttpRequestBody => Some(&mut h.request_body),
        BufferType::HttpResponseBody => Some(&mut h.response_body),
        BufferType::PluginConfiguration => Some(&mut h.plugin_configuration),
        _ => None,
    }
}

/// A header name as Envoy keeps it (lower case); names the filter passes are tokens.
fn name_of(bytes: &[u8]) -> String {
    let mut name = String::from_utf8(bytes.to_vec()).unwrap_or_default();
    name.make_ascii_lowercase();
    name
}

#[no_mangle]
pub unsafe extern "C" fn proxy_log(level: LogLevel, data: *const u8, size: usize) -> Status {
    with("proxy_log", |h| {
        if level as u32 >= LogLevel::Warn as u32 {
            h.warnings
                .push(String::from_utf8_lossy(bytes(data, size)).into_owned());
        }
        Status::Ok
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_log_level(level: *mut LogLevel) -> Status {
    *level = LogLevel::Info;
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_current_time_nanoseconds(time: *mut u64) -> Status {
    with("proxy_get_current_time_nanoseconds", |h| {
        *time = h.now_ns;
        Status::Ok
    })
}

#[no_mangle]
pub extern "C" fn proxy_set_tick_period_milliseconds(period: u32) -> Status {
    with("proxy_set_tick_period_milliseconds", |h| {
        h.tick_period_ms = period;
        Status::Ok
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_buffer_bytes(
    buffer_type: BufferType,
    start: usize,
    max_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
) -> Status {
    with("proxy_get_buffer_bytes", |h| {
        let Some(buffer) = buffer(h, buffer_type) else {
            return Status::NotFound;
        };
        let start = start.min(buffer.len());
        let end = start.saturating_add(max_size).min(buffer.len());
        give(&buffer[start..end], data, size);
        Status::Ok
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_buffer_bytes(
    buffer_type: BufferType,
    start: usize,
    size: usize,
    data: *const u8,
    data_size: usize,
) -> Status {
    with("proxy_set_buffer_bytes", |h| {
        let Some(buffer) = buffer(h, buffer_type) else {
            return Status::NotFound;
        };
        // Envoy: the range [start, start + size) of the buffer is replaced.
        let start = start.min(buffer.len());
        let end = start.saturating_add(size).min(buffer.len());
        buffer.splice(start..end, bytes(data, data_size).iter().copied());
        Status::Ok
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_header_map_pairs(
    map_type: MapType,
    data: *mut *mut u8,
    size: *mut usize,
) -> Status {
    with("proxy_get_header_map_pairs", |h| {
        let Some(map) = map(h, map_type) else {
            return Status::NotFound;
        };
        give(&serialize_map(map), data, size);
        Status::Ok
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_header_map_pairs(
    map_type: MapType,
    data: *const u8,
    size: usize,
) -> Status {
    with("proxy_set_header_map_pairs", |h| {
        let (Some(map), Some(pairs)) = (map(h, map_type), deserialize_map(bytes(data, size)))
        else {
            return Status::BadArgument;
        };
        *map = pairs;
        Status::Ok
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_header_map_value(
    map_type: MapType,
    key: *const u8,
    key_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
) -> Status {
    with("proxy_get_header_map_value", |h| {
        let name = bytes(key, key_size);
        let Some(map) = map(h, map_type) else {
            return Status::NotFound;
        };
        match map
            .iter()
            .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
        {
            Some((_, value)) => {
                give(value, data, size);
                Status::Ok
            }
            None => Status::NotFound,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_remove_header_map_value(
    map_type: MapType,
    key: *const u8,
    key_size: usize,
) -> Status {
    with("proxy_remove_header_map_value", |h| {
        let name = bytes(key, key_size);
        if let Some(map) = map(h, map_type) {
            map.retain(|(n, _)| !n.as_bytes().eq_ignore_ascii_case(name));
        }
        Status::Ok
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_replace_header_map_value(
    map_type: MapType,
    key: *const u8,
    key_size: usize,
    value: *const u8,
    value_size: usize,
) -> Status {
    with("proxy_replace_header_map_value", |h| {
        let name = name_of(bytes(key, key_size));
        let value = bytes(value, value_size).to_vec();
        let Some(map) = map(h, map_type) else {
            return Status::NotFound;
        };
        // Envoy's setCopy: the first entry takes the value, the others go.
        match map.iter().position(|(n, _)| *n == name) {
            Some(at) => {
                map[at].1 = value;
                let mut i = 0;
                map.retain(|(n, _)| {
                    i += 1;
                    i - 1 == at || *n != name
                });
            }
            None => map.push((name, value)),
        }
        Status::Ok
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_add_header_map_value(
    map_type: MapType,
    key: *const u8,
    key_size: usize,
    value: *const u8,
    value_size: usize,
) -> Status {
    with("proxy_add_header_map_value", |h| {
        let name = name_of(bytes(key, key_size));
        let value = bytes(value, value_size).to_vec();
        match map(h, map_type) {
            Some(map) => {
                map.push((name, value));
                Status::Ok
            }
            None => Status::NotFound,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_property(
    path: *const u8,
    path_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
) -> Status {
    with("proxy_get_property", |h| {
        let path = bytes(path, path_size);
        match h.properties.get(path) {
            Some(value) => {
                give(value, data, size);
                Status::Ok
            }
            None => {
                let shown = String::from_utf8_lossy(path).replace('\0', ".");
                *h.unknown_properties.entry(shown).or_default() += 1;
                Status::NotFound
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_property(
    path: *const u8,
    path_size: usize,
    value: *const u8,
    value_size: usize,
) -> Status {
    with("proxy_set_property", |h| {
        h.properties.insert(
            bytes(path, path_size).to_vec(),
            bytes(value, value_size).to_vec(),
        );
        Status::Ok
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_shared_data(
    key: *const u8,
    key_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
    cas: *mut u32,
) -> Status {
    with("proxy_get_shared_data", |h| {
        let key = String::from_utf8_lossy(bytes(key, key_size));
        match h.shared_data.get(key.as_ref()) {
            Some((value, version)) => {
                give(value, data, size);
                *cas = *version;
                Status::Ok
            }
            None => Status::NotFound,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_shared_data(
    key: *const u8,
    key_size: usize,
    value: *const u8,
    value_size: usize,
    _cas: u32,
) -> Status {
    with("proxy_set_shared_data", |h| {
        let key = String::from_utf8_lossy(bytes(key, key_size)).into_owned();
        let value = bytes(value, value_size).to_vec();
        let entry = h.shared_data.entry(key).or_insert((Vec::new(), 0));
        *entry = (value, entry.1 + 1);
        Status::Ok
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_register_shared_queue(
    _name: *const u8,
    _name_size: usize,
    id: *mut u32,
) -> Status {
    with("proxy_register_shared_queue", |_| {
        *id = USAGE_QUEUE_ID;
        Status::Ok
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_resolve_shared_queue(
    _vm_id: *const u8,
    _vm_id_size: usize,
    name: *const u8,
    name_size: usize,
    id: *mut u32,
) -> Status {
    with("proxy_resolve_shared_queue", |_| {
        if bytes(name, name_size) == tokenrouter_filter::USAGE_QUEUE.as_bytes() {
            *id = USAGE_QUEUE_ID;
            Status::Ok
        } else {
            Status::NotFound
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_dequeue_shared_queue(
    _id: u32,
    _data: *mut *mut u8,
    _size: *mut usize,
) -> Status {
    with("proxy_dequeue_shared_queue", |_| Status::Empty)
}

#[no_mangle]
pub unsafe extern "C" fn proxy_enqueue_shared_queue(
    id: u32,
    _data: *const u8,
    size: usize,
) -> Status {
    with("proxy_enqueue_shared_queue", |h| {
        if id != USAGE_QUEUE_ID {
            return Status::NotFound;
        }
        // The sync singleton takes it off on the main thread: not this worker's work.
        h.usage_messages += 1;
        h.usage_bytes += size as u64;
        Status::Ok
    })
}

#[no_mangle]
pub extern "C" fn proxy_continue_stream(_stream: StreamType) -> Status {
    with("proxy_continue_stream", |_| Status::Ok)
}

#[no_mangle]
pub extern "C" fn proxy_close_stream(_stream: StreamType) -> Status {
    with("proxy_close_stream", |_| Status::Ok)
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn proxy_send_local_response(
    status: u32,
    _details: *const u8,
    _details_size: usize,
    body: *const u8,
    body_size: usize,
    _headers: *const u8,
    _headers_size: usize,
    _grpc_status: i32,
) -> Status {
    with("proxy_send_local_response", |h| {
        h.local_replies
            .push((status, bytes(body, body_size).to_vec()));
        Status::Ok
    })
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
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
    with("proxy_http_call", |_| Status::BadArgument)
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn proxy_grpc_call(
    _upstream: *const u8,
    _upstream_size: usize,
    _service: *const u8,
    _service_size: usize,
    _method: *const u8,
    _method_size: usize,
    _metadata: *const u8,
    _metadata_size: usize,
    _message: *const u8,
    _message_size: usize,
    _timeout: u32,
    _token: *mut u32,
) -> Status {
    with("proxy_grpc_call", |_| Status::BadArgument)
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn proxy_grpc_stream(
    _upstream: *const u8,
    _upstream_size: usize,
    _service: *const u8,
    _service_size: usize,
    _method: *const u8,
    _method_size: usize,
    _metadata: *const u8,
    _metadata_size: usize,
    _token: *mut u32,
) -> Status {
    with("proxy_grpc_stream", |_| Status::BadArgument)
}

#[no_mangle]
pub extern "C" fn proxy_grpc_send(
    _token: u32,
    _message: *const u8,
    _message_size: usize,
    _end_stream: bool,
) -> Status {
    with("proxy_grpc_send", |_| Status::NotFound)
}

#[no_mangle]
pub extern "C" fn proxy_grpc_cancel(_token: u32) -> Status {
    with("proxy_grpc_cancel", |_| Status::NotFound)
}

#[no_mangle]
pub extern "C" fn proxy_grpc_close(_token: u32) -> Status {
    with("proxy_grpc_close", |_| Status::NotFound)
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_status(
    code: *mut u32,
    data: *mut *mut u8,
    size: *mut usize,
) -> Status {
    with("proxy_get_status", |_| {
        *code = 0;
        give(&[], data, size);
        Status::Ok
    })
}

#[no_mangle]
pub extern "C" fn proxy_set_effective_context(_context: u32) -> Status {
    with("proxy_set_effective_context", |_| Status::Ok)
}

/// No foreign function: the edge calls none on a request's way.
#[no_mangle]
pub extern "C" fn proxy_call_foreign_function(
    _name: *const u8,
    _name_size: usize,
    _arguments: *const u8,
    _arguments_size: usize,
    _data: *mut *mut u8,
    _size: *mut usize,
) -> Status {
    with("proxy_call_foreign_function", |_| Status::NotFound)
}

#[no_mangle]
pub extern "C" fn proxy_done() -> Status {
    with("proxy_done", |_| Status::Ok)
}

#[no_mangle]
pub unsafe extern "C" fn proxy_define_metric(
    _metric_type: MetricType,
    name: *const u8,
    name_size: usize,
    id: *mut u32,
) -> Status {
    with("proxy_define_metric", |h| {
        let name = String::from_utf8_lossy(bytes(name, name_size)).into_owned();
        let at = match h.metrics.iter().position(|(n, _)| *n == name) {
            Some(at) => at,
            None => {
                h.metrics.push((name, 0));
                h.metrics.len() - 1
            }
        };
        *id = at as u32;
        Status::Ok
    })
}

/// `f` on the value of metric `id`, if it was defined.
fn metric(name: &'static str, id: u32, f: impl FnOnce(&mut u64)) -> Status {
    with(name, |h| match h.metrics.get_mut(id as usize) {
        Some((_, value)) => {
            f(value);
            Status::Ok
        }
        None => Status::NotFound,
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_metric(id: u32, value: *mut u64) -> Status {
    metric("proxy_get_metric", id, |v| *value = *v)
}

#[no_mangle]
pub extern "C" fn proxy_record_metric(id: u32, value: u64) -> Status {
    metric("proxy_record_metric", id, |v| *v = value)
}

#[no_mangle]
pub extern "C" fn proxy_increment_metric(id: u32, offset: i64) -> Status {
    metric("proxy_increment_metric", id, |v| {
        *v = v.wrapping_add_signed(offset)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_through_the_wire_format() {
        let map = vec![
            (":path".to_string(), b"/v1/chat/completions".to_vec()),
            ("x-empty".to_string(), Vec::new()),
        ];
        assert_eq!(deserialize_map(&serialize_map(&map)).unwrap(), map);
        assert_eq!(deserialize_map(&[1, 0, 0, 0]), None);
    }

    #[test]
    fn replacing_a_header_keeps_one_entry() {
        HOST.with(|h| {
            h.borrow_mut().request_headers = vec![
                ("a".into(), b"1".to_vec()),
                ("b".into(), b"2".to_vec()),
                ("a".into(), b"3".to_vec()),
            ];
        });
        let (name, value) = ("A", "9");
        let status = unsafe {
            proxy_replace_header_map_value(
                MapType::HttpRequestHeaders,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
        assert_eq!(status as u32, Status::Ok as u32);
        let headers = HOST.with(|h| h.borrow().request_headers.clone());
        assert_eq!(
            headers,
            vec![("a".into(), b"9".to_vec()), ("b".into(), b"2".to_vec())]
        );
    }
}
