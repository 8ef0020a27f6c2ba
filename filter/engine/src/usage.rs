//! Token usage from provider responses: whole JSON bodies, and SSE streams fed chunk by chunk
//! (events may span any number of chunks). Counts come from the provider's own `usage`; nothing
//! here estimates.

use serde::Deserialize;

use crate::request::ClientApi;

/// Tokens of one response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input: u64,
    pub output: u64,
    /// Prompt tokens served from the provider's cache (a subset of `input`).
    pub cached_input: u64,
    /// Reasoning tokens (a subset of `output`).
    pub reasoning: u64,
}

/// OpenAI's `usage` object (Chat Completions, Embeddings).
#[derive(Deserialize)]
pub struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

/// Only the fields we read; everything else is skipped by serde without being built.
#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

impl From<OpenAiUsage> for Usage {
    fn from(u: OpenAiUsage) -> Usage {
        Usage {
            input: u.prompt_tokens,
            output: u.completion_tokens,
            cached_input: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            reasoning: u
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

/// Usage of a non-streaming OpenAI-format response body.
pub fn from_openai_body(body: &[u8]) -> Option<Usage> {
    crate::json::from_slice::<WithUsage>(body)
        .ok()?
        .usage
        .map(Usage::from)
}

/// What to do with the chunk just fed.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkOutput {
    /// Send the chunk as it came.
    Unchanged,
    /// Send these bytes instead.
    Replace(Vec<u8>),
}

/// Largest single SSE event we hold while waiting for its end. Beyond it the stream is passed
/// through untouched and its usage is reported as unknown.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Watches an OpenAI Chat Completions SSE stream: records the usage chunk and, when the client
/// did not ask for it (the gateway did), removes that chunk from what the client receives.
#[derive(Debug)]
pub struct OpenAiStreamObserver {
    /// Bytes after the last complete event.
    pending: Vec<u8>,
    /// Remove the usage-only chunk before it reaches the client.
    strip_usage_chunk: bool,
    /// Gave up parsing (oversized event); everything passes untouched from then on.
    overflowed: bool,
    pub usage: Option<Usage>,
    /// `data: [DONE]` was seen: the stream completed normally.
    pub done: bool,
}

impl OpenAiStreamObserver {
    pub fn new(strip_usage_chunk: bool) -> Self {
        OpenAiStreamObserver {
            pending: Vec::new(),
            strip_usage_chunk,
            overflowed: false,
            usage: None,
            done: false,
        }
    }

    /// Feeds the next chunk of the response body.
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkOutput {
        if self.overflowed {
            return ChunkOutput::Unchanged;
        }
        self.pending.extend_from_slice(chunk);
        let pending = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        let mut dropped_any = false;
        let mut consumed = 0;
        while let Some((event_len, sep_len)) = find_event_end(&pending[consumed..]) {
            let keep = self.observe_event(&pending[consumed..consumed + event_len]);
            if keep {
                out.extend_from_slice(&pending[consumed..consumed + event_len + sep_len]);
            } else {
                dropped_any = true;
            }
            consumed += event_len + sep_len;
        }
        self.pending = pending;
        self.pending.drain(..consumed);
        if end_of_stream {
            // A final event without its blank line still counts.
            if !self.pending.is_empty() {
                let tail = std::mem::take(&mut self.pending);
                if self.observe_event(&tail) {
                    out.extend_from_slice(&tail);
                } else {
                    dropped_any = true;
                }
            }
        } else if self.pending.len() > MAX_EVENT_BYTES {
            self.overflowed = true;
            self.usage = None;
        }
        if !self.strip_usage_chunk {
            return ChunkOutput::Unchanged;
        }
        if self.overflowed {
            // Release what was held back, unparsed.
            out.append(&mut self.pending);
            return ChunkOutput::Replace(out);
        }
        if !dropped_any && self.pending.is_empty() && out.len() == chunk.len() {
            return ChunkOutput::Unchanged;
        }
        ChunkOutput::Replace(out)
    }

    /// Records what the event says; returns whether the client should receive it.
    fn observe_event(&mut self, event: &[u8]) -> bool {
        let Some(data) = event_data(event) else {
            return true;
        };
        if data == b"[DONE]" {
            self.done = true;
            return true;
        }
        if !mentions_usage_object(data) {
            return true;
        }
        match crate::json::from_slice::<WithUsage>(data) {
            Ok(WithUsage {
                usage: Some(u),
                choices,
            }) => {
                self.usage = Some(u.into());
                let usage_only = choices.is_none_or(|c| c.is_empty());
                !(self.strip_usage_chunk && usage_only)
            }
            _ => true,
        }
    }
}

/// Length of the first complete event and of its separator (`\n\n`, `\r\n\r\n` or `\r\r`).
pub(crate) fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'\n' if buf.get(i + 1) == Some(&b'\n') => return Some((i + 1, 1)),
            b'\r'
                if buf.get(i + 1) == Some(&b'\n')
                    && buf.get(i + 2) == Some(&b'\r')
                    && buf.get(i + 3) == Some(&b'\n') =>
            {
                return Some((i + 2, 2))
            }
            b'\r' if buf.get(i + 1) == Some(&b'\r') => return Some((i + 1, 1)),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The `data:` payload of an event (one data line, which is what providers send).
pub(crate) fn event_data(event: &[u8]) -> Option<&[u8]> {
    event
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find_map(|l| l.strip_prefix(b"data:"))
        .map(|d| d.strip_prefix(b" ").unwrap_or(d))
}

/// Cheap pre-check before parsing: `"usage"` followed by an object (not `null`).
fn mentions_usage_object(data: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"\"usage\"";
    let mut start = 0;
    while let Some(pos) = data[start..]
        .windows(NEEDLE.len())
        .position(|w| w == NEEDLE)
    {
        let after = &data[start + pos + NEEDLE.len()..];
        let mut rest = after.iter().skip_while(|b| b.is_ascii_whitespace());
        if rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return true;
        }
        start += pos + NEEDLE.len();
    }
    false
}

/// Responses API `usage`.
#[derive(Deserialize)]
struct ResponsesUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    output_tokens_details: Option<CompletionDetails>,
}

