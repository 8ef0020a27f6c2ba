//! The built-in model catalogue. The control plane inserts every entry its store lacks on each
//! start (an existing row is never overwritten: an operator's edits win). Prices are kept as
//! decimal strings in the JSON and become exact integers here.
//!
//! # Fields beyond prices
//! - **Capabilities** (`tools`, `vision`, `json_mode`, `streaming`, `embeddings`) are what the
//!   provider documents for the model. `json_mode` means the model reliably answers in JSON when
//!   asked through the API (OpenAI `response_format`, Gemini `responseMimeType`); for Anthropic
//!   models, which have no such parameter, the gateway turns the request's JSON mode into a
//!   system instruction, which they follow. Embedding models never stream.
//! - **`max_output_tokens`**: the provider's documented output limit; where a provider documents
//!   none separately (Mistral, Together) it is the context window. 0 for embedding models.
//! - **`quality`** (0–100, higher is better) is a relative index for ranking models against each
//!   other, not a benchmark score: the model's approximate standing on public leaderboards
//!   (LMArena text arena and the Artificial Analysis Intelligence Index, read in 2025-10),
//!   placed in bands — 90–100 the current frontier, 80–89 frontier-class reasoning and
//!   general models, 65–79 strong flagship models of the previous generation, 50–64 small fast
//!   models, below 50 legacy small models; 0 for the `echo` demo. Embedding models are ranked
//!   only against each other, by their published MTEB average (e.g. 62.3 → 62).
//! - **`tier`**: the hardest prompt tier the model is fit for (validated with the rest of the
//!   model by `snapshot::model_entry`). `simple`: lookups, formatting, classification, short
//!   answers; `medium`: everyday writing, summaries, routine code; `complex`: multi-step
//!   analysis, long documents, non-trivial code; `reasoning`: maths,
//!   proofs and hard planning — models that think before answering (o-series, DeepSeek R1) and
//!   the frontier model with the leading reasoning scores (Claude Sonnet 4.5). Models with
//!   opt-in extended thinking but a lower standing stay `complex` (Claude 3.7 Sonnet, Claude
//!   Sonnet 4), as does Claude 3 Opus, which now ranks below GPT-4o. Embedding models are
//!   `simple`.
//! - **`source`/`as_of`**: the pricing page the prices were read from, and when.

use serde::Deserialize;
use tokenrouter_proto::config::v1::Model;

/// The catalogue as shipped, JSON.
pub const BUILTIN_JSON: &str = include_str!("../catalogue.json");

#[derive(Deserialize)]
struct Entry {
    id: String,
    provider_kind: String,
    #[serde(default)]
    upstream_model: Option<String>,
    input_usd_per_mtok: String,
    output_usd_per_mtok: String,
    cached_input_usd_per_mtok: String,
    context_window: u32,
    #[serde(default)]
    max_output_tokens: u32,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    tools: bool,
    #[serde(default)]
    vision: bool,
    #[serde(default)]
    json_mode: bool,
    #[serde(default = "yes")]
    streaming: bool,
    #[serde(default)]
    embeddings: bool,
    /// 0–100.
    #[serde(default)]
    quality: u32,
    /// simple | medium | complex | reasoning.
    #[serde(default)]
    tier: String,
    source: String,
    as_of: String,
}

fn yes() -> bool {
    true
}

/// Why a catalogue could not be read.
#[derive(Debug, PartialEq, Eq)]
pub struct CatalogueError(pub String);

impl std::fmt::Display for CatalogueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CatalogueError {}

/// Parses a catalogue in the shipped JSON format.
pub fn parse(json: &str) -> Result<Vec<Model>, CatalogueError> {
    let entries: Vec<Entry> =
        serde_json::from_str(json).map_err(|e| CatalogueError(format!("catalogue JSON: {e}")))?;
    entries
        .into_iter()
        .map(|e| {
            if e.quality > 100 {
                return Err(CatalogueError(format!(
                    "{}: quality {} is above 100",
                    e.id, e.quality
                )));
            }
            let price = |field: &str, s: &str| {
                crate::money::parse_usd_to_micros(s)
                    .ok_or_else(|| CatalogueError(format!("{}: bad {field} {s:?}", e.id)))
            };
            Ok(Model {
                upstream_model: e.upstream_model.clone().unwrap_or_else(|| e.id.clone()),
                input_price_micros_per_mtok: price("input price", &e.input_usd_per_mtok)?,
                output_price_micros_per_mtok: price("output price", &e.output_usd_per_mtok)?,
                cached_input_price_micros_per_mtok: price(
                    "cached input price",
                    &e.cached_input_usd_per_mtok,
                )?,
                context_window: e.context_window,
                enabled: true,
                tools: e.tools,
                vision: e.vision,
                json_mode: e.json_mode,
                streaming: e.streaming && !e.embeddings,
                embeddings: e.embeddings,
                quality: e.quality,
                tier: e.tier.clone(),
                max_output_tokens: e.max_output_tokens,
                price_source: e.source.clone(),
                price_as_of: e.as_of.clone(),
                display_name: e.display_name.clone(),
                id: e.id,
                provider_kind: e.provider_kind,
            })
        })
        .collect()
}

