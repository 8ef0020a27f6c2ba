//! The routing floor of `filter/floor` as an Envoy dynamic module (Envoy's
//! `envoy.filters.http.dynamic_modules` filter, ABI v0.2 of Envoy 1.40): a shared object Envoy
//! loads into its own process and calls directly, with no wasm VM between them. The benchmark
//! measures it beside the wasm floor to show what the proxy-wasm boundary itself costs a filter
//! that routes on the request body; it is not part of the gateway.
//!
//! It makes the same calls the wasm routing floor makes: hold the request until its body is in,
//! read the header map and the body, set one routing header, put the body back and clear the
//! route cache; hold the response until its body is in, read its header map and body, and set
//! one response header. No parsing, no decision.
//!
//! The hooks that take Envoy's filter pointer are `unsafe`: Envoy calls them with the pointer of
//! the stream it is running, which is what every callback here is handed back.
//!
//! Only the hooks Envoy calls on this path have their ABI signatures; the others Envoy requires
//! to exist (callouts, streams, schedulers, watermarks, local replies) are never called here and
//! do nothing.

use std::ffi::{c_char, c_void};
use std::ptr;

type EnvoyPtr = *mut c_void;
type ModulePtr = *const c_void;

/// A buffer one side lends the other: `ptr` and `length`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Buffer {
    ptr: *const c_char,
    length: usize,
}

impl Buffer {
    const EMPTY: Buffer = Buffer {
        ptr: ptr::null(),
        length: 0,
    };

    fn of(bytes: &[u8]) -> Buffer {
        Buffer {
            ptr: bytes.as_ptr().cast(),
            length: bytes.len(),
        }
    }

    /// # Safety
    /// `ptr` must point to `length` readable bytes for the returned slice's lifetime.
    unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: Envoy lends `length` bytes at `ptr` for the callback (the caller's promise).
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.length) }
    }
}

/// A header of one of Envoy's maps: name and value.
#[repr(C)]
#[derive(Clone, Copy)]
struct Header {
    name: Buffer,
    value: Buffer,
}

const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
const RECEIVED_REQUEST_BODY: u32 = 0;
const BUFFERED_REQUEST_BODY: u32 = 1;
const RECEIVED_RESPONSE_BODY: u32 = 2;
const BUFFERED_RESPONSE_BODY: u32 = 3;

/// Statuses: `Continue` is 0 for every hook; the request and response headers' `StopIteration`
/// and the bodies' `StopIterationAndBuffer` are 1.
const CONTINUE: u32 = 0;
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
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: EnvoyPtr);
}

/// Reads a header map whole (names and values are Envoy's, lent for the callback), as the wasm
/// floor reads it with one host call; returns how many bytes it saw.
fn read_headers(filter: EnvoyPtr, kind: u32) -> usize {
    // SAFETY: `filter` is the pointer Envoy passed to the running hook.
    let n = unsafe { envoy_dynamic_module_callback_http_get_headers_size(filter, kind) };
    let mut headers = vec![
        Header {
            name: Buffer::EMPTY,
            value: Buffer::EMPTY,
        };
        n
    ];
    // SAFETY: `headers` has room for the `n` headers Envoy just counted.
    if n == 0
        || !unsafe {
            envoy_dynamic_module_callback_http_get_headers(filter, kind, headers.as_mut_ptr())
        }
    {
        return 0;
    }
    headers
        .iter()
        // SAFETY: Envoy lends each name and value for the hook.
        .map(|h| unsafe { h.name.bytes().len() + h.value.bytes().len() })
        .sum()
}

/// Copies a body (its chunks, in order) into one vector, as the wasm floor's buffer read does.
fn read_body(filter: EnvoyPtr, kind: u32, out: &mut Vec<u8>) {
    // SAFETY: `filter` is the pointer Envoy passed to the running hook.
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
        // SAFETY: Envoy lends each chunk for the hook.
        out.extend_from_slice(unsafe { chunk.bytes() });
    }
}

/// The whole body of a request or response whose end has arrived: what was buffered, then the
/// last chunk; with the two parts' sizes.
fn whole_body(filter: EnvoyPtr, buffered: u32, received: u32) -> (Vec<u8>, [usize; 2]) {
    // SAFETY: `filter` is the pointer Envoy passed to the running hook.
    let sizes = unsafe {
        [
            envoy_dynamic_module_callback_http_get_body_size(filter, buffered),
            envoy_dynamic_module_callback_http_get_body_size(filter, received),
        ]
    };
    let mut body = Vec::with_capacity(sizes[0] + sizes[1]);
    read_body(filter, buffered, &mut body);
    read_body(filter, received, &mut body);
    (body, sizes)
}

