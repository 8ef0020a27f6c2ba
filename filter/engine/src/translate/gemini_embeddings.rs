//! OpenAI Embeddings (`POST /v1/embeddings`) → Gemini `batchEmbedContents`, and its reply back
//! to OpenAI's `{"object":"list","data":[{"object":"embedding","index","embedding"}],…}`.
//!
//! Gemini's embedding reply carries no token counts, so `usage` is reported as zero tokens and
//! the request log shows no cost for it; nothing is estimated.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::ClientError;
use super::{
    error_headers, path_segment, AttemptInfo, AttemptTarget, BodyBuffer, ResponseHeaderMutation,
    Translator, UpstreamRequest, MAX_RESPONSE_BODY_BYTES,
};
use crate::error::GatewayError;
use crate::request::ClientApi;
use crate::usage::ChunkOutput;

/// Most inputs one request may embed (Gemini's batch limit).
pub const MAX_INPUTS: usize = 100;

#[derive(Deserialize)]
struct OpenAiEmbeddingsRequest {
    input: Input,
    #[serde(default)]
    dimensions: Option<u32>,
    #[serde(default)]
    encoding_format: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<Value>),
}

#[derive(Deserialize)]
struct BatchEmbedReply {
    #[serde(default)]
    embeddings: Vec<GeminiEmbedding>,
}

#[derive(Deserialize)]
struct GeminiEmbedding {
    #[serde(default)]
    values: Vec<f64>,
}

