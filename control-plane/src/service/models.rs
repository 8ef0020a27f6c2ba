//! The model catalogue: operators add models and change prices, capabilities, quality, tier
//! and status. Every model is checked by the engine's own `snapshot::model_entry` before it is
//! stored (and again by the store's pre-commit check), so the edges never see one they would
//! refuse.

use tokenrouter_engine::money::parse_usd_to_micros;
use tokenrouter_engine::snapshot::model_entry;
use tokenrouter_proto::config::v1 as pb;

use super::{now_ms, unexpected, Result, Service, ServiceError};
use crate::store::{Changed, ConfigChange, ModelRow};

/// Longest model id accepted (the catalogue's longest is ~50 characters).
pub const MAX_MODEL_ID_CHARS: usize = 256;

/// A model to add or replace. Prices may be given as exact decimal USD per million tokens
/// (`"2.50"`) or as micro-dollars in `model`; a decimal string, when set, wins, and when both
/// are set they must agree.
#[derive(Clone, Debug, Default)]
pub struct NewModel {
    pub model: pb::Model,
    pub input_usd_per_mtok: String,
    pub output_usd_per_mtok: String,
    pub cached_input_usd_per_mtok: String,
}

/// Fields to change; `None` keeps the stored value. Prices are decimal USD per million tokens.
#[derive(Clone, Debug, Default)]
pub struct ModelPatch {
    pub enabled: Option<bool>,
    pub input_usd_per_mtok: Option<String>,
    pub output_usd_per_mtok: Option<String>,
    pub cached_input_usd_per_mtok: Option<String>,
    pub context_window: Option<u32>,
    pub quality: Option<u32>,
    pub tier: Option<String>,
    pub price_source: Option<String>,
    pub price_as_of: Option<String>,
}

/// Parses a decimal USD price per million tokens into micro-dollars.
pub fn parse_price(field: &str, usd: &str) -> Result<i64> {
    parse_usd_to_micros(usd).ok_or_else(|| {
        ServiceError::InvalidArgument(format!(
            "{field} {usd:?} is not a price: use a non-negative decimal USD amount per million \
             tokens with at most 6 decimals, e.g. \"2.50\""
        ))
    })
}

/// The price from its decimal string when set, else the micro-dollar value.
fn price(field: &str, usd: &str, micros: i64) -> Result<i64> {
    if usd.trim().is_empty() {
        return Ok(micros);
    }
    let parsed = parse_price(field, usd)?;
    if micros != 0 && micros != parsed {
        return Err(ServiceError::InvalidArgument(format!(
            "{field} {usd:?} disagrees with the micro-dollar price {micros}: give one of them"
        )));
    }
    Ok(parsed)
}

/// Refuses what the engine would refuse, plus what only the API can get wrong.
fn check_model(m: &mut pb::Model) -> Result<()> {
    m.id = m.id.trim().to_string();
    m.provider_kind = m.provider_kind.trim().to_string();
    m.upstream_model = m.upstream_model.trim().to_string();
    m.tier = m.tier.trim().to_ascii_lowercase();
    m.price_as_of = m.price_as_of.trim().to_string();
    if m.id.is_empty() {
        return Err(ServiceError::InvalidArgument("model id is required".into()));
    }
    if m.id.chars().count() > MAX_MODEL_ID_CHARS
        || m.id.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ServiceError::InvalidArgument(format!(
            "model id {:?} is not valid: at most {MAX_MODEL_ID_CHARS} characters, no spaces",
            m.id
        )));
    }
    if m.upstream_model.is_empty() {
        m.upstream_model = m.id.clone();
    }
    if m.quality > 100 {
        return Err(ServiceError::InvalidArgument(format!(
            "model {}: quality {} is not between 0 and 100",
            m.id, m.quality
        )));
    }
    if !m.price_as_of.is_empty() && !is_date(&m.price_as_of) {
        return Err(ServiceError::InvalidArgument(format!(
            "model {}: price_as_of {:?} is not a date (YYYY-MM-DD)",
            m.id, m.price_as_of
        )));
    }
    if m.embeddings {
        // Embedding replies are never streamed (as in the built-in catalogue).
        m.streaming = false;
    }
    model_entry(m.clone()).map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
    Ok(())
}

