//! The built-in model catalogue, seeded into the control plane's store on first start.
//! Prices are kept as decimal strings in the JSON and become exact integers here.

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
                quality: e.quality.min(100),
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

    #[test]
    fn bad_price_is_refused() {
        let json = r#"[{"id":"x","provider_kind":"openai","input_usd_per_mtok":"abc",
            "output_usd_per_mtok":"1","cached_input_usd_per_mtok":"1","context_window":1,
            "source":"s","as_of":"d"}]"#;
        assert!(parse(json).is_err());
    }
}