/// The built-in catalogue.
pub fn builtin() -> Result<Vec<Model>, CatalogueError> {
    parse(BUILTIN_JSON)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn builtin_parses_with_exact_prices() {
        let models = builtin().unwrap();
        let mini = models.iter().find(|m| m.id == "gpt-4o-mini").unwrap();
        assert_eq!(mini.provider_kind, "openai");
        assert_eq!(mini.input_price_micros_per_mtok, 150_000);
        assert_eq!(mini.output_price_micros_per_mtok, 600_000);
        assert_eq!(mini.cached_input_price_micros_per_mtok, 75_000);
        let kinds: std::collections::HashSet<_> =
            models.iter().map(|m| m.provider_kind.as_str()).collect();
        for k in ["openai", "anthropic", "gemini", "mistral", "deepseek"] {
            assert!(kinds.contains(k), "{k} missing");
        }
    }

    #[test]
    fn ids_are_unique_per_kind() {
        let models = builtin().unwrap();
        let mut seen = std::collections::HashSet::new();
        for m in &models {
            assert!(
                seen.insert((m.provider_kind.clone(), m.id.clone())),
                "{}",
                m.id
            );
        }
    }

    /// Every entry states everything the routing modes and `GET /v1/models` show.
    #[test]
    fn every_builtin_entry_is_complete() {
        let models = builtin().unwrap();
        for m in &models {
            let id = format!("{}/{}", m.provider_kind, m.id);
            assert!(!m.display_name.is_empty(), "{id}: display_name");
            let entry = crate::snapshot::model_entry(m.clone()).unwrap();
            assert!(entry.tier.is_some(), "{id}: tier {:?}", m.tier);
            assert!(m.context_window > 0, "{id}: context_window");
            assert!(
                m.price_source.starts_with("https://") || m.id == "echo",
                "{id}: source {:?}",
                m.price_source
            );
            assert_eq!(m.price_as_of.len(), 10, "{id}: as_of {:?}", m.price_as_of);
            if m.embeddings {
                assert!(!m.streaming && !m.tools && m.max_output_tokens == 0, "{id}");
            } else {
                assert!(m.streaming, "{id}: streaming");
                assert!(
                    m.max_output_tokens > 0 && m.max_output_tokens <= m.context_window,
                    "{id}: max_output_tokens"
                );
                assert!(m.quality > 0 || m.id == "echo", "{id}: quality");
            }
        }
        // Every model the seeds name.
        let want = [
            ("openai", "gpt-4o", "complex"),
            ("openai", "gpt-4o-mini", "medium"),
            ("openai", "gpt-4-turbo", "complex"),
            ("openai", "gpt-3.5-turbo", "simple"),
            ("openai", "o1", "reasoning"),
            ("openai", "o3-mini", "reasoning"),
            ("anthropic", "claude-3-7-sonnet-latest", "complex"),
            ("anthropic", "claude-sonnet-4-5", "reasoning"),
            ("anthropic", "claude-haiku-4-5", "medium"),
            ("anthropic", "claude-3-opus-latest", "complex"),
            ("anthropic", "claude-3-haiku-20240307", "simple"),
            ("anthropic", "claude-sonnet-4-20250514", "complex"),
            ("gemini", "gemini-1.5-pro", "complex"),
            ("gemini", "gemini-1.5-flash", "medium"),
            ("gemini", "gemini-2.0-flash", "medium"),
            ("mistral", "mistral-large-latest", "complex"),
            ("mistral", "mistral-medium-latest", "medium"),
            ("deepseek", "deepseek-chat", "medium"),
            ("deepseek", "deepseek-reasoner", "reasoning"),
            (
                "openai-compatible",
                "meta-llama/Llama-4-Scout-17B-16E-Instruct",
                "medium",
            ),
            (
                "openai-compatible",
                "meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8",
                "complex",
            ),
            ("openai-compatible", "echo", "simple"),
        ];
        for (kind, id, tier) in want {
            let m = models
                .iter()
                .find(|m| m.provider_kind == kind && m.id == id)
                .unwrap_or_else(|| panic!("{kind}/{id} missing"));
            assert_eq!(m.tier, tier, "{kind}/{id}");
        }
        let embeddings: Vec<&str> = models
            .iter()
            .filter(|m| m.embeddings)
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(
            embeddings,
            [
                "text-embedding-3-small",
                "text-embedding-3-large",
                "text-embedding-004"
            ]
        );
    }

    #[test]
    fn quality_above_100_is_refused() {
        let entry = |extra: &str| {
            format!(
                r#"[{{"id":"x","provider_kind":"openai","input_usd_per_mtok":"1",
                "output_usd_per_mtok":"1","cached_input_usd_per_mtok":"1","context_window":1,
                "source":"s","as_of":"d"{extra}}}]"#
            )
        };
        assert!(parse(&entry("")).is_ok(), "tier and quality are optional");
        assert!(parse(&entry(r#","quality":100"#)).is_ok());
        assert!(parse(&entry(r#","quality":101"#))
            .unwrap_err()
            .0
            .contains("above 100"));
    }

    #[test]
    fn bad_price_is_refused() {
        let json = r#"[{"id":"x","provider_kind":"openai","input_usd_per_mtok":"abc",
            "output_usd_per_mtok":"1","cached_input_usd_per_mtok":"1","context_window":1,
            "source":"s","as_of":"d"}]"#;
        assert!(parse(json).is_err());
    }
}
