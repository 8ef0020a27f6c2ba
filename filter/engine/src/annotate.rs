//! The `tokenrouter` object a response body carries when the gateway has something to say about
//! the request: the firewall rules it applied and the warnings it gave (the same facts as the
//! `x-tokenrouter-firewall` / `x-tokenrouter-warnings` headers, which a stream's late findings
//! can no longer reach).
//!
//! - JSON responses get a top-level `"tokenrouter": {…}` member (SDKs keep unknown members).
//! - Chat Completions streams get one more chunk, `{"object":"chat.completion.chunk",
//!   "choices":[],"tokenrouter":{…}}`, just before `data: [DONE]` (clients stop reading there).
//! - Responses and Messages streams get a last event of type `tokenrouter.metadata` (the OpenAI
//!   SDK yields it as one more event; the Anthropic SDK passes over event names it does not
//!   know).

use serde_json::{json, Value};

use crate::request::ClientApi;

/// The annotation object, or `None` when nothing was applied and nothing warned.
///
/// `applied` holds firewall labels `action:scope:rule name` (see `firewall::Applied::label`).
pub fn object_json(request_id: &str, applied: &[String], warnings: &[String]) -> Option<String> {
    if applied.is_empty() && warnings.is_empty() {
        return None;
    }
    let firewall: Vec<Value> = applied
        .iter()
        .map(|label| {
            let mut parts = label.splitn(3, ':');
            let action = parts.next().unwrap_or_default();
            let scope = parts.next().unwrap_or_default();
            let rule = parts.next().unwrap_or_default();
            json!({"rule": rule, "action": action, "scope": scope})
        })
        .collect();
    let object = json!({
        "request_id": request_id,
        "firewall": firewall,
        "warnings": warnings,
    });
    Some(object.to_string())
}

/// `body` (a JSON object) with `"tokenrouter": <annotation>` as its first member, spliced in
/// without re-encoding the rest. `None` when the body is not a JSON object.
pub fn splice_into_object(body: &[u8], annotation: &str) -> Option<Vec<u8>> {
    let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[open] != b'{' {
        return None;
    }
    let rest = &body[open + 1..];
    let empty = rest
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'}');
    let mut out = Vec::with_capacity(body.len() + annotation.len() + 16);
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(b"\"tokenrouter\":");
    out.extend_from_slice(annotation.as_bytes());
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// The SSE event carrying `annotation` in `api`'s stream format.
pub fn sse_event(api: ClientApi, annotation: &str) -> Vec<u8> {
    match api {
        ClientApi::ChatCompletions => format!(
            "data: {{\"object\":\"chat.completion.chunk\",\"choices\":[],\"tokenrouter\":{annotation}}}\n\n"
        ),
        // The OpenAI SDK hands a nameless event's data to the caller as an event of its `type`.
        ClientApi::Responses => format!(
            "data: {{\"type\":\"tokenrouter.metadata\",\"tokenrouter\":{annotation}}}\n\n"
        ),
        _ => format!(
            "event: tokenrouter.metadata\ndata: {{\"type\":\"tokenrouter.metadata\",\"tokenrouter\":{annotation}}}\n\n"
        ),
    }
    .into_bytes()
}

/// Adds the annotation event to a stream the client is reading, at its end.
///
/// A Chat Completions stream ends with `data: [DONE]`, after which clients stop reading: a
/// `[DONE]` that ends a chunk is held back until the stream ends, and the annotation goes
/// before it. Other APIs' streams get the event appended after their last event.
#[derive(Debug)]
pub struct SseAnnotator {
    api: ClientApi,
    /// The `[DONE]` line held back (with its line ending), if any.
    held: Option<Vec<u8>>,
}

const DONE_LF: &[u8] = b"data: [DONE]\n\n";
const DONE_CRLF: &[u8] = b"data: [DONE]\r\n\r\n";

impl SseAnnotator {
    pub fn new(api: ClientApi) -> SseAnnotator {
        SseAnnotator { api, held: None }
    }

