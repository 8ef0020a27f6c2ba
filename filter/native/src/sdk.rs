//! The proxy-wasm SDK's entry points (its exports to a wasm host), called directly: the SDK
//! defines them as `extern "C"` functions, here linked into the same shared object.

use proxy_wasm::types::Action;

extern "C" {
    fn proxy_on_context_create(context_id: u32, root_context_id: u32);
    fn proxy_on_vm_start(context_id: u32, vm_configuration_size: usize) -> bool;
    fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool;
    fn proxy_on_tick(context_id: u32);
    fn proxy_on_queue_ready(context_id: u32, queue_id: u32);
    fn proxy_on_request_headers(context_id: u32, num_headers: usize, end_of_stream: bool)
        -> Action;
    fn proxy_on_request_body(context_id: u32, body_size: usize, end_of_stream: bool) -> Action;
    fn proxy_on_request_trailers(context_id: u32, num_trailers: usize) -> Action;
    fn proxy_on_response_headers(
        context_id: u32,
        num_headers: usize,
        end_of_stream: bool,
    ) -> Action;
    fn proxy_on_response_body(context_id: u32, body_size: usize, end_of_stream: bool) -> Action;
    fn proxy_on_response_trailers(context_id: u32, num_trailers: usize) -> Action;
    fn proxy_on_log(context_id: u32);
    fn proxy_on_done(context_id: u32) -> bool;
    fn proxy_on_delete(context_id: u32);
    fn proxy_on_grpc_receive(context_id: u32, token_id: u32, response_size: usize);
    fn proxy_on_grpc_close(context_id: u32, token_id: u32, status_code: u32);
}

// SAFETY (every function below): the SDK's entry points take plain integers and look the
// context up in the calling thread's dispatcher; an unknown id is logged there, not trusted.

pub fn context_create(id: u32, root: u32) {
    unsafe { proxy_on_context_create(id, root) }
}
pub fn vm_start(id: u32, size: usize) -> bool {
    unsafe { proxy_on_vm_start(id, size) }
}
pub fn configure(id: u32, size: usize) -> bool {
    unsafe { proxy_on_configure(id, size) }
}
pub fn tick(id: u32) {
    unsafe { proxy_on_tick(id) }
}
pub fn queue_ready(id: u32, queue: u32) {
    unsafe { proxy_on_queue_ready(id, queue) }
}
pub fn request_headers(id: u32, n: usize, end: bool) -> Action {
    unsafe { proxy_on_request_headers(id, n, end) }
}
pub fn request_body(id: u32, size: usize, end: bool) -> Action {
    unsafe { proxy_on_request_body(id, size, end) }
}
pub fn request_trailers(id: u32, n: usize) -> Action {
    unsafe { proxy_on_request_trailers(id, n) }
}
pub fn response_headers(id: u32, n: usize, end: bool) -> Action {
    unsafe { proxy_on_response_headers(id, n, end) }
}
pub fn response_body(id: u32, size: usize, end: bool) -> Action {
    unsafe { proxy_on_response_body(id, size, end) }
}
pub fn response_trailers(id: u32, n: usize) -> Action {
    unsafe { proxy_on_response_trailers(id, n) }
}
pub fn log(id: u32) {
    unsafe { proxy_on_log(id) }
}
pub fn done(id: u32) -> bool {
    unsafe { proxy_on_done(id) }
}
pub fn delete(id: u32) {
    unsafe { proxy_on_delete(id) }
}
pub fn grpc_receive(root: u32, token: u32, size: usize) {
    unsafe { proxy_on_grpc_receive(root, token, size) }
}
pub fn grpc_close(root: u32, token: u32, status: u32) {
    unsafe { proxy_on_grpc_close(root, token, status) }
}