/// The texts to embed; token-id inputs have no Gemini equivalent.
fn texts(input: Input) -> Result<Vec<String>, GatewayError> {
    let texts = match input {
        Input::One(s) => vec![s],
        Input::Many(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(GatewayError::invalid(
                    "This provider embeds text only: 'input' must be a string or an array of strings.",
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    if texts.is_empty() {
        return Err(GatewayError::invalid("'input' must not be empty."));
    }
    if texts.len() > MAX_INPUTS {
        return Err(GatewayError::invalid(format!(
            "'input' has {} entries; this provider embeds at most {MAX_INPUTS} per request.",
            texts.len()
        )));
    }
    Ok(texts)
}

/// Translator for (Embeddings, Gemini).
#[derive(Default)]
pub struct GeminiEmbeddings {
    info: AttemptInfo,
    /// The client asked for `encoding_format: "base64"` (little-endian f32s, as OpenAI sends).
    base64: bool,
    status: u16,
    body: BodyBuffer,
}

impl Translator for GeminiEmbeddings {
    fn request(
        &mut self,
        client_body: &[u8],
        target: &AttemptTarget<'_>,
    ) -> Result<UpstreamRequest, GatewayError> {
        self.info = AttemptInfo::from(target);
        let req: OpenAiEmbeddingsRequest = serde_json::from_slice(client_body)
            .map_err(|e| GatewayError::invalid(format!("Invalid embeddings request: {e}.")))?;
        self.base64 = match req.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(GatewayError::invalid(format!(
                    "'encoding_format' must be 'float' or 'base64', not '{other}'."
                )))
            }
        };
        let model = path_segment(target.upstream_model)?;
        let requests: Vec<Value> = texts(req.input)?
            .into_iter()
            .map(|text| {
                let mut r = json!({
                    "model": format!("models/{model}"),
                    "content": {"parts": [{"text": text}]},
                });
                if let (Some(d), Some(obj)) = (req.dimensions, r.as_object_mut()) {
                    obj.insert("outputDimensionality".into(), json!(d));
                }
                r
            })
            .collect();
        Ok(UpstreamRequest {
            path: format!(
                "{}/models/{model}:batchEmbedContents",
                super::gemini::api_prefix(target.base_url)
            ),
            body: Some(serde_json::to_vec(&json!({ "requests": requests })).unwrap_or_default()),
            ..UpstreamRequest::default()
        })
    }

    fn response_headers(
        &mut self,
        status: u16,
        _content_type: Option<&str>,
    ) -> ResponseHeaderMutation {
        self.status = status;
        error_headers()
    }

    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkOutput {
        self.body.push(chunk, MAX_RESPONSE_BODY_BYTES);
        if !end_of_stream {
            return ChunkOutput::Replace(Vec::new());
        }
        let provider = &self.info.provider;
        let error = |e: ClientError| {
            ChunkOutput::Replace(e.body(ClientApi::Embeddings, &self.info.request_id))
        };
        if !(200..300).contains(&self.status) {
            return error(ClientError::from_provider(
                provider,
                self.status,
                &self.body.bytes,
            ));
        }
        if self.body.overflowed {
            return error(ClientError::provider_failure(
                provider,
                "The provider's embeddings reply is larger than the gateway accepts.",
            ));
        }
        let reply: BatchEmbedReply = match serde_json::from_slice(&self.body.bytes) {
            Ok(r) => r,
            Err(e) => {
                return error(ClientError::provider_failure(
                    provider,
                    format!("The provider's embeddings reply is not valid JSON: {e}."),
                ))
            }
        };
        let data: Vec<Value> = reply
            .embeddings
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let embedding = if self.base64 {
                    let bytes: Vec<u8> = e
                        .values
                        .iter()
                        .flat_map(|v| (*v as f32).to_le_bytes())
                        .collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(e.values)
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        let out = json!({
            "object": "list",
            "data": data,
            "model": self.info.model,
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        });
        ChunkOutput::Replace(serde_json::to_vec(&out).unwrap_or_default())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::translate::translator_for;
    use crate::upstream::{BaseUrl, ProviderKind};

    fn target(base: &BaseUrl) -> AttemptTarget<'_> {
        AttemptTarget {
            provider: "gem",
            kind: ProviderKind::Gemini,
            base_url: base,
            upstream_model: "text-embedding-004",
            stream: false,
            request_id: "req_1",
            now_unix_s: 0,
        }
    }

    #[test]
    fn request_becomes_batch_embed_contents() {
        let base = BaseUrl::parse("https://generativelanguage.googleapis.com").unwrap();
        let mut t = translator_for(ClientApi::Embeddings, ProviderKind::Gemini).unwrap();
        let req = t
            .request(
                br#"{"model":"text-embedding-004","input":["a b","c"],"dimensions":8}"#,
                &target(&base),
            )
            .unwrap();
        assert_eq!(
            req.path,
            "/v1beta/models/text-embedding-004:batchEmbedContents"
        );
        let body: Value = serde_json::from_slice(&req.body.unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"requests": [
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a b"}]}, "outputDimensionality": 8},
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "c"}]}, "outputDimensionality": 8},
            ]})
        );
    }

    #[test]
    fn bad_inputs_are_400() {
        let base = BaseUrl::parse("http://h").unwrap();
        let many = format!(
            r#"{{"input":[{}]}}"#,
            vec!["\"x\""; MAX_INPUTS + 1].join(",")
        );
        let cases: [&[u8]; 5] = [
            br#"{"input":[1,2,3]}"#,
            br#"{"input":[]}"#,
            br#"{"input":"x","encoding_format":"hex"}"#,
            br#"{"nope":1}"#,
            many.as_bytes(),
        ];
        for body in cases {
            let mut t = GeminiEmbeddings::default();
            let e = t.request(body, &target(&base)).unwrap_err();
            assert_eq!(e.status(), 400, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn reply_is_openai_list_in_order_at_any_chunk_size() {
        let base = BaseUrl::parse("http://h").unwrap();
        let reply = br#"{"embeddings":[{"values":[0.5,-1]},{"values":[2]}]}"#;
        for size in [1, 7, reply.len()] {
            let mut t = GeminiEmbeddings::default();
            t.request(br#"{"input":["a","b"]}"#, &target(&base))
                .unwrap();
            t.response_headers(200, Some("application/json"));
            let mut out = Vec::new();
            let chunks: Vec<&[u8]> = reply.chunks(size).collect();
            for (i, c) in chunks.iter().enumerate() {
                if let ChunkOutput::Replace(b) = t.response_body(c, i + 1 == chunks.len()) {
                    out.extend(b);
                }
            }
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["object"], "list");
            assert_eq!(v["data"][0]["embedding"], json!([0.5, -1.0]));
            assert_eq!(v["data"][1]["index"], 1);
            assert_eq!(v["model"], "text-embedding-004");
        }
    }

    #[test]
    fn base64_encoding_is_little_endian_f32() {
        let base = BaseUrl::parse("http://h").unwrap();
        let mut t = GeminiEmbeddings::default();
        t.request(
            br#"{"input":"a","encoding_format":"base64"}"#,
            &target(&base),
        )
        .unwrap();
        t.response_headers(200, None);
        let ChunkOutput::Replace(out) =
            t.response_body(br#"{"embeddings":[{"values":[1.0,-2.5]}]}"#, true)
        else {
            panic!("replies are re-shaped")
        };
        let v: Value = serde_json::from_slice(&out).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(floats, [1.0, -2.5]);
    }

    #[test]
    fn provider_error_keeps_status_and_raw() {
        let base = BaseUrl::parse("http://h").unwrap();
        let mut t = GeminiEmbeddings::default();
        t.request(br#"{"input":"a"}"#, &target(&base)).unwrap();
        t.response_headers(400, Some("application/json"));
        let out = match t.response_body(
            br#"{"error":{"code":400,"message":"bad model","status":"INVALID_ARGUMENT"}}"#,
            true,
        ) {
            ChunkOutput::Replace(b) => b,
            ChunkOutput::Unchanged => panic!("errors are re-shaped"),
        };
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["http_status"], 400);
        assert_eq!(v["error"]["provider"], "gem");
        assert_eq!(v["error"]["raw"]["error"]["status"], "INVALID_ARGUMENT");
    }
}
