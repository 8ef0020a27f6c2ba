//! `tokenrouter models [list|update|add]`: the model catalogue.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use tokenrouter_proto::admin::v1 as api;

use super::output::{table, Output};
use super::{client, CliError, ErrorKind, Globals};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: Option<ModelsCommand>,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// List the catalogue (the default): context window, prices per million tokens,
    /// capabilities, quality, tier and status.
    List,
    /// Change a model; only the options given change.
    ///
    /// Example: tokenrouter models update openai/gpt-4o --input-price 2.50 --tier complex
    #[command(verbatim_doc_comment)]
    Update(UpdateArgs),
    /// Add a model, or replace the one with the same provider kind and id.
    ///
    /// Either `<kind>/<id>` with options, or --json-file with one model object or an array of
    /// them, in the shape `tokenrouter models --json` prints ("id": "<kind>/<id>", prices as
    /// decimal USD strings per million tokens, "tools", "vision", "json_mode", "streaming",
    /// "embeddings", "quality", "tier", …; "enabled" and "streaming" default to true).
    ///
    /// Example: tokenrouter models add openai-compatible/qwen3-32b --input-price 0.10
    ///   --output-price 0.30 --context-window 32768 --tools --tier medium --quality 60
    #[command(verbatim_doc_comment)]
    Add(AddArgs),
}

#[derive(Debug, Args)]
struct UpdateArgs {
    /// `<provider kind>/<model id>`, as `tokenrouter models` lists it.
    model: String,
    /// Serve the model again.
    #[arg(long, conflicts_with = "disable")]
    enable: bool,
    /// Stop serving the model (requests naming it get a 404).
    #[arg(long)]
    disable: bool,
    /// USD per million input tokens, e.g. 2.50.
    #[arg(long, value_name = "USD")]
    input_price: Option<String>,
    /// USD per million output tokens.
    #[arg(long, value_name = "USD")]
    output_price: Option<String>,
    /// USD per million cached input tokens (0 = same as input).
    #[arg(long, value_name = "USD")]
    cached_price: Option<String>,
    /// Relative quality 0–100 (auto modes rank by it).
    #[arg(long, value_name = "N")]
    quality: Option<u32>,
    /// Hardest prompt tier the model is fit for: simple, medium, complex or reasoning.
    #[arg(long)]
    tier: Option<String>,
    /// Largest number of tokens the model accepts.
    #[arg(long, value_name = "TOKENS")]
    context_window: Option<u32>,
    /// Where the prices come from (URL).
    #[arg(long, value_name = "URL")]
    price_source: Option<String>,
    /// When the prices were read (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    price_as_of: Option<String>,
}

#[derive(Debug, Args)]
struct AddArgs {
    /// `<provider kind>/<model id>`, e.g. openai-compatible/qwen3-32b.
    #[arg(required_unless_present = "json_file", conflicts_with = "json_file")]
    model: Option<String>,
    /// Read the model(s) from this JSON file instead of options.
    #[arg(long, value_name = "FILE")]
    json_file: Option<PathBuf>,
    /// Model name sent to the provider [default: the id].
    #[arg(long)]
    upstream_model: Option<String>,
    /// Human-readable name, e.g. "Qwen3 32B".
    #[arg(long)]
    display_name: Option<String>,
    /// USD per million input tokens.
    #[arg(long, value_name = "USD", default_value = "0")]
    input_price: String,
    /// USD per million output tokens.
    #[arg(long, value_name = "USD", default_value = "0")]
    output_price: String,
    /// USD per million cached input tokens (0 = same as input).
    #[arg(long, value_name = "USD", default_value = "0")]
    cached_price: String,
    #[arg(long, value_name = "TOKENS", default_value_t = 0)]
    context_window: u32,
    #[arg(long, value_name = "TOKENS", default_value_t = 0)]
    max_output_tokens: u32,
    /// Supports tool (function) calls.
    #[arg(long)]
    tools: bool,
    /// Accepts images.
    #[arg(long)]
    vision: bool,
    /// Answers in JSON when asked.
    #[arg(long)]
    json_mode: bool,
    /// Cannot stream its replies.
    #[arg(long)]
    no_streaming: bool,
    /// An embeddings model.
    #[arg(long)]
    embeddings: bool,
    /// Relative quality 0–100.
    #[arg(long, value_name = "N", default_value_t = 0)]
    quality: u32,
    /// simple, medium, complex or reasoning.
    #[arg(long, default_value = "")]
    tier: String,
    #[arg(long, value_name = "URL", default_value = "")]
    price_source: String,
    #[arg(long, value_name = "DATE", default_value = "")]
    price_as_of: String,
    /// Store the model disabled.
    #[arg(long)]
    disabled: bool,
}

fn yes() -> bool {
    true
}

