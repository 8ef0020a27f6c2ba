//! `tokenrouter models`.

use serde::Serialize;
use tokenrouter_engine::money::format_micros_usd;
use tokenrouter_proto::admin::v1 as api;

use super::output::{table, Output};
use super::{client, CliError, Globals};

#[derive(Debug, Serialize)]
struct ModelJson {
    /// `<kind>/<id>`.
    id: String,
    provider_kind: String,
    upstream_model: String,
    input_price_micros_per_mtok: i64,
    output_price_micros_per_mtok: i64,
    cached_input_price_micros_per_mtok: i64,
    context_window: u32,
    enabled: bool,
}

impl From<api::ModelInfo> for ModelJson {
    fn from(m: api::ModelInfo) -> ModelJson {
        ModelJson {
            id: format!("{}/{}", m.provider_kind, m.id),
            provider_kind: m.provider_kind,
            upstream_model: m.upstream_model,
            input_price_micros_per_mtok: m.input_price_micros_per_mtok,
            output_price_micros_per_mtok: m.output_price_micros_per_mtok,
            cached_input_price_micros_per_mtok: m.cached_input_price_micros_per_mtok,
            context_window: m.context_window,
            enabled: m.enabled,
        }
    }
}

pub async fn run(g: &Globals, out: &Output) -> Result<(), CliError> {
    let mut admin = client::connect(g).await?;
    let models: Vec<ModelJson> = admin
        .list_models(api::ListModelsRequest {})
        .await?
        .into_inner()
        .models
        .into_iter()
        .map(ModelJson::from)
        .collect();
    out.print(&models, || {
        let usd = |m: i64| format!("${}", format_micros_usd(m));
        let rows: Vec<Vec<String>> = models
            .iter()
            .map(|m| {
                vec![
                    m.id.clone(),
                    usd(m.input_price_micros_per_mtok),
                    usd(m.output_price_micros_per_mtok),
                    usd(m.cached_input_price_micros_per_mtok),
                    m.context_window.to_string(),
                    if m.enabled { "yes" } else { "no" }.into(),
                ]
            })
            .collect();
        table(
            &[
                "MODEL",
                "INPUT/1M",
                "OUTPUT/1M",
                "CACHED/1M",
                "CONTEXT",
                "ENABLED",
            ],
            &rows,
        )
    })
}
