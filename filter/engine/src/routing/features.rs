//! What routing needs to know about a request body: its prompt text (bounded), turns, and the
//! capabilities it requires from a model.

use serde_json::{Map, Value};

use crate::request::ClientApi;

/// Most prompt text kept for rules and the classifier (bytes).
pub const MAX_PROMPT_BYTES: usize = 256 * 1024;
/// Output tokens assumed for cost estimates when the request sets no limit.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 500;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// Prompt text (system/instructions first, then messages in order), bounded.
    pub text: String,
    pub turns: usize,
    pub has_tools: bool,
    pub has_images: bool,
    pub json_mode: bool,
    /// Rough input size: body bytes / 4 (images count as their encoded size).
    pub est_input_tokens: u64,
    /// The request's own output limit, else [`DEFAULT_OUTPUT_TOKENS`].
    pub max_output_tokens: u64,
    pub requested_output_limit: bool,
}

impl Features {
    fn push(&mut self, s: &str) {
        if self.text.len() >= MAX_PROMPT_BYTES {
            return;
        }
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        let room = MAX_PROMPT_BYTES.saturating_sub(self.text.len());
        let mut cut = room.min(s.len());
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.text.push_str(&s[..cut]);
    }

    /// Text parts of one message `content` (string or array of parts/blocks), noting images.
    fn content(&mut self, v: &Value) {
        match v {
            Value::String(s) => self.push(s),
            Value::Array(parts) => {
                for p in parts {
                    match p.get("type").and_then(Value::as_str) {
                        Some("image_url" | "input_image" | "image") => self.has_images = true,
                        Some("tool_result") => {
                            if let Some(c) = p.get("content") {
                                self.content(c);
                            }
                        }
                        _ => {
                            if let Some(t) = p.get("text").and_then(Value::as_str) {
                                self.push(t);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn non_empty_array(body: &Map<String, Value>, key: &str) -> bool {
    body.get(key)
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// Reads the features of a body in `api`'s format. Never fails: what it cannot read it skips.
pub fn features(api: ClientApi, body: &Map<String, Value>, body_len: usize) -> Features {
    let mut f = Features {
        est_input_tokens: (body_len as u64) / 4,
        ..Features::default()
    };
    let limit = |k: &str| body.get(k).and_then(Value::as_u64);
    match api {
        ClientApi::ChatCompletions => {
            if let Some(msgs) = body.get("messages").and_then(Value::as_array) {
                f.turns = msgs.len();
                for m in msgs {
                    if let Some(c) = m.get("content") {
                        f.content(c);
                    }
                }
            }
            f.has_tools = non_empty_array(body, "tools") || non_empty_array(body, "functions");
            f.json_mode = body
                .get("response_format")
                .and_then(|r| r.get("type"))
                .and_then(Value::as_str)
                .is_some_and(|t| t == "json_object" || t == "json_schema");
            if let Some(n) = limit("max_completion_tokens").or_else(|| limit("max_tokens")) {
                f.max_output_tokens = n;
                f.requested_output_limit = true;
            }
        }
        ClientApi::Responses => {
            if let Some(s) = body.get("instructions").and_then(Value::as_str) {
                f.push(s);
            }
            match body.get("input") {
                Some(Value::String(s)) => {
                    f.turns = 1;
                    f.push(s);
                }
                Some(Value::Array(items)) => {
                    f.turns = items.len();
                    for item in items {
                        if let Some(c) = item.get("content") {
                            f.content(c);
                        } else if let Some(o) = item.get("output").and_then(Value::as_str) {
                            f.push(o);
                        }
                    }
                }
                _ => {}
            }
            f.has_tools = non_empty_array(body, "tools");
            f.json_mode = body
                .get("text")
                .and_then(|t| t.get("format"))
                .and_then(|r| r.get("type"))
                .and_then(Value::as_str)
                .is_some_and(|t| t == "json_object" || t == "json_schema");
            if let Some(n) = limit("max_output_tokens") {
                f.max_output_tokens = n;
                f.requested_output_limit = true;
            }
        }
        ClientApi::Messages => {
            if let Some(s) = body.get("system") {
                f.content(s);
            }
            if let Some(msgs) = body.get("messages").and_then(Value::as_array) {
                f.turns = msgs.len();
                for m in msgs {
                    if let Some(c) = m.get("content") {
                        f.content(c);
                    }
                }
            }
            f.has_tools = non_empty_array(body, "tools");
            if let Some(n) = limit("max_tokens") {
                f.max_output_tokens = n;
                f.requested_output_limit = true;
            }
        }
        ClientApi::Embeddings => {
            match body.get("input") {
                Some(Value::String(s)) => f.push(s),
                Some(Value::Array(items)) => {
                    for i in items {
                        if let Some(s) = i.as_str() {
                            f.push(s);
                        }
                    }
                }
                _ => {}
            }
            f.turns = 1;
            f.max_output_tokens = 0;
            f.requested_output_limit = true;
        }
        ClientApi::Models => {}
    }
    if !f.requested_output_limit {
        f.max_output_tokens = DEFAULT_OUTPUT_TOKENS;
    }
    f
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn each_api_table() {
        let cases = [
            (
                ClientApi::ChatCompletions,
                json!({"model": "m", "messages": [{"role": "system", "content": "Be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:x"}}]}],
                    "tools": [{"type": "function", "function": {"name": "f"}}],
                    "response_format": {"type": "json_object"}, "max_tokens": 50}),
                ("Be brief\nWhat is this?", 2, true, true, true, 50),
            ),
            (
                ClientApi::Responses,
                json!({"model": "auto:balance", "instructions": "Sys", "input": [{"role": "user",
                    "content": [{"type": "input_text", "text": "Summarize"},
                    {"type": "input_image", "image_url": "x"}]}]}),
                (
                    "Sys\nSummarize",
                    1,
                    false,
                    true,
                    false,
                    DEFAULT_OUTPUT_TOKENS,
                ),
            ),
            (
                ClientApi::Responses,
                json!({"model": "m", "input": "Hello!", "max_output_tokens": 1000,
                    "text": {"format": {"type": "json_schema"}}}),
                ("Hello!", 1, false, false, true, 1000),
            ),
            (
                ClientApi::Messages,
                json!({"model": "m", "system": [{"type": "text", "text": "S"}], "max_tokens": 9,
                    "messages": [{"role": "user", "content": [{"type": "tool_result",
                    "content": "42"}, {"type": "image", "source": {}}]}],
                    "tools": [{"name": "f"}]}),
                ("S\n42", 1, true, true, false, 9),
            ),
            (
                ClientApi::Embeddings,
                json!({"model": "m", "input": ["a", "b"]}),
                ("a\nb", 1, false, false, false, 0),
            ),
        ];
        for (api, body, (text, turns, tools, images, json_mode, max_out)) in cases {
            let f = features(api, &obj(body), 400);
            assert_eq!(
                (
                    f.text.as_str(),
                    f.turns,
                    f.has_tools,
                    f.has_images,
                    f.json_mode,
                    f.max_output_tokens
                ),
                (text, turns, tools, images, json_mode, max_out),
                "{api:?}"
            );
            assert_eq!(f.est_input_tokens, 100);
        }
    }

    #[test]
    fn prompt_text_is_bounded_on_a_char_boundary() {
        let long = "é".repeat(MAX_PROMPT_BYTES);
        let f = features(
            ClientApi::Responses,
            &obj(json!({"model": "m", "input": long})),
            10,
        );
        assert!(f.text.len() <= MAX_PROMPT_BYTES);
        assert!(f.text.chars().all(|c| c == 'é'));
    }
}