/// One model as printed by `--json` and read by `models add --json-file`: the fields of
/// `admin.v1.ModelInfo`, with `id` = `<kind>/<model>` (as `GET /v1/models` names it) and the
/// bare id in `model`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelJson {
    /// `<kind>/<id>` (or the bare id when `provider_kind` is given).
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    provider_kind: String,
    #[serde(default)]
    upstream_model: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    input_usd_per_mtok: String,
    #[serde(default)]
    output_usd_per_mtok: String,
    #[serde(default)]
    cached_input_usd_per_mtok: String,
    #[serde(default)]
    input_price_micros_per_mtok: i64,
    #[serde(default)]
    output_price_micros_per_mtok: i64,
    #[serde(default)]
    cached_input_price_micros_per_mtok: i64,
    #[serde(default)]
    context_window: u32,
    #[serde(default)]
    max_output_tokens: u32,
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
    #[serde(default)]
    quality: u32,
    #[serde(default)]
    tier: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    price_source: String,
    #[serde(default)]
    price_as_of: String,
    #[serde(default)]
    updated_at_unix_ms: i64,
}

impl From<api::ModelInfo> for ModelJson {
    fn from(m: api::ModelInfo) -> ModelJson {
        ModelJson {
            id: format!("{}/{}", m.provider_kind, m.id),
            model: m.id,
            provider_kind: m.provider_kind,
            upstream_model: m.upstream_model,
            display_name: m.display_name,
            input_usd_per_mtok: m.input_usd_per_mtok,
            output_usd_per_mtok: m.output_usd_per_mtok,
            cached_input_usd_per_mtok: m.cached_input_usd_per_mtok,
            input_price_micros_per_mtok: m.input_price_micros_per_mtok,
            output_price_micros_per_mtok: m.output_price_micros_per_mtok,
            cached_input_price_micros_per_mtok: m.cached_input_price_micros_per_mtok,
            context_window: m.context_window,
            max_output_tokens: m.max_output_tokens,
            tools: m.tools,
            vision: m.vision,
            json_mode: m.json_mode,
            streaming: m.streaming,
            embeddings: m.embeddings,
            quality: m.quality,
            tier: m.tier,
            enabled: m.enabled,
            price_source: m.price_source,
            price_as_of: m.price_as_of,
            updated_at_unix_ms: m.updated_at_unix_ms,
        }
    }
}

impl ModelJson {
    /// The request form: `(kind, id)` from `model`/`provider_kind`, else from `id`.
    fn into_info(self) -> Result<api::ModelInfo, CliError> {
        let (kind, id) = match (self.provider_kind.is_empty(), self.model.is_empty()) {
            (false, false) => (self.provider_kind, self.model),
            (false, true) => {
                let prefix = format!("{}/", self.provider_kind);
                let id = self
                    .id
                    .strip_prefix(&prefix)
                    .unwrap_or(&self.id)
                    .to_string();
                (self.provider_kind, id)
            }
            (true, _) => {
                let (kind, id) = split_model(&self.id)?;
                (kind.to_string(), id.to_string())
            }
        };
        Ok(api::ModelInfo {
            id,
            provider_kind: kind,
            upstream_model: self.upstream_model,
            display_name: self.display_name,
            input_usd_per_mtok: self.input_usd_per_mtok,
            output_usd_per_mtok: self.output_usd_per_mtok,
            cached_input_usd_per_mtok: self.cached_input_usd_per_mtok,
            input_price_micros_per_mtok: self.input_price_micros_per_mtok,
            output_price_micros_per_mtok: self.output_price_micros_per_mtok,
            cached_input_price_micros_per_mtok: self.cached_input_price_micros_per_mtok,
            context_window: self.context_window,
            max_output_tokens: self.max_output_tokens,
            tools: self.tools,
            vision: self.vision,
            json_mode: self.json_mode,
            streaming: self.streaming,
            embeddings: self.embeddings,
            quality: self.quality,
            tier: self.tier,
            enabled: self.enabled,
            price_source: self.price_source,
            price_as_of: self.price_as_of,
            updated_at_unix_ms: 0,
        })
    }

    /// `tools,vision,json,stream` or `embeddings`.
    fn capabilities(&self) -> String {
        if self.embeddings {
            return "embeddings".into();
        }
        let flags = [
            (self.tools, "tools"),
            (self.vision, "vision"),
            (self.json_mode, "json"),
            (self.streaming, "stream"),
        ];
        let on: Vec<&str> = flags
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        if on.is_empty() {
            "-".into()
        } else {
            on.join(",")
        }
    }

    fn status(&self) -> &'static str {
        if self.enabled {
            "enabled"
        } else {
            "disabled"
        }
    }
}

/// `<kind>/<id>` → (kind, id); the id may itself contain `/`.
fn split_model(model: &str) -> Result<(&str, &str), CliError> {
    match model.split_once('/') {
        Some((kind, id)) if !kind.is_empty() && !id.is_empty() => Ok((kind, id)),
        _ => Err(CliError::new(
            ErrorKind::Usage,
            format!("{model:?} is not <provider kind>/<model id> (e.g. openai/gpt-4o)"),
        )),
    }
}

fn usd(s: &str) -> String {
    format!("${s}")
}