/// Sets (replaces) one header of the map `kind`.
fn set_header(filter: EnvoyPtr, kind: u32, name: &[u8], value: &[u8]) {
    // SAFETY: `filter` is the pointer Envoy passed to the running hook; the buffers are ours
    // and outlive the call.
    unsafe {
        envoy_dynamic_module_callback_http_set_header(
            filter,
            kind,
            Buffer::of(name),
            Buffer::of(value),
        );
    }
}

fn hold_until_end(end_of_stream: bool) -> u32 {
    if end_of_stream {
        CONTINUE
    } else {
        STOP
    }
}

/// The ABI version this module was written for (Envoy 1.40's); Envoy loads another version too,
/// with a warning.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    c"v0.2.0".as_ptr()
}

/// One configuration for every filter; its pointer only needs to be non-null.
static CONFIG: u8 = 0;
/// Filters keep no state either.
static FILTER: u8 = 0;

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config: EnvoyPtr,
    _name: *const c_char,
    _name_length: usize,
    _configuration: *const c_char,
    _configuration_length: usize,
) -> ModulePtr {
    ptr::from_ref(&CONFIG).cast()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(_config: ModulePtr) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    _config: ModulePtr,
    _filter: EnvoyPtr,
) -> ModulePtr {
    ptr::from_ref(&FILTER).cast()
}

/// Reads the request's header map, and holds the request until its body is in.
///
/// # Safety
/// `filter` is the pointer Envoy passes for the stream it is running.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: EnvoyPtr,
    _module: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    std::hint::black_box(read_headers(filter, REQUEST_HEADERS));
    hold_until_end(end_of_stream)
}

/// At the body's end: reads it whole, sets the routing header, puts the body back and clears
/// the route cache.
///
/// # Safety
/// `filter` is the pointer Envoy passes for the stream it is running.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter: EnvoyPtr,
    _module: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    if !end_of_stream {
        return STOP;
    }
    let (body, [buffered, received]) =
        whole_body(filter, BUFFERED_REQUEST_BODY, RECEIVED_REQUEST_BODY);
    set_header(filter, REQUEST_HEADERS, b"x-floor-route", b"fake");
    // SAFETY: `filter` is the pointer Envoy passed to the running hook; `body` is ours.
    unsafe {
        // The body put back, as a filter that rewrites it (the model name) must.
        envoy_dynamic_module_callback_http_drain_body(filter, BUFFERED_REQUEST_BODY, buffered);
        envoy_dynamic_module_callback_http_drain_body(filter, RECEIVED_REQUEST_BODY, received);
        envoy_dynamic_module_callback_http_append_body(
            filter,
            RECEIVED_REQUEST_BODY,
            Buffer::of(&body),
        );
        envoy_dynamic_module_callback_http_clear_route_cache(filter);
    }
    CONTINUE
}

/// Reads the response's header map, sets one header, and holds the response until its body
/// is in.
///
/// # Safety
/// `filter` is the pointer Envoy passes for the stream it is running.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter: EnvoyPtr,
    _module: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    std::hint::black_box(read_headers(filter, RESPONSE_HEADERS));
    set_header(filter, RESPONSE_HEADERS, b"x-floor", b"1");
    hold_until_end(end_of_stream)
}

/// At the body's end: reads it whole.
///
/// # Safety
/// `filter` is the pointer Envoy passes for the stream it is running.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    filter: EnvoyPtr,
    _module: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    if !end_of_stream {
        return STOP;
    }
    std::hint::black_box(whole_body(
        filter,
        BUFFERED_RESPONSE_BODY,
        RECEIVED_RESPONSE_BODY,
    ));
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter: EnvoyPtr,
    _module: ModulePtr,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter: EnvoyPtr,
    _module: ModulePtr,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter: EnvoyPtr,
    _module: ModulePtr,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_module: ModulePtr) {}

/// Hooks Envoy requires to exist; this module starts no callout, stream or schedule and keeps
/// no per-route configuration, so they are never called with anything to do.
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
    envoy_dynamic_module_on_http_filter_scheduled,
    envoy_dynamic_module_on_http_filter_config_scheduled,
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
