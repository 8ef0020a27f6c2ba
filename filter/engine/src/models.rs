//! The `GET /v1/models` reply: the catalogue in OpenAI's list shape
//! (`{"object":"list","data":[{"id","object":"model","created","owned_by",…}]}`), each entry
//! extended with its pricing, context window, capabilities, quality, tier and status.

use serde_json::{json, Value};

use crate::money::format_micros_usd;
use crate::request::ClientApi;
use crate::snapshot::{ModelEntry, Snapshot};
use crate::upstream::ProviderKind;

/// The client APIs a model can be used with: embedding models serve embeddings (on kinds that
/// have them), every other model the three chat APIs (translated for every kind).
pub fn client_apis(model: &ModelEntry) -> Vec<ClientApi> {
    if model.embeddings {
        let serves = crate::translate::check_pairing(ClientApi::Embeddings, model.kind).is_ok();
        return if serves {
            vec![ClientApi::Embeddings]
        } else {
            Vec::new()
        };
    }
    vec![
        ClientApi::ChatCompletions,
        ClientApi::Responses,
        ClientApi::Messages,
    ]
}

/// What a model offers, as listed in `capabilities`: the client APIs it serves, then the
/// catalogue's capability flags that hold (`tools`, `vision`, `json_mode`, `streaming`,
/// `embeddings`; `embeddings` is both an API and a flag and is listed once).
pub fn capabilities(model: &ModelEntry) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = client_apis(model).iter().map(|a| a.as_str()).collect();
    let flags = [
        (model.tools, "tools"),
        (model.vision, "vision"),
        (model.json_mode, "json_mode"),
        (model.streaming, "streaming"),
        (model.embeddings, "embeddings"),
    ];
    for (on, name) in flags {
        if on && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// The JSON body of `GET /v1/models`. `id` is `<kind>/<model>`, which `model` always resolves;
/// `available` says whether an enabled provider serves it now. Sorted by kind, then id.
pub fn list_json(snapshot: &Snapshot) -> Vec<u8> {
    let mut models: Vec<&ModelEntry> = snapshot.models().collect();
    let kind_order = |k: ProviderKind| ProviderKind::ALL.iter().position(|&x| x == k);
    models.sort_by(|a, b| (kind_order(a.kind), &a.id).cmp(&(kind_order(b.kind), &b.id)));
    let data: Vec<Value> = models
        .into_iter()
        .map(|m| {
            let providers: Vec<&str> = snapshot
                .providers_of_kind(m.kind)
                .map(|p| p.name.as_str())
                .collect();
            let cached = if m.price.cached_input == 0 {
                m.price.input
            } else {
                m.price.cached_input
            };
            json!({
                "id": format!("{}/{}", m.kind, m.id),
                "object": "model",
                "created": 0,
                "owned_by": m.kind.as_str(),
                "model": m.id,
                "provider_kind": m.kind.as_str(),
                "providers": providers,
                "display_name": if m.display_name.is_empty() { &m.id } else { &m.display_name },
                "context_window": m.context_window,
                "max_output_tokens": m.max_output_tokens,
                "pricing": {
                    "input_usd_per_mtok": format_micros_usd(m.price.input),
                    "output_usd_per_mtok": format_micros_usd(m.price.output),
                    "cached_input_usd_per_mtok": format_micros_usd(cached),
                    "source": m.price_source,
                    "as_of": m.price_as_of,
                },
                "capabilities": capabilities(m),
                "quality": m.quality,
                "tier": m.tier.map(|t| t.as_str()),
                "enabled": m.enabled,
                "available": m.enabled && !providers.is_empty(),
            })
        })
        .collect();
    json!({"object": "list", "data": data})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::snapshot::tests::sample;

    #[test]
    fn list_has_openai_shape_with_pricing_and_status() {
        let s = Snapshot::from_proto(sample()).unwrap();
        let v: Value = serde_json::from_slice(&list_json(&s)).unwrap();
        assert_eq!(v["object"], "list");
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), s.models().count());
        let mini = data
            .iter()
            .find(|m| m["id"] == "openai/gpt-4o-mini")
            .unwrap();
        assert_eq!(mini["object"], "model");
        assert_eq!(mini["owned_by"], "openai");
        assert_eq!(mini["pricing"]["input_usd_per_mtok"], "0.15");
        assert_eq!(mini["enabled"], true);
        assert_eq!(mini["available"], true);
        assert_eq!(
            mini["capabilities"],
            json!([
                "chat.completions",
                "responses",
                "messages",
                "tools",
                "vision",
                "json_mode",
                "streaming"
            ])
        );
        assert_eq!(mini["context_window"], 128_000);
        assert_eq!(mini["quality"], 62);
        assert_eq!(mini["tier"], "medium");
        assert!(mini["max_output_tokens"].as_u64().unwrap() > 0);
        assert!(mini["pricing"]["source"]
            .as_str()
            .unwrap()
            .starts_with("https://"));
        assert!(!mini["pricing"]["as_of"].as_str().unwrap().is_empty());
        assert!(!mini["display_name"].as_str().unwrap().is_empty());
        assert_eq!(mini["pricing"]["cached_input_usd_per_mtok"], "0.075");
        let reasoner = data
            .iter()
            .find(|m| m["id"] == "deepseek/deepseek-reasoner")
            .unwrap();
        assert_eq!(
            reasoner["capabilities"],
            json!(["chat.completions", "responses", "messages", "streaming"])
        );
        assert_eq!(reasoner["tier"], "reasoning");
        let embedding = data
            .iter()
            .find(|m| m["id"] == "openai/text-embedding-3-small")
            .unwrap();
        assert_eq!(embedding["capabilities"], json!(["embeddings"]));
        // Gemini serves embeddings through its own API (translated).
        let gecko = data
            .iter()
            .find(|m| m["id"] == "gemini/text-embedding-004")
            .unwrap();
        assert_eq!(gecko["capabilities"], json!(["embeddings"]));
        // Catalogued, but no anthropic provider is registered in the sample.
        let claude = data
            .iter()
            .find(|m| m["provider_kind"] == "anthropic")
            .unwrap();
        assert_eq!(claude["available"], false);
        let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
        let mut sorted = ids.clone();
        sorted.sort_by_key(|id| {
            let kind = id.split('/').next().unwrap();
            (
                ProviderKind::ALL.iter().position(|k| k.as_str() == kind),
                *id,
            )
        });
        assert_eq!(ids, sorted);
    }
}
