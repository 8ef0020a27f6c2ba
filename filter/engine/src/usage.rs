//! Token usage from provider responses: whole JSON bodies, and SSE streams fed chunk by chunk
//! (events may span any number of chunks). Counts come from the provider's own `usage`; nothing
//! here estimates.

use serde::Deserialize;

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

#[derive(Deserialize)]
struct OpenAiUsage {
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
    serde_json::from_slice::<WithUsage>(body)
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
        match serde_json::from_slice::<WithUsage>(data) {
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
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
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
fn event_data(event: &[u8]) -> Option<&[u8]> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

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
}
