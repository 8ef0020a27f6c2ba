//! The benchmark's fake provider: a small hyper HTTP/1.1 server that answers every `POST` with a
//! realistic OpenAI Chat Completions response, so that the upstream is never the bottleneck.
//!
//! - non-streaming: a ~600-byte `chat.completion` JSON body (the shape OpenAI sends, with
//!   `usage` and its detail objects);
//! - streaming (`"stream": true` in the body): 50 `chat.completion.chunk` SSE events, one usage
//!   chunk (`choices: []`) and `data: [DONE]`. Each event is its own body frame and the body
//!   yields between frames, so hyper writes them separately, as a real provider's tokens are.
//!
//! `GET` on any path answers `200 ok` (readiness).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Number of content chunks in a streamed answer (plus the usage chunk and `[DONE]`).
pub const STREAM_CHUNKS: usize = 50;

/// The non-streaming answer (a real `gpt-4o-mini` response's shape).
pub const COMPLETION: &str = concat!(
    r#"{"id":"chatcmpl-BENCH0000000000000000000001","object":"chat.completion","#,
    r#""created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"#,
    r#""message":{"role":"assistant","content":"The sea is a restless mirror of the sky, "#,
    r#"endlessly rewriting the shoreline with patient, silver-edged waves.","refusal":null,"#,
    r#""annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":21,"#,
    r#""completion_tokens":19,"total_tokens":40,"prompt_tokens_details":{"cached_tokens":0,"#,
    r#""audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"#,
    r#""accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"#,
    r#""service_tier":"default","system_fingerprint":"fp_bench0001"}"#
);

/// The SSE events of one streamed answer, each a complete event with its blank line.
pub fn stream_events() -> Vec<Bytes> {
    let head = r#"{"id":"chatcmpl-BENCH0000000000000000000002","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_bench0001","#;
    let mut events: Vec<Bytes> = (0..STREAM_CHUNKS)
        .map(|i| {
            let delta = if i == 0 {
                r#"{"role":"assistant","content":""}"#.to_string()
            } else {
                format!(r#"{{"content":" word{i}"}}"#)
            };
            let finish = if i + 1 == STREAM_CHUNKS {
                r#""stop""#
            } else {
                "null"
            };
            Bytes::from(format!(
                "data: {head}\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}],\"usage\":null}}\n\n"
            ))
        })
        .collect();
    events.push(Bytes::from(format!(
        "data: {head}\"choices\":[],\"usage\":{{\"prompt_tokens\":21,\"completion_tokens\":{STREAM_CHUNKS},\"total_tokens\":{}}}}}\n\n",
        21 + STREAM_CHUNKS
    )));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// Whether a JSON request body asks for a stream (`"stream":true`, any whitespace).
pub fn wants_stream(body: &[u8]) -> bool {
    const KEY: &[u8] = b"\"stream\"";
    let mut rest = body;
    while let Some(at) = find(rest, KEY) {
        let after = &rest[at + KEY.len()..];
        let after = trim_start(after);
        if let Some(value) = after.strip_prefix(b":") {
            if trim_start(value).starts_with(b"true") {
                return true;
            }
        }
        rest = &rest[at + KEY.len()..];
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// A response body that hands out its frames one at a time and yields between them.
struct Frames {
    frames: VecDeque<Bytes>,
    /// Whether the next poll yields (returns `Pending` after waking itself) before a frame.
    yield_next: bool,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.yield_next && !self.frames.is_empty() {
            self.yield_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.yield_next = true;
        Poll::Ready(self.frames.pop_front().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        let len = self.frames.iter().map(|f| f.len() as u64).sum();
        SizeHint::with_exact(len)
    }
}

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

async fn answer(req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    let method = req.method().clone();
    // A body that fails to arrive is answered like an empty one: the client is gone anyway.
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let response = if method != Method::POST {
        Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"ok")).boxed_unsync())
    } else if wants_stream(&body) {
        let frames = Frames {
            frames: stream_events().into(),
            yield_next: false,
        };
        Response::builder()
            .header("content-type", "text/event-stream; charset=utf-8")
            .header("cache-control", "no-cache")
            .body(frames.boxed_unsync())
    } else {
        Response::builder()
            .header("content-type", "application/json")
            .header("openai-processing-ms", "1")
            .body(Full::new(Bytes::from_static(COMPLETION.as_bytes())).boxed_unsync())
    };
    // The builder only fails on invalid header values, and these are constants.
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync())))
}

/// Binds 127.0.0.1 on a free port and serves on a dedicated 2-thread runtime (its own OS
/// threads, so the caller's blocking work never slows it down). Returns the bound address.
pub fn start() -> Result<SocketAddr> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-fake")
        .enable_all()
        .build()
        .context("cannot build the fake provider's runtime")?;
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .context("cannot bind the fake provider")?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("bench-fake-accept".into())
        .spawn(move || runtime.block_on(serve(listener)))
        .context("cannot start the fake provider's thread")?;
    Ok(addr)
}

async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Latency matters more than packet count here, as with any real provider.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            // Connection errors (client went away) end that connection only.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_flag_is_found_in_compact_and_spaced_json() {
        assert!(wants_stream(br#"{"model":"m","stream":true}"#));
        assert!(wants_stream(br#"{"model": "m", "stream" : true}"#));
        assert!(!wants_stream(br#"{"model":"m","stream":false}"#));
        assert!(!wants_stream(br#"{"model":"m"}"#));
    }

    #[test]
    fn answers_have_the_documented_shape() -> Result<()> {
        let json: serde_json::Value = serde_json::from_str(COMPLETION)?;
        assert_eq!(json["usage"]["total_tokens"], 40);
        assert!(
            (550..700).contains(&COMPLETION.len()),
            "{}",
            COMPLETION.len()
        );
        let events = stream_events();
        assert_eq!(events.len(), STREAM_CHUNKS + 2);
        for event in &events[..events.len() - 1] {
            let data = event
                .strip_prefix(b"data: ")
                .and_then(|e| e.strip_suffix(b"\n\n"))
                .ok_or_else(|| anyhow::anyhow!("not an SSE event"))?;
            serde_json::from_slice::<serde_json::Value>(data)?;
        }
        Ok(())
    }
}
