//! Admin model catalogue RPCs: wire ↔ domain conversion only (the service validates).

use tokenrouter_engine::money::format_micros_usd;
use tokenrouter_proto::admin::v1 as api;
use tokenrouter_proto::config::v1 as pb;
use tonic::{Response, Status};

use super::status;
use crate::service::{ModelPatch, NewModel, Service};
use crate::store::ModelRow;

pub fn model_info(row: ModelRow) -> api::ModelInfo {
    let m = row.model;
    api::ModelInfo {
        input_usd_per_mtok: format_micros_usd(m.input_price_micros_per_mtok),
        output_usd_per_mtok: format_micros_usd(m.output_price_micros_per_mtok),
        cached_input_usd_per_mtok: format_micros_usd(m.cached_input_price_micros_per_mtok),
        id: m.id,
        provider_kind: m.provider_kind,
        upstream_model: m.upstream_model,
        input_price_micros_per_mtok: m.input_price_micros_per_mtok,
        output_price_micros_per_mtok: m.output_price_micros_per_mtok,
        cached_input_price_micros_per_mtok: m.cached_input_price_micros_per_mtok,
        context_window: m.context_window,
        enabled: m.enabled,
        tools: m.tools,
        vision: m.vision,
        json_mode: m.json_mode,
        streaming: m.streaming,
        embeddings: m.embeddings,
        quality: m.quality,
        tier: m.tier,
        max_output_tokens: m.max_output_tokens,
        price_source: m.price_source,
        price_as_of: m.price_as_of,
        display_name: m.display_name,
        updated_at_unix_ms: row.updated_at_ms,
    }
}

fn new_model(m: api::ModelInfo) -> NewModel {
    NewModel {
        model: pb::Model {
            id: m.id,
            provider_kind: m.provider_kind,
            upstream_model: m.upstream_model,
            input_price_micros_per_mtok: m.input_price_micros_per_mtok,
            output_price_micros_per_mtok: m.output_price_micros_per_mtok,
            cached_input_price_micros_per_mtok: m.cached_input_price_micros_per_mtok,
            context_window: m.context_window,
            enabled: m.enabled,
            tools: m.tools,
            vision: m.vision,
            json_mode: m.json_mode,
            streaming: m.streaming,
            embeddings: m.embeddings,
            quality: m.quality,
            tier: m.tier,
            max_output_tokens: m.max_output_tokens,
            price_source: m.price_source,
            price_as_of: m.price_as_of,
            display_name: m.display_name,
        },
        input_usd_per_mtok: m.input_usd_per_mtok,
        output_usd_per_mtok: m.output_usd_per_mtok,
        cached_input_usd_per_mtok: m.cached_input_usd_per_mtok,
    }
}

type Reply<T> = Result<Response<T>, Status>;

pub async fn list(service: &Service) -> Reply<api::ListModelsResponse> {
    let models = service.list_models().await.map_err(status)?;
    Ok(Response::new(api::ListModelsResponse {
        models: models.into_iter().map(model_info).collect(),
    }))
}

pub async fn upsert(service: &Service, r: api::UpsertModelRequest) -> Reply<api::ModelInfo> {
    let model = r
        .model
        .ok_or_else(|| Status::invalid_argument("model is required"))?;
    let row = service
        .upsert_model(new_model(model))
        .await
        .map_err(status)?;
    tracing::info!(kind = %row.model.provider_kind, id = %row.model.id, "model saved");
    Ok(Response::new(model_info(row)))
}

pub async fn update(service: &Service, r: api::UpdateModelRequest) -> Reply<api::ModelInfo> {
    let patch = ModelPatch {
        enabled: r.enabled,
        input_usd_per_mtok: r.input_usd_per_mtok,
        output_usd_per_mtok: r.output_usd_per_mtok,
        cached_input_usd_per_mtok: r.cached_input_usd_per_mtok,
        context_window: r.context_window,
        quality: r.quality,
        tier: r.tier,
        price_source: r.price_source,
        price_as_of: r.price_as_of,
    };
    let row = service
        .update_model(&r.provider_kind, &r.id, patch)
        .await
        .map_err(status)?;
    tracing::info!(kind = %row.model.provider_kind, id = %row.model.id, "model updated");
    Ok(Response::new(model_info(row)))
}
