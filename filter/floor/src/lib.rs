//! The floors that `cargo xtask bench --only overhead` measures beside bare Envoy (same binary,
//! same runtime, V8), so every run says what a wasm filter costs on that Envoy before any of
//! tokenrouter's own work. The plugin configuration picks one:
//!
//! - `none`: every callback is the SDK's default (continue, no host call);
//! - `routing`: the least a filter that routes on the request body must do, with the host calls
//!   tokenrouter's edge makes for it: hold the request until its body is in, read the header
//!   map and the body, set one routing header, put the body back and clear the route cache;
//!   hold the response until its body is in, read the header map and the body, and set one
//!   response header. No parsing, no decision, no usage record.
//!
//! Host results are checked rather than unwrapped (the SDK's trait helpers unwrap).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { routing: false }) });
}}

struct Root {
    routing: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        match config.as_slice() {
            b"" | b"none" => self.routing = false,
            b"routing" => self.routing = true,
            _ => return false,
        }
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.routing {
            Some(Box::new(Routing))
        } else {
            Some(Box::new(Noop))
        }
    }
}

struct Noop;

impl Context for Noop {}

impl HttpContext for Noop {}

struct Routing;

impl Context for Routing {}

impl HttpContext for Routing {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let _ = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
        hold_until_end(end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let _ =
            hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-floor-route", Some("fake"));
        let _ = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body_size, &body);
        let _ = hostcalls::call_foreign_function("clear_route_cache", None);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let _ = hostcalls::get_map_bytes(MapType::HttpResponseHeaders);
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, "x-floor", Some("1"));
        hold_until_end(end_of_stream)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let _ = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size);
        Action::Continue
    }
}

/// Holds the stream (headers, or the body buffered so far) until its end has arrived.
fn hold_until_end(end_of_stream: bool) -> Action {
    if end_of_stream {
        Action::Continue
    } else {
        Action::Pause
    }
}
