//! Checked wrappers over the proxy-wasm host calls the filter uses. The SDK's trait default
//! methods `unwrap()` host results, and a panic kills the VM of that worker, so the filter calls
//! these instead and treats a failing host call as "absent".

use std::ops::Range;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};

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
///
/// The copy holds every name and value in one string, with their places in it: the SDK's
/// reader would make two allocations per header, and headers are read twice per request.
#[derive(Clone, Debug, Default)]
pub struct Headers {
    /// Names and values one after the other; one that is not UTF-8 with U+FFFD for its bad
    /// bytes (Envoy passes obs-text through in values, and the SDK's `String` readers would
    /// panic on it; names are tokens, which Envoy's codecs check).
    text: String,
    /// (name, value) places in `text`, in the host's order.
    pairs: Vec<(Range<usize>, Range<usize>)>,
}

impl Headers {
    /// Reads the proxy-wasm map format: a count, a (name length, value length) pair per
    /// header, then each name and each value followed by a NUL. `None` when it does not add up.
    fn parse(raw: &[u8]) -> Option<Headers> {
        if raw.is_empty() {
            return Some(Headers::default());
        }
        let word = |at: usize| -> Option<usize> {
            let b: [u8; 4] = raw.get(at..at.checked_add(4)?)?.try_into().ok()?;
            usize::try_from(u32::from_le_bytes(b)).ok()
        };
        let n = word(0)?;
        let base = n.checked_mul(8)?.checked_add(4)?;
        let mut at = base;
        let mut places = Vec::with_capacity(n.min(raw.len() / 10));
        for i in 0..n {
            let name = at..at.checked_add(word(4 + i * 8)?)?;
            let start = name.end.checked_add(1)?;
            let value = start..start.checked_add(word(8 + i * 8)?)?;
            at = value.end.checked_add(1)?;
            places.push((name, value));
        }
        let region = raw.get(base..at)?;
        // Almost always all of it is UTF-8 (NULs included): one check, one copy.
        if let Ok(text) = std::str::from_utf8(region) {
            let shift = |r: Range<usize>| r.start - base..r.end - base;
            return Some(Headers {
                text: text.to_string(),
                pairs: places
                    .into_iter()
                    .map(|(name, value)| (shift(name), shift(value)))
                    .collect(),
            });
        }
        let mut text = String::with_capacity(region.len());
        let mut pairs = Vec::with_capacity(places.len());
        let mut push = |bytes: &[u8]| -> Range<usize> {
            let start = text.len();
            text.push_str(&String::from_utf8_lossy(bytes));
            start..text.len()
        };
        for (name, value) in places {
            let name = push(raw.get(name)?);
            let value = push(raw.get(value)?);
            pairs.push((name, value));
        }
        Some(Headers { text, pairs })
    }

    fn part(&self, place: &Range<usize>) -> &str {
        self.text.get(place.clone()).unwrap_or_default()
    }

    /// Whether the name at `place` is `name`.
    fn is(&self, place: &Range<usize>, name: &str) -> bool {
        place.len() == name.len()
            && self.text.as_bytes().get(place.clone()) == Some(name.as_bytes())
    }

    /// The first value of `name` (lower-case, as Envoy keeps names), as Envoy's own
    /// single-header read answers it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| self.is(n, name))
            .map(|(_, v)| self.part(v))
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
        self.pairs.iter().filter(|(n, _)| self.is(n, name)).count()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(name, _)| self.part(name))
    }

    /// Removes `name` from this copy (after removing it from Envoy's map).
    pub fn remove(&mut self, name: &str) {
        let text = self.text.as_bytes();
        self.pairs
            .retain(|(n, _)| text.get(n.clone()) != Some(name.as_bytes()));
    }
}

// The SDK's declaration is private to it; this is the same import.
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

fn headers(map: MapType) -> Headers {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes the address and size of memory it allocated through this VM's
    // `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes), which this VM then
    // owns; the SDK's own reader takes it the same way.
    let raw = unsafe {
        match proxy_get_header_map_pairs(map, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
            _ => Vec::new(),
        }
    };
    Headers::parse(&raw).unwrap_or_default()
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::Headers;

    /// The proxy-wasm map format, as Envoy writes it.
    fn serialized(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (name, value) in pairs {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        }
        for (name, value) in pairs {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.extend_from_slice(value);
            out.push(0);
        }
        out
    }

    #[test]
    fn a_header_map_reads_as_envoy_answers_single_reads() {
        let raw = serialized(&[
            (":status", b"200"),
            ("x-a", b"one"),
            ("x-obs", b"caf\xe9"),
            ("x-a", b"two"),
            ("x-empty", b""),
        ]);
        let mut h = Headers::parse(&raw).unwrap();
        assert_eq!(h.get(":status"), Some("200"));
        assert_eq!(h.get("x-a"), Some("one"));
        assert_eq!(h.count("x-a"), 2);
        assert_eq!(h.get("x-obs"), Some("caf\u{fffd}"));
        assert_eq!(h.get("x-empty"), Some(""));
        assert!(!h.contains("x-missing"));
        assert_eq!(
            h.names().collect::<Vec<_>>(),
            [":status", "x-a", "x-obs", "x-a", "x-empty"]
        );
        h.remove("x-a");
        assert_eq!(h.count("x-a"), 0);
        assert_eq!(h.value("x-empty"), Some(String::new()));
    }

    #[test]
    fn a_map_that_does_not_add_up_reads_as_none() {
        let raw = serialized(&[("x-a", b"one"), ("x-b", b"two")]);
        for cut in [1, 5, 12, raw.len() - 3] {
            assert!(Headers::parse(&raw[..cut]).is_none(), "cut at {cut}");
        }
        let mut huge = raw.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Headers::parse(&huge).is_none());
        assert_eq!(Headers::parse(&[]).unwrap().names().count(), 0);
        assert!(Headers::parse(&serialized(&[("x-\u{fffd}", b"v")])).is_some());
        // A name that is not UTF-8 (Envoy's codecs refuse them) matches nothing we ask for.
        let mut bad_name = serialized(&[("x-a", b"v"), ("x-b", b"w")]);
        bad_name[20] = 0xff;
        let h = Headers::parse(&bad_name).unwrap();
        assert_eq!(h.names().collect::<Vec<_>>(), ["\u{fffd}-a", "x-b"]);
        assert_eq!(h.get("x-b"), Some("w"));
    }
}