    /// Passes `chunk` on; `annotation` is only read at the end of the stream (`None` when there
    /// is nothing to say).
    pub fn feed(
        &mut self,
        mut chunk: Vec<u8>,
        end_of_stream: bool,
        annotation: impl FnOnce() -> Option<String>,
    ) -> Vec<u8> {
        if self.api == ClientApi::ChatCompletions {
            if !chunk.is_empty() {
                // Data after a held `[DONE]` (not seen in practice): give it back in order.
                if let Some(previous) = self.held.take() {
                    chunk.splice(0..0, previous);
                }
            }
            for done in [DONE_LF, DONE_CRLF] {
                let Some(at) = chunk.len().checked_sub(done.len()) else {
                    continue;
                };
                // Only at a line start: `…data: [DONE]` inside another line is not the end.
                if chunk.ends_with(done) && (at == 0 || chunk[at - 1] == b'\n') {
                    chunk.truncate(at);
                    self.held = Some(done.to_vec());
                    break;
                }
            }
        }
        if end_of_stream {
            if let Some(annotation) = annotation() {
                chunk.extend_from_slice(&sse_event(self.api, &annotation));
            }
            if let Some(done) = self.held.take() {
                chunk.extend_from_slice(&done);
            }
        }
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec![
            "mask:prompt:Email: work".into(),
            "warn:response:Beta".into(),
        ]
    }

    #[test]
    fn object_lists_rules_and_warnings() {
        assert_eq!(object_json("req_1", &[], &[]), None);
        let o = object_json("req_1", &labels(), &["Beta model".into()]).unwrap_or_default();
        let v: Value = serde_json::from_str(&o).unwrap_or_default();
        assert_eq!(v["request_id"], "req_1");
        assert_eq!(v["firewall"][0]["rule"], "Email: work");
        assert_eq!(v["firewall"][0]["action"], "mask");
        assert_eq!(v["firewall"][0]["scope"], "prompt");
        assert_eq!(v["firewall"][1]["action"], "warn");
        assert_eq!(v["warnings"][0], "Beta model");
    }

    #[test]
    fn splices_into_objects_only() {
        let a = r#"{"warnings":[]}"#;
        let cases: [(&str, Option<&str>); 5] = [
            (
                r#"{"id":"x","choices":[]}"#,
                Some(r#"{"tokenrouter":{"warnings":[]},"id":"x","choices":[]}"#),
            ),
            (" {}", Some(r#" {"tokenrouter":{"warnings":[]}}"#)),
            ("{ \n }", Some("{\"tokenrouter\":{\"warnings\":[]} \n }")),
            ("[1]", None),
            ("", None),
        ];
        for (body, want) in cases {
            let got = splice_into_object(body.as_bytes(), a)
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            assert_eq!(got.as_deref(), want, "{body}");
            if let Some(g) = got {
                assert!(serde_json::from_str::<Value>(&g).is_ok(), "{g}");
            }
        }
    }

    fn run(api: ClientApi, chunks: &[(&str, bool)], annotation: Option<&str>) -> String {
        let mut a = SseAnnotator::new(api);
        let mut out = Vec::new();
        for (chunk, end) in chunks {
            out.extend(a.feed(chunk.as_bytes().to_vec(), *end, || {
                annotation.map(str::to_string)
            }));
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn chat_annotation_goes_before_done() {
        let ann = Some(r#"{"warnings":["w"]}"#);
        let chunk = "data: {\"choices\":[]}\n\n";
        let want = format!(
            "{chunk}data: {{\"object\":\"chat.completion.chunk\",\"choices\":[],\"tokenrouter\":{{\"warnings\":[\"w\"]}}}}\n\ndata: [DONE]\n\n"
        );
        // [DONE] with the last data, alone before an empty end, and in the end chunk.
        let cases: [&[(&str, bool)]; 3] = [
            &[(chunk, false), ("data: [DONE]\n\n", false), ("", true)],
            &[(&format!("{chunk}data: [DONE]\n\n"), false), ("", true)],
            &[(chunk, false), ("data: [DONE]\n\n", true)],
        ];
        for chunks in cases {
            assert_eq!(run(ClientApi::ChatCompletions, chunks, ann), want);
        }
        // Nothing to say: the stream is unchanged.
        assert_eq!(
            run(
                ClientApi::ChatCompletions,
                &[(chunk, false), ("data: [DONE]\n\n", false), ("", true)],
                None
            ),
            format!("{chunk}data: [DONE]\n\n")
        );
    }

    #[test]
    fn other_apis_get_a_last_event() {
        let out = run(
            ClientApi::Messages,
            &[
                (
                    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                    false,
                ),
                ("", true),
            ],
            Some("{}"),
        );
        assert!(out.ends_with(
            "event: tokenrouter.metadata\ndata: {\"type\":\"tokenrouter.metadata\",\"tokenrouter\":{}}\n\n"
        ));
        let out = run(ClientApi::Responses, &[("data: x\n\n", true)], None);
        assert_eq!(out, "data: x\n\n");
    }
}