fn describe(m: &ModelJson) -> String {
    format!(
        "model {} ({}): {} in / {} out / {} cached per 1M tokens, context {}, {}, quality {}, \
         tier {}, {}",
        m.id,
        if m.display_name.is_empty() {
            &m.model
        } else {
            &m.display_name
        },
        usd(&m.input_usd_per_mtok),
        usd(&m.output_usd_per_mtok),
        usd(&m.cached_input_usd_per_mtok),
        m.context_window,
        m.capabilities(),
        m.quality,
        if m.tier.is_empty() { "-" } else { &m.tier },
        m.status()
    )
}

fn list_table(models: &[ModelJson]) -> String {
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.context_window.to_string(),
                usd(&m.input_usd_per_mtok),
                usd(&m.output_usd_per_mtok),
                usd(&m.cached_input_usd_per_mtok),
                m.capabilities(),
                m.quality.to_string(),
                if m.tier.is_empty() { "-" } else { &m.tier }.to_string(),
                m.status().into(),
            ]
        })
        .collect();
    table(
        &[
            "MODEL",
            "CONTEXT",
            "INPUT/1M",
            "OUTPUT/1M",
            "CACHED/1M",
            "CAPABILITIES",
            "QUALITY",
            "TIER",
            "STATUS",
        ],
        &rows,
    )
}

/// The models `models add` sends: from the file (one object or an array), or from options.
fn models_to_add(a: AddArgs) -> Result<(Vec<api::ModelInfo>, bool), CliError> {
    if let Some(path) = a.json_file {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| CliError::config(format!("cannot read {}: {e}", path.display())))?;
        let bad = |e: serde_json::Error| {
            CliError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "{}: not a model object or array of them: {e}",
                    path.display()
                ),
            )
        };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(bad)?;
        let (list, many) = match value {
            serde_json::Value::Array(items) => (items, true),
            one => (vec![one], false),
        };
        let models = list
            .into_iter()
            .map(|v| {
                serde_json::from_value::<ModelJson>(v)
                    .map_err(bad)?
                    .into_info()
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((models, many));
    }
    let model = a.model.unwrap_or_default();
    let (kind, id) = split_model(&model)?;
    let info = api::ModelInfo {
        id: id.to_string(),
        provider_kind: kind.to_string(),
        upstream_model: a.upstream_model.unwrap_or_default(),
        display_name: a.display_name.unwrap_or_default(),
        input_usd_per_mtok: a.input_price,
        output_usd_per_mtok: a.output_price,
        cached_input_usd_per_mtok: a.cached_price,
        context_window: a.context_window,
        max_output_tokens: a.max_output_tokens,
        tools: a.tools,
        vision: a.vision,
        json_mode: a.json_mode,
        streaming: !a.no_streaming,
        embeddings: a.embeddings,
        quality: a.quality,
        tier: a.tier,
        enabled: !a.disabled,
        price_source: a.price_source,
        price_as_of: a.price_as_of,
        ..api::ModelInfo::default()
    };
    Ok((vec![info], false))
}

pub async fn run(args: ModelsArgs, g: &Globals, out: &Output) -> Result<(), CliError> {
    match args.command.unwrap_or(ModelsCommand::List) {
        ModelsCommand::List => {
            let mut admin = client::connect(g).await?;
            let models: Vec<ModelJson> = admin
                .list_models(api::ListModelsRequest {})
                .await?
                .into_inner()
                .models
                .into_iter()
                .map(ModelJson::from)
                .collect();
            out.print(&models, || list_table(&models))
        }
        ModelsCommand::Update(u) => {
            let (kind, id) = split_model(&u.model)?;
            let enabled = match (u.enable, u.disable) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let request = api::UpdateModelRequest {
                provider_kind: kind.to_string(),
                id: id.to_string(),
                enabled,
                input_usd_per_mtok: u.input_price,
                output_usd_per_mtok: u.output_price,
                cached_input_usd_per_mtok: u.cached_price,
                context_window: u.context_window,
                quality: u.quality,
                tier: u.tier,
                price_source: u.price_source,
                price_as_of: u.price_as_of,
            };
            let mut admin = client::connect(g).await?;
            let model: ModelJson = admin.update_model(request).await?.into_inner().into();
            out.print(&model, || format!("updated {}", describe(&model)))
        }
        ModelsCommand::Add(a) => {
            let (models, many) = models_to_add(a)?;
            let mut admin = client::connect(g).await?;
            let mut saved = Vec::with_capacity(models.len());
            for model in models {
                let reply = admin
                    .upsert_model(api::UpsertModelRequest { model: Some(model) })
                    .await?;
                saved.push(ModelJson::from(reply.into_inner()));
            }
            let human = || {
                saved
                    .iter()
                    .map(|m| format!("saved {}\n", describe(m)))
                    .collect::<String>()
            };
            match (many, saved.first()) {
                (false, Some(one)) => out.print(one, human),
                _ => out.print(&saved, human),
            }
        }
    }
}
