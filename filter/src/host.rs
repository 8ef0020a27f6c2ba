//! Checked wrappers over the proxy-wasm host calls the filter uses. The SDK's trait default
//! methods `unwrap()` host results, and a panic kills the VM of that worker, so the filter calls
//! these instead and treats a failing host call as "absent".

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

/// Header values are bytes: Envoy passes obs-text (bytes 0x80-0xFF) through, and the SDK's
/// `String` readers `unwrap()` their UTF-8 conversion, so one such value from a client or a
/// provider would panic the VM and stop every later request of that worker. Read as bytes,
/// invalid UTF-8 becomes U+FFFD.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

pub fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
        .map(text)
}

/// A copy of a header map, read with one host call. Each single-header read is a host call
/// that also calls back into the VM to allocate its answer (about a microsecond under V8), so
/// a callback that needs several headers reads them all at once.
#[derive(Clone, Debug, Default)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// The first value of `name` (lower-case, as Envoy keeps names), as Envoy's own
    /// single-header read answers it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `get` as an owned value.
    pub fn value(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// How many times `name` occurs.
    pub fn count(&self, name: &str) -> usize {
        self.0.iter().filter(|(n, _)| n == name).count()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }

    /// Removes `name` from this copy (after removing it from Envoy's map).
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }
}

fn headers(map: MapType) -> Headers {
    // Names are tokens (Envoy's codecs refuse others); values as in `request_header`.
    Headers(
        hostcalls::get_map_bytes(map)
            .map(|pairs| pairs.into_iter().map(|(n, v)| (n, text(v))).collect())
            .unwrap_or_default(),
    )
}

/// The request headers (an empty copy when the host call fails).
pub fn request_headers() -> Headers {
    headers(MapType::HttpRequestHeaders)
}

/// The response headers (an empty copy when the host call fails).
pub fn response_headers() -> Headers {
    headers(MapType::HttpResponseHeaders)
}

pub fn set_request_header(name: &str, value: Option<&str>) {
    if let Err(e) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value) {
        log::warn!("setting request header {name} failed: {e:?}");
    }
}

pub fn response_header(name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
        .map(text)
}

pub fn set_response_header(name: &str, value: Option<&str>) {
    if let Err(e) = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value) {
        log::warn!("setting response header {name} failed: {e:?}");
    }
}

pub fn request_body(size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
        .ok()
        .flatten()
}

pub fn set_request_body(old_size: usize, body: &[u8]) -> bool {
    hostcalls::set_buffer(BufferType::HttpRequestBody, 0, old_size, body).is_ok()
}

pub fn response_body(size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)
        .ok()
        .flatten()
}

pub fn set_response_body(old_size: usize, body: &[u8]) -> bool {
    hostcalls::set_buffer(BufferType::HttpResponseBody, 0, old_size, body).is_ok()
}

pub fn plugin_configuration() -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
}

/// Sends a local JSON reply; the edge's own response callbacks still run for it.
pub fn send_json(status: u16, body: &[u8], extra_headers: &[(&str, &str)]) {
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    headers.extend_from_slice(extra_headers);
    if let Err(e) = hostcalls::send_http_response(u32::from(status), headers, Some(body)) {
        log::error!("sending a local reply failed: {e:?}");
    }
}

/// Envoy re-picks the route (and so the cluster from `x-tr-cluster`). Envoy exposes this as a
/// foreign function; header mutations from wasm also clear it, this makes it explicit.
pub fn clear_route_cache() {
    if let Err(e) = hostcalls::call_foreign_function("clear_route_cache", None) {
        log::warn!("clearing the route cache failed: {e:?}");
    }
}

/// Milliseconds since the Unix epoch, by the host's clock.
pub fn now_ms() -> i64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// A stream property of the host (e.g. `["response", "code_details"]`) as text.
pub fn property(path: &[&str]) -> Option<String> {
    hostcalls::get_property(path.to_vec())
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
}

/// Sets a stream property; Envoy keeps it as filter state `wasm.<name>`, which access logs and
/// local-reply formats read as `%FILTER_STATE(wasm.<name>:PLAIN)%`.
pub fn set_property(name: &str, value: &str) {
    let _ = hostcalls::set_property(vec![name], Some(value.as_bytes()));
}

pub fn shared_data(key: &str) -> Option<Vec<u8>> {
    hostcalls::get_shared_data(key).ok().and_then(|(v, _)| v)
}

pub fn set_shared_data(key: &str, value: &[u8]) -> bool {
    hostcalls::set_shared_data(key, Some(value), None).is_ok()
}

/// A counter metric, defined once per VM.
pub fn define_counter(name: &str) -> Option<u32> {
    hostcalls::define_metric(proxy_wasm::types::MetricType::Counter, name).ok()
}

pub fn increment(metric: Option<u32>, by: i64) {
    if let Some(id) = metric {
        let _ = hostcalls::increment_metric(id, by);
    }
}