/// `YYYY-MM-DD` (digits in place; not a calendar check).
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

impl Service {
    /// The catalogue, in catalogue order.
    pub async fn list_models(&self) -> Result<Vec<ModelRow>> {
        Ok(self.store.list_models().await?)
    }

    pub async fn get_model(&self, kind: &str, id: &str) -> Result<ModelRow> {
        let (kind, id) = (kind.trim(), id.trim());
        self.list_models()
            .await?
            .into_iter()
            .find(|r| r.model.provider_kind == kind && r.model.id == id)
            .ok_or_else(|| ServiceError::NotFound(format!("model {kind}/{id} not found")))
    }

    async fn write_model(&self, change: ConfigChange) -> Result<ModelRow> {
        match self.write(change).await? {
            Changed::Model(row) => Ok(row),
            other => Err(unexpected(other)),
        }
    }

    /// Adds a model, or replaces every field of the one with the same `(provider_kind, id)`.
    pub async fn upsert_model(&self, new: NewModel) -> Result<ModelRow> {
        let mut model = new.model;
        model.input_price_micros_per_mtok = price(
            "input price",
            &new.input_usd_per_mtok,
            model.input_price_micros_per_mtok,
        )?;
        model.output_price_micros_per_mtok = price(
            "output price",
            &new.output_usd_per_mtok,
            model.output_price_micros_per_mtok,
        )?;
        model.cached_input_price_micros_per_mtok = price(
            "cached input price",
            &new.cached_input_usd_per_mtok,
            model.cached_input_price_micros_per_mtok,
        )?;
        check_model(&mut model)?;
        self.write_model(ConfigChange::UpsertModel(ModelRow {
            model,
            updated_at_ms: now_ms(),
        }))
        .await
    }