impl From<ResponsesUsage> for Usage {
    fn from(u: ResponsesUsage) -> Usage {
        Usage {
            input: u.input_tokens,
            output: u.output_tokens,
            cached_input: u
                .input_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            reasoning: u
                .output_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
struct WithResponsesUsage {
    usage: Option<ResponsesUsage>,
}

#[derive(Deserialize)]
struct WithAnthropicUsage {
    usage: Option<crate::translate::anthropic::AnthropicUsage>,
}

fn anthropic_usage(u: &crate::translate::anthropic::AnthropicUsage) -> Usage {
    let mut out = Usage::default();
    u.apply(&mut out, &mut 0, &mut 0);
    out
}

/// Usage of a non-streaming response body in the client's format (`api`).
pub fn from_client_body(api: ClientApi, body: &[u8]) -> Option<Usage> {
    match api {
        ClientApi::ChatCompletions | ClientApi::Embeddings => from_openai_body(body),
        ClientApi::Responses => crate::json::from_slice::<WithResponsesUsage>(body)
            .ok()?
            .usage
            .map(Usage::from),
        ClientApi::Messages => crate::json::from_slice::<WithAnthropicUsage>(body)
            .ok()?
            .usage
            .map(|u| anthropic_usage(&u)),
        ClientApi::Models => None,
    }
}

/// [`crate::translate::check_reply`] of a non-streaming 2xx reply, with its usage read in the
/// same pass as the client's format (`api`) writes it: `Ok(Some(_))` is what
/// [`from_client_body`] reads from the whole body, without reading it again. Meaningful only
/// for a reply the client gets as it came (in the client's format).
pub fn check_client_reply(
    api: ClientApi,
    provider: &str,
    content_type: Option<&str>,
    body: &[u8],
    overflowed: bool,
) -> Result<Option<Usage>, String> {
    use crate::translate::{anthropic::AnthropicUsage, check_reply};
    match api {
        ClientApi::ChatCompletions | ClientApi::Embeddings => {
            check_reply::<OpenAiUsage>(provider, content_type, body, overflowed)
                .map(|u| u.map(Usage::from))
        }
        ClientApi::Responses => {
            check_reply::<ResponsesUsage>(provider, content_type, body, overflowed)
                .map(|u| u.map(Usage::from))
        }
        ClientApi::Messages => {
            check_reply::<AnthropicUsage>(provider, content_type, body, overflowed)
                .map(|u| u.map(|u| anthropic_usage(&u)))
        }
        ClientApi::Models => {
            check_reply::<serde::de::IgnoredAny>(provider, content_type, body, overflowed)
                .map(|_| None)
        }
    }
}

/// Watches a streamed response in the client's format for usage and for its terminal event.
#[derive(Debug)]
pub enum ClientStreamObserver {
    /// Chat Completions: may also remove the usage chunk the gateway asked for.
    Chat(OpenAiStreamObserver),
    /// Responses and Messages: read-only.
    Events(EventStreamObserver),
}

impl ClientStreamObserver {
    /// `strip_usage_chunk` matters for Chat Completions only (see [`OpenAiStreamObserver`]).
    pub fn new(api: ClientApi, strip_usage_chunk: bool) -> ClientStreamObserver {
        match api {
            ClientApi::Responses | ClientApi::Messages => {
                ClientStreamObserver::Events(EventStreamObserver::new(api))
            }
            _ => ClientStreamObserver::Chat(OpenAiStreamObserver::new(strip_usage_chunk)),
        }
    }

    /// Feeds the next chunk of the response body.
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkOutput {
        match self {
            ClientStreamObserver::Chat(o) => o.feed(chunk, end_of_stream),
            ClientStreamObserver::Events(o) => {
                o.feed(chunk, end_of_stream);
                ChunkOutput::Unchanged
            }
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        match self {
            ClientStreamObserver::Chat(o) => o.usage,
            ClientStreamObserver::Events(o) => o.usage,
        }
    }

    /// The stream reached its terminal event (`[DONE]`, `response.completed|incomplete|failed`,
    /// `message_stop`).
    pub fn done(&self) -> bool {
        match self {
            ClientStreamObserver::Chat(o) => o.done,
            ClientStreamObserver::Events(o) => o.done,
        }
    }

    /// The stream ended without its terminal event (a broken stream). Unknown, hence false,
    /// once an oversized event stopped the parsing.
    pub fn cut_short(&self) -> bool {
        match self {
            ClientStreamObserver::Chat(o) => !o.done && !o.overflowed,
            ClientStreamObserver::Events(o) => !o.done && !o.overflowed,
        }
    }
}

/// Usage from a Responses stream (`response.completed` / `response.incomplete` /
/// `response.failed` carry the whole response) or a Messages stream (`message_start` carries
/// input tokens, `message_delta` the running totals).
#[derive(Debug)]
pub struct EventStreamObserver {
    api: ClientApi,
    /// Bytes after the last complete event.
    pending: Vec<u8>,
    /// Gave up parsing (oversized event); usage unknown from then on.
    overflowed: bool,
    pub usage: Option<Usage>,
    pub done: bool,
    /// Messages: uncached input and cache writes, which later usage objects may omit.
    fresh_input: u64,
    cache_write: u64,
}

#[derive(Deserialize)]
struct TypedEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    response: Option<WithResponsesUsage>,
    #[serde(default)]
    message: Option<WithAnthropicUsage>,
    #[serde(default)]
    usage: Option<crate::translate::anthropic::AnthropicUsage>,
}

impl EventStreamObserver {
    pub fn new(api: ClientApi) -> Self {
        EventStreamObserver {
            api,
            pending: Vec::new(),
            overflowed: false,
            usage: None,
            done: false,
            fresh_input: 0,
            cache_write: 0,
        }
    }

    /// Feeds the next chunk; the body itself is never changed.
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) {
        if self.overflowed {
            return;
        }
        self.pending.extend_from_slice(chunk);
        let mut consumed = 0;
        while let Some((len, sep)) = find_event_end(&self.pending[consumed..]) {
            let event = self.pending[consumed..consumed + len].to_vec();
            self.observe(&event);
            consumed += len + sep;
        }
        self.pending.drain(..consumed);
        if end_of_stream {
            let tail = std::mem::take(&mut self.pending);
            self.observe(&tail);
        } else if self.pending.len() > MAX_EVENT_BYTES {
            self.overflowed = true;
            self.pending = Vec::new();
            self.usage = None;
        }
    }

    fn observe(&mut self, event: &[u8]) {
        let Some(data) = event_data(event) else {
            return;
        };
        let markers: &[&[u8]] = match self.api {
            ClientApi::Messages => &[b"message_start", b"message_delta", b"message_stop"],
            _ => &[
                b"response.completed",
                b"response.incomplete",
                b"response.failed",
            ],
        };
        if !markers
            .iter()
            .any(|m| data.windows(m.len()).any(|w| w == *m))
        {
            return;
        }
        let Ok(e) = crate::json::from_slice::<TypedEvent>(data) else {
            return;
        };
        match e.kind.as_str() {
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.done = true;
                if let Some(u) = e.response.and_then(|r| r.usage) {
                    self.usage = Some(u.into());
                }
            }
            "message_start" | "message_delta" => {
                let u = match e.kind.as_str() {
                    "message_start" => e.message.and_then(|m| m.usage),
                    _ => e.usage,
                };
                if let Some(u) = u {
                    let mut usage = self.usage.unwrap_or_default();
                    u.apply(&mut usage, &mut self.fresh_input, &mut self.cache_write);
                    self.usage = Some(usage);
                }
            }
            "message_stop" => self.done = true,
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// The usage read from the `usage` member the reply check found equals what the whole
    /// body gives, in every client format.
    #[test]
    fn usage_read_by_the_check_equals_usage_from_the_body() {
        let cases: [(ClientApi, &[u8]); 4] = [
            (
                ClientApi::ChatCompletions,
                br#"{"id":"x","choices":[{"message":{"content":"hi \"usage\": 1"}}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":1}}}"#,
            ),
            (
                ClientApi::Embeddings,
                br#"{"object":"list","data":[],"usage":{"prompt_tokens":7,"total_tokens":7}}"#,
            ),
            (
                ClientApi::Responses,
                br#"{"id":"r","usage":{"input_tokens":10,"output_tokens":5,"input_tokens_details":{"cached_tokens":2},"output_tokens_details":{"reasoning_tokens":1}}}"#,
            ),
            (
                ClientApi::Messages,
                br#"{"id":"m","type":"message","usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":3,"cache_creation_input_tokens":2}}"#,
            ),
        ];
        let json = Some("application/json");
        for (api, body) in cases {
            let checked = check_client_reply(api, "p", json, body, false).expect("a usable reply");
            assert!(checked.is_some(), "{api:?}");
            assert_eq!(checked, from_client_body(api, body), "{api:?}");
        }
        // No usage, or `null`: nothing read here (the body gives none either).
        for body in [&br#"{"id":"x"}"#[..], br#"{"id":"x","usage":null}"#] {
            let checked = check_client_reply(ClientApi::ChatCompletions, "p", None, body, false);
            assert!(checked.is_err(), "no content type is refused first");
            let checked = check_client_reply(ClientApi::ChatCompletions, "p", json, body, false);
            assert_eq!(checked, Ok(None));
            assert_eq!(from_client_body(ClientApi::ChatCompletions, body), None);
        }
        // `usage` twice, or a usage the client's format does not have: usable, but left to
        // the whole body's reading (which reads nothing either).
        for body in [
            &br#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}"#[..],
            br#"{"usage":{"prompt_tokens":"many"}}"#,
        ] {
            let checked = check_client_reply(ClientApi::ChatCompletions, "p", json, body, false);
            assert_eq!(checked, Ok(None), "{:?}", String::from_utf8_lossy(body));
        }
        // Whatever serde reads as the usage struct, the body's reading reads too (a sequence
        // of its fields included).
        let odd = br#"{"usage":[1]}"#;
        assert_eq!(
            check_client_reply(ClientApi::ChatCompletions, "p", json, odd, false),
            Ok(from_client_body(ClientApi::ChatCompletions, odd))
        );
        // Not an object, or not JSON: refused.
        for body in [&b"[1]"[..], b"{\"usage\":", b"nope"] {
            let checked = check_client_reply(ClientApi::ChatCompletions, "p", json, body, false);
            assert!(checked.is_err(), "{:?}", String::from_utf8_lossy(body));
        }
        // A models list has no usage to read.
        assert_eq!(
            check_client_reply(
                ClientApi::Models,
                "p",
                json,
                br#"{"data":[],"usage":{}}"#,
                false
            ),
            Ok(None)
        );
    }

    const STREAM: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15,\"prompt_tokens_details\":{\"cached_tokens\":4},\"completion_tokens_details\":{\"reasoning_tokens\":1}}}\n\n",
        "data: [DONE]\n\n",
    );

    const WANT: Usage = Usage {
        input: 12,
        output: 3,
        cached_input: 4,
        reasoning: 1,
    };

    fn run(observer: &mut OpenAiStreamObserver, stream: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let chunks: Vec<&[u8]> = stream.chunks(chunk).collect();
        for (i, c) in chunks.iter().enumerate() {
            match observer.feed(c, i + 1 == chunks.len()) {
                ChunkOutput::Unchanged => out.extend_from_slice(c),
                ChunkOutput::Replace(b) => out.extend_from_slice(&b),
            }
        }
        out
    }

    #[test]
    fn body_usage() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":1}}}"#;
        assert_eq!(from_openai_body(body), Some(WANT));
        assert_eq!(from_openai_body(br#"{"choices":[]}"#), None);
        assert_eq!(from_openai_body(b"not json"), None);
    }

    #[test]
    fn stream_usage_at_every_chunk_size() {
        for chunk in [1, 2, 3, 7, 64, 10_000] {
            let mut keep = OpenAiStreamObserver::new(false);
            assert_eq!(
                run(&mut keep, STREAM.as_bytes(), chunk),
                STREAM.as_bytes(),
                "chunk {chunk}"
            );
            assert_eq!(keep.usage, Some(WANT));
            assert!(keep.done);

            let mut strip = OpenAiStreamObserver::new(true);
            let out = String::from_utf8(run(&mut strip, STREAM.as_bytes(), chunk)).unwrap();
            assert_eq!(strip.usage, Some(WANT), "chunk {chunk}");
            assert!(
                !out.contains("prompt_tokens"),
                "chunk {chunk}: usage chunk leaked"
            );
            assert_eq!(out.matches("data: ").count(), 4, "chunk {chunk}");
            assert!(out.ends_with("data: [DONE]\n\n"));
        }
    }

    #[test]
    fn crlf_events_and_unterminated_tail() {
        let s = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\r\n\r\ndata: [DONE]";
        let mut o = OpenAiStreamObserver::new(true);
        let out = run(&mut o, s.as_bytes(), 5);
        assert_eq!(o.usage.unwrap().output, 2);
        assert_eq!(out, b"data: [DONE]");
        assert!(o.done);
    }

    #[test]
    fn truncated_stream_is_not_done() {
        let cut = &STREAM[..STREAM.len() / 2];
        let mut o = OpenAiStreamObserver::new(false);
        run(&mut o, cut.as_bytes(), 16);
        assert!(!o.done);
        assert_eq!(o.usage, None);
    }

    #[test]
    fn oversized_event_passes_through() {
        let big = format!("data: {{\"x\":\"{}\"", "a".repeat(MAX_EVENT_BYTES + 10));
        let mut o = OpenAiStreamObserver::new(true);
        let out = run(&mut o, big.as_bytes(), 4096);
        assert_eq!(out, big.as_bytes());
    }

    #[test]
    fn usage_pre_check() {
        assert!(mentions_usage_object(br#"{"usage": {"a":1}}"#));
        assert!(!mentions_usage_object(br#"{"usage":null}"#));
        assert!(!mentions_usage_object(br#"{"content":"usage"}"#));
    }

    #[test]
    fn client_body_usage_of_every_api() {
        let cases: [(ClientApi, &str, Option<Usage>); 5] = [
            (
                ClientApi::Responses,
                r#"{"object":"response","usage":{"input_tokens":12,"input_tokens_details":{"cached_tokens":4},"output_tokens":3,"output_tokens_details":{"reasoning_tokens":1},"total_tokens":15}}"#,
                Some(WANT),
            ),
            (
                ClientApi::Messages,
                r#"{"type":"message","usage":{"input_tokens":6,"cache_read_input_tokens":4,"cache_creation_input_tokens":2,"output_tokens":3}}"#,
                Some(Usage {
                    input: 12,
                    output: 3,
                    cached_input: 4,
                    reasoning: 0,
                }),
            ),
            (
                ClientApi::Embeddings,
                r#"{"object":"list","data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#,
                Some(Usage {
                    input: 8,
                    ..Usage::default()
                }),
            ),
            (ClientApi::Messages, r#"{"type":"message"}"#, None),
            (ClientApi::Models, r#"{"usage":{"prompt_tokens":1}}"#, None),
        ];
        for (api, body, want) in cases {
            assert_eq!(
                from_client_body(api, body.as_bytes()),
                want,
                "{api:?} {body}"
            );
        }
    }

    const MESSAGES_STREAM: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":6,\"cache_read_input_tokens\":4,\"cache_creation_input_tokens\":2,\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"usage\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    const RESPONSES_STREAM: &str = concat!(
        "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"usage\":null}}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"delta\":\"response.completed\"}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{\"usage\":{\"input_tokens\":12,\"input_tokens_details\":{\"cached_tokens\":4},\"output_tokens\":3,\"output_tokens_details\":{\"reasoning_tokens\":1}}}}\n\n",
    );

    #[test]
    fn event_stream_usage_at_every_chunk_size() {
        let cases = [
            (
                ClientApi::Messages,
                MESSAGES_STREAM,
                Usage {
                    input: 12,
                    output: 3,
                    cached_input: 4,
                    reasoning: 0,
                },
            ),
            (ClientApi::Responses, RESPONSES_STREAM, WANT),
        ];
        for (api, stream, want) in cases {
            for chunk in [1, 7, stream.len()] {
                let mut o = ClientStreamObserver::new(api, true);
                let chunks: Vec<&[u8]> = stream.as_bytes().chunks(chunk).collect();
                for (i, c) in chunks.iter().enumerate() {
                    assert_eq!(o.feed(c, i + 1 == chunks.len()), ChunkOutput::Unchanged);
                }
                assert_eq!(o.usage(), Some(want), "{api:?} chunk {chunk}");
                assert!(o.done(), "{api:?} chunk {chunk}");
            }
            let cut = &stream[..stream.len() / 2];
            let mut o = ClientStreamObserver::new(api, false);
            o.feed(cut.as_bytes(), true);
            assert!(!o.done(), "{api:?}: a cut stream is not done");
            assert!(o.cut_short(), "{api:?}: a cut stream is cut short");
        }
    }

    /// Found by fuzzing (`fuzz/`, target `usage`): Anthropic's input tokens are the sum of
    /// three counts the provider sends, which overflowed (a panic in debug builds, a wrapped
    /// and far too small count in release builds).
    #[test]
    fn huge_anthropic_counts_saturate() {
        let body = br#"{"type":"message","usage":{"input_tokens":18446744073709551615,"cache_read_input_tokens":1,"cache_creation_input_tokens":7,"output_tokens":5}}"#;
        let u = from_client_body(ClientApi::Messages, body).unwrap();
        assert_eq!((u.input, u.cached_input, u.output), (u64::MAX, 1, 5));
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":18446744073709551615,\"cache_read_input_tokens\":3}}}\n\n";
        let mut o = ClientStreamObserver::new(ClientApi::Messages, false);
        o.feed(stream.as_bytes(), true);
        assert_eq!(o.usage().map(|u| u.input), Some(u64::MAX));
    }
}
