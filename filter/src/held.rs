//! A provider's non-streamed 2xx answer held back (headers and body, in the VM's memory) until
//! it is whole and known to be JSON. Until then nothing has gone to the client, so an unusable
//! answer can still become a 502 naming the provider, which Envoy's retry policy moves to a
//! chain's next attempt. The upstream filter holds an attempt's answer; the edge holds a direct
//! request's (ARCHITECTURE.md, "Failover" and "Direct requests").

use tokenrouter_engine::request::ClientApi;
use tokenrouter_engine::translate::{
    unusable_reply_body, ResponseHeaderMutation, Translator, MAX_RESPONSE_BODY_BYTES,
};
use tokenrouter_engine::usage::{check_client_reply, ChunkOutput, Usage};

use crate::host;

pub struct HeldReply {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
    overflowed: bool,
    /// Earlier chunks were taken out of Envoy's buffer (so `body` must be written back).
    cleared: bool,
}

/// What a held answer became.
pub enum Released {
    /// Usable: the answer is recorded, its headers and body translated; Envoy's buffer holds
    /// `body` (`size` bytes), which the client gets, with this content type.
    Usable {
        size: usize,
        body: Vec<u8>,
        content_type: String,
        /// The answer's usage, when the check read it and the body reached the client as it
        /// came (`None`: read the usage from the body).
        usage: Option<Usage>,
    },
    /// Unusable: a 502 naming the provider went in its place.
    Unusable,
}

impl HeldReply {
    pub fn new(status: u16, content_type: Option<String>) -> HeldReply {
        HeldReply {
            status,
            content_type,
            body: Vec::new(),
            overflowed: false,
            cleared: false,
        }
    }

    /// Takes a body chunk (`body_size` bytes in Envoy's buffer). Before the end the chunk
    /// leaves Envoy's buffer (kept here, so Envoy's buffer limit does not apply; the answer is
    /// bounded by [`MAX_RESPONSE_BODY_BYTES`]). Returns whether the answer is whole.
    pub fn collect(&mut self, body_size: usize, chunk: &[u8], end_of_stream: bool) -> bool {
        if self.body.len() + chunk.len() > MAX_RESPONSE_BODY_BYTES {
            self.overflowed = true;
        } else {
            self.body.extend_from_slice(chunk);
        }
        if !end_of_stream {
            host::set_response_body(body_size, &[]);
            self.cleared = true;
        }
        end_of_stream
    }

    /// Lets the whole answer go: translated when usable, else as a 502 naming `provider` in
    /// the client's format. Either way the attempt's answer goes to `answered` (its status and
    /// the time) to be recorded.
    pub fn release(
        mut self,
        body_size: usize,
        translator: &mut dyn Translator,
        provider: &str,
        client: ClientApi,
        request_id: &str,
        answered: impl FnOnce(u16, i64),
    ) -> Released {
        let now = host::now_ms();
        let checked = check_client_reply(
            client,
            provider,
            self.content_type.as_deref(),
            &self.body,
            self.overflowed,
        );
        let usage = match checked {
            Ok(usage) => usage,
            Err(message) => {
                log::warn!("{message} (request {request_id})");
                answered(502, now);
                let body = unusable_reply_body(client, provider, message, request_id);
                host::set_response_header(":status", Some("502"));
                host::set_response_header("content-type", Some("application/json"));
                host::set_response_header("content-length", None);
                host::set_response_body(body_size, &body);
                return Released::Unusable;
            }
        };
        answered(self.status, now);
        let mutation = translator.response_headers(self.status, self.content_type.as_deref());
        let content_type = apply_mutation(&mutation, self.content_type.take());
        let (size, body, unchanged) = self.pass_body(body_size, translator);
        Released::Usable {
            size,
            body,
            content_type,
            // Read as the client's format: right only if the body passed unchanged.
            usage: usage.filter(|_| unchanged),
        }
    }

    /// The whole body through the translator (whose headers were already translated) into
    /// Envoy's buffer; returns its size there and the bytes.
    pub fn pass(self, body_size: usize, translator: &mut dyn Translator) -> (usize, Vec<u8>) {
        let (size, body, _) = self.pass_body(body_size, translator);
        (size, body)
    }

    /// [`HeldReply::pass`], and whether the body went through unchanged.
    fn pass_body(
        self,
        body_size: usize,
        translator: &mut dyn Translator,
    ) -> (usize, Vec<u8>, bool) {
        let (out, unchanged) = match translator.response_body(&self.body, true) {
            ChunkOutput::Replace(out) => (out, false),
            ChunkOutput::Unchanged if self.cleared => (self.body, true),
            // Envoy's buffer holds the body as it came.
            ChunkOutput::Unchanged => return (body_size, self.body, true),
        };
        host::set_response_body(body_size, &out);
        (out.len(), out, unchanged)
    }
}

/// Applies a translator's response header changes; returns the content type the client gets
/// (`content_type`: the provider's).
pub fn apply_mutation(mutation: &ResponseHeaderMutation, content_type: Option<String>) -> String {
    let mut content_type = content_type;
    for name in &mutation.remove_headers {
        host::set_response_header(name, None);
        if name == "content-type" {
            content_type = None;
        }
    }
    for (name, value) in &mutation.set_headers {
        host::set_response_header(name, Some(value));
        if name == "content-type" {
            content_type = Some(value.clone());
        }
    }
    content_type.unwrap_or_default()
}