    /// Changes the fields set in `patch` of an existing model.
    pub async fn update_model(&self, kind: &str, id: &str, patch: ModelPatch) -> Result<ModelRow> {
        let (kind, id) = (kind.trim(), id.trim());
        let mut model = self
            .list_models()
            .await?
            .into_iter()
            .map(|r| r.model)
            .find(|m| m.provider_kind == kind && m.id == id)
            .ok_or_else(|| ServiceError::NotFound(format!("model {kind}/{id} not found")))?;
        let ModelPatch {
            enabled,
            input_usd_per_mtok,
            output_usd_per_mtok,
            cached_input_usd_per_mtok,
            context_window,
            quality,
            tier,
            price_source,
            price_as_of,
        } = patch;
        if let Some(usd) = input_usd_per_mtok {
            model.input_price_micros_per_mtok = parse_price("input price", &usd)?;
        }
        if let Some(usd) = output_usd_per_mtok {
            model.output_price_micros_per_mtok = parse_price("output price", &usd)?;
        }
        if let Some(usd) = cached_input_usd_per_mtok {
            model.cached_input_price_micros_per_mtok = parse_price("cached input price", &usd)?;
        }
        model.enabled = enabled.unwrap_or(model.enabled);
        model.context_window = context_window.unwrap_or(model.context_window);
        model.quality = quality.unwrap_or(model.quality);
        model.tier = tier.unwrap_or(model.tier);
        model.price_source = price_source.unwrap_or(model.price_source);
        model.price_as_of = price_as_of.unwrap_or(model.price_as_of);
        check_model(&mut model)?;
        self.write_model(ConfigChange::UpdateModel(ModelRow {
            model,
            updated_at_ms: now_ms(),
        }))
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::service::tests::service;

    fn model(kind: &str, id: &str) -> NewModel {
        NewModel {
            model: pb::Model {
                id: id.into(),
                provider_kind: kind.into(),
                context_window: 32_000,
                enabled: true,
                streaming: true,
                tier: "medium".into(),
                quality: 50,
                ..pb::Model::default()
            },
            input_usd_per_mtok: "0.20".into(),
            output_usd_per_mtok: "0.80".into(),
            cached_input_usd_per_mtok: String::new(),
        }
    }

    #[tokio::test]
    async fn upsert_and_update_are_validated_and_published() {
        let (svc, _dir) = service().await;
        let before = svc.list_models().await.unwrap();
        let added = svc
            .upsert_model(model("openai-compatible", "qwen3-32b"))
            .await
            .unwrap();
        assert_eq!(added.model.input_price_micros_per_mtok, 200_000);
        assert_eq!(added.model.upstream_model, "qwen3-32b");
        assert!(added.updated_at_ms > 0);
        svc.settled().await;
        let snap = svc.snapshots().borrow().clone();
        assert!(snap.models.iter().any(|m| m.id == "qwen3-32b"));

        // Replacing keeps the model's place in catalogue order.
        let mut again = model("openai", "gpt-4o");
        again.model.quality = 99;
        svc.upsert_model(again).await.unwrap();
        let after = svc.list_models().await.unwrap();
        assert_eq!(after.len(), before.len() + 1);
        assert_eq!(after[0].model.id, "gpt-4o");
        assert_eq!(after[0].model.quality, 99);

        let updated = svc
            .update_model(
                "openai",
                "gpt-4o",
                ModelPatch {
                    enabled: Some(false),
                    output_usd_per_mtok: Some("12.5".into()),
                    tier: Some("Complex".into()),
                    ..ModelPatch::default()
                },
            )
            .await
            .unwrap();
        assert!(!updated.model.enabled);
        assert_eq!(updated.model.output_price_micros_per_mtok, 12_500_000);
        assert_eq!(updated.model.input_price_micros_per_mtok, 200_000);
        assert_eq!(updated.model.tier, "complex");
        svc.settled().await;
        let snap = svc.snapshots().borrow().clone();
        let pushed = snap.models.iter().find(|m| m.id == "gpt-4o").unwrap();
        assert!(!pushed.enabled);

        assert!(matches!(
            svc.update_model("openai", "gpt-9", ModelPatch::default())
                .await,
            Err(ServiceError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn invalid_models_are_refused_before_storing() {
        let (svc, _dir) = service().await;
        let v0 = svc.snapshots().borrow().version;
        let bad_price = NewModel {
            input_usd_per_mtok: "-1".into(),
            ..model("openai", "m")
        };
        let disagree = NewModel {
            model: pb::Model {
                input_price_micros_per_mtok: 1,
                ..model("openai", "m").model
            },
            ..model("openai", "m")
        };
        let cases = [
            (bad_price, "is not a price"),
            (disagree, "disagrees"),
            (model("nonsense", "m"), "unknown provider kind"),
            (model("openai", ""), "model id is required"),
            (model("openai", "a b"), "not valid"),
            (
                NewModel {
                    model: pb::Model {
                        quality: 101,
                        ..model("openai", "m").model
                    },
                    ..model("openai", "m")
                },
                "between 0 and 100",
            ),
            (
                NewModel {
                    model: pb::Model {
                        price_as_of: "June".into(),
                        ..model("openai", "m").model
                    },
                    ..model("openai", "m")
                },
                "YYYY-MM-DD",
            ),
            (
                NewModel {
                    model: pb::Model {
                        tier: "hard".into(),
                        ..model("openai", "m").model
                    },
                    ..model("openai", "m")
                },
                "tier \"hard\"",
            ),
        ];
        for (new, want) in cases {
            match svc.upsert_model(new).await {
                Err(ServiceError::InvalidArgument(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{want}: {other:?}"),
            }
        }
        let bad_patch = ModelPatch {
            input_usd_per_mtok: Some("1.2345678".into()),
            ..ModelPatch::default()
        };
        assert!(matches!(
            svc.update_model("openai", "gpt-4o", bad_patch).await,
            Err(ServiceError::InvalidArgument(_))
        ));
        svc.settled().await;
        assert_eq!(svc.snapshots().borrow().version, v0, "nothing written");
    }
}
