//! The storage test suite, run against every backend: each test takes a [`TestDb`] (a store on
//! a database of its own) and [`backends!`] instantiates it once per backend, as
//! `store::conformance::sqlite::<test>` and `store::conformance::postgres::<test>`. A backend
//! passing these behaves as the service expects; tests of one backend's mechanics stay beside it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use tokenrouter_proto::config::v1 as pb;
use tokenrouter_proto::sync::v1::{Attempt, UsageRecord};

use super::idempotency::{Claim, ClaimState, Recorded, CLAIM_LAPSES_AFTER_MS, REPLAY_FOR_MS};
use super::metering::{Grant, Granted, MinuteTokens, Owner, TopupSession};
use super::test_db::TestDb;
use super::{
    Changed, ConfigChange, KeyRow, KeyStatus, KeyUsage, Limits, LogQuery, ModelRow, Proposed,
    ProviderRow, RoutingConfigRow, RoutingRuleRow, StatusFilter, StoreError, UsageGroupBy,
    UsageGroupKey, UsageQuery, UsageTotals,
};

/// One `#[tokio::test]` per backend and test: `sqlite::<test>` on a temporary file,
/// `postgres::<test>` on a new database (skipped without a server outside CI, see
/// [`TestDb::postgres`]).
macro_rules! backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::TestDb::sqlite().await).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    if let Some(db) = super::TestDb::postgres().await {
                        super::$test(db).await;
                    }
                }
            )*
        }
    };
}

backends!(
    keys_create_revoke_and_version,
    rejected_change_is_rolled_back,
    providers_add_replace_remove,
    models_are_seeded_once_in_order,
    seeding_adds_missing_models_and_keeps_operator_edits,
    models_upsert_and_update,
    routing_rules_crud,
    routing_configs_set_replace_delete,
    firewall_columns_of_the_request_log_round_trip,
    routing_columns_of_the_request_log_round_trip,
    usage_batches_are_idempotent,
    long_rule_traces_are_stored_once,
    trace_runs_are_stored_resolved,
    many_distinct_traces_in_one_batch,
    log_filters_and_usage_totals,
    usage_breakdowns_and_key_totals,
    analytics_columns_bodies_and_metadata_search,
    keys_are_updated_field_by_field,
    keys_are_found_by_hash,
    claim_finish_replay_release_and_expiry,
    concurrent_claims_have_one_winner,
    grants_credit_once_per_external_id,
    usage_is_charged_once_to_key_and_workspace,
    topup_sessions_round_trip,
    token_minutes_count_started_minutes,
    keys_changed_since_a_version,
    workspaces_are_read_by_id,
);

fn key(id: &str, byte: u8) -> KeyRow {
    KeyRow {
        id: id.into(),
        name: "n".into(),
        key_prefix: "sk-tr-abcd".into(),
        sha256: [byte; 32],
        workspace_id: "default".into(),
        status: KeyStatus::Active,
        created_at_ms: 1,
        limits: Limits::default(),
        metered: false,
        revoked_at_ms: None,
        store_bodies: false,
    }
}

fn provider(name: &str, url: &str) -> ProviderRow {
    ProviderRow {
        name: name.into(),
        kind: "openai".into(),
        base_url: url.into(),
        credential_sealed: Some(vec![1, 2, 3]),
        fallbacks_sealed: None,
        fallback_count: 0,
        enabled: true,
        created_at_ms: 5,
    }
}

fn ok(_: Proposed<'_>) -> Result<(), String> {
    Ok(())
}

fn record(id: &str) -> UsageRecord {
    UsageRecord {
        request_id: id.into(),
        key_id: "key_1".into(),
        input_tokens: u64::MAX,
        cost_picos: 42,
        stream: true,
        ..UsageRecord::default()
    }
}

async fn keys_create_revoke_and_version(db: TestDb) {
    let store = &db.store;
    let v0 = store.load_config().await.unwrap().version;
    let out = store
        .change_config(ConfigChange::CreateKey(key("key_a", 1)), &ok)
        .await
        .unwrap();
    assert_eq!(out.version, Some(v0 + 1));
    let state = store.load_config().await.unwrap();
    assert_eq!(state.version, v0 + 1);
    assert_eq!(state.keys.len(), 1);

    let dup = store
        .change_config(ConfigChange::CreateKey(key("key_b", 1)), &ok)
        .await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists(_))), "{dup:?}");

    let revoke = || ConfigChange::RevokeKey {
        id: "key_a".into(),
        at_ms: 9,
    };
    let out = store.change_config(revoke(), &ok).await.unwrap();
    assert_eq!(out.version, Some(v0 + 2));
    let Changed::Key(k) = out.changed else {
        panic!("not a key")
    };
    assert_eq!((k.status, k.revoked_at_ms), (KeyStatus::Revoked, Some(9)));
    // Revoking again is a no-op: no new version.
    let again = store.change_config(revoke(), &ok).await.unwrap();
    assert!(again.version.is_none());
    assert_eq!(store.load_config().await.unwrap().version, v0 + 2);

    let missing = store
        .change_config(
            ConfigChange::RevokeKey {
                id: "key_x".into(),
                at_ms: 1,
            },
            &ok,
        )
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))));
}

async fn workspaces_are_read_by_id(db: TestDb) {
    let store = &db.store;
    let mut k = key("key_a", 1);
    k.workspace_id = "team".into();
    store
        .change_config(ConfigChange::CreateKey(k), &ok)
        .await
        .unwrap();
    store
        .change_config(
            ConfigChange::UpdateWorkspace {
                id: "team".into(),
                limits: Limits {
                    rps: Some(4),
                    ..Limits::default()
                },
            },
            &ok,
        )
        .await
        .unwrap();
    let team = store.get_workspace("team").await.unwrap().unwrap();
    assert_eq!((team.id.as_str(), team.limits.rps), ("team", Some(4)));
    let listed = store.list_workspaces().await.unwrap();
    assert!(listed.iter().any(|(w, n)| *w == team && *n == 1));
    assert!(store.get_workspace("nope").await.unwrap().is_none());
}

/// `load_config_since` reads every key a version above the given one created, revoked, updated
/// or made metered, and no other; the rest of the configuration whole.
async fn keys_changed_since_a_version(db: TestDb) {
    let store = &db.store;
    let ids = |state: &super::ConfigState| -> Vec<String> {
        state.keys.iter().map(|k| k.id.clone()).collect()
    };
    for (i, id) in ["key_a", "key_b", "key_c", "key_d"].into_iter().enumerate() {
        let mut k = key(id, u8::try_from(i).unwrap() + 1);
        k.created_at_ms = i64::try_from(i).unwrap();
        store
            .change_config(ConfigChange::CreateKey(k), &ok)
            .await
            .unwrap();
    }
    store
        .change_config(
            ConfigChange::PutProvider {
                row: provider("p", "http://127.0.0.1:1/v1"),
                replace: false,
            },
            &ok,
        )
        .await
        .unwrap();
    let base = store.load_config().await.unwrap();
    let since = store.load_config_since(base.version).await.unwrap();
    assert!(since.keys.is_empty(), "nothing changed: {:?}", ids(&since));
    assert_eq!(since.version, base.version);
    assert_eq!(since.providers.len(), 1, "the other tables come whole");

    store
        .change_config(
            ConfigChange::RevokeKey {
                id: "key_c".into(),
                at_ms: 9,
            },
            &ok,
        )
        .await
        .unwrap();
    store
        .change_config(
            ConfigChange::UpdateKey {
                id: "key_a".into(),
                name: Some("renamed".into()),
                store_bodies: None,
                limits: Limits::default(),
            },
            &ok,
        )
        .await
        .unwrap();
    let granted = store
        .metering()
        .grant(&grant(Owner::Key("key_d".into()), 5, None))
        .await
        .unwrap();
    assert!(granted.new_version.is_some());
    // A no-op changes nothing, so it is not read either.
    store
        .change_config(
            ConfigChange::RevokeKey {
                id: "key_c".into(),
                at_ms: 10,
            },
            &ok,
        )
        .await
        .unwrap();
    let mut e = key("key_e", 9);
    e.created_at_ms = 10;
    store
        .change_config(ConfigChange::CreateKey(e), &ok)
        .await
        .unwrap();

    let since = store.load_config_since(base.version).await.unwrap();
    assert_eq!(ids(&since), ["key_a", "key_c", "key_d", "key_e"]);
    let full = store.load_config().await.unwrap();
    assert_eq!(since.version, full.version);
    for changed in &since.keys {
        let stored = full.keys.iter().find(|k| k.id == changed.id).unwrap();
        assert_eq!(changed, stored, "the key as it is now");
    }
    assert!(since.keys[2].metered);
    assert_eq!(since.keys[1].status, KeyStatus::Revoked);
    assert!(store
        .load_config_since(full.version)
        .await
        .unwrap()
        .keys
        .is_empty());
}

async fn rejected_change_is_rolled_back(db: TestDb) {
    let store = &db.store;
    let before = store.load_config().await.unwrap();
    let refuse = |_: Proposed<'_>| Err("no".to_string());
    let out = store
        .change_config(ConfigChange::CreateKey(key("key_a", 1)), &refuse)
        .await;
    assert!(matches!(out, Err(StoreError::Rejected(_))));
    let after = store.load_config().await.unwrap();
    assert_eq!(after.version, before.version);
    assert!(after.keys.is_empty());
}

async fn providers_add_replace_remove(db: TestDb) {
    let store = &db.store;
    let put = |row, replace| ConfigChange::PutProvider { row, replace };
    store
        .change_config(put(provider("p", "http://a"), false), &ok)
        .await
        .unwrap();
    let dup = store
        .change_config(put(provider("p", "http://b"), false), &ok)
        .await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists(_))));
    let mut replacement = provider("p", "http://b");
    replacement.created_at_ms = 99;
    replacement.credential_sealed = None;
    let out = store
        .change_config(put(replacement, true), &ok)
        .await
        .unwrap();
    let Changed::Provider(p) = out.changed else {
        panic!("not a provider")
    };
    assert_eq!(p.created_at_ms, 5, "replacement keeps its creation time");
    let listed = store.list_providers().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].base_url, "http://b");
    assert_eq!(listed[0].credential_sealed, None);

    store
        .change_config(ConfigChange::RemoveProvider { name: "p".into() }, &ok)
        .await
        .unwrap();
    assert!(store.list_providers().await.unwrap().is_empty());
    let gone = store
        .change_config(ConfigChange::RemoveProvider { name: "p".into() }, &ok)
        .await;
    assert!(matches!(gone, Err(StoreError::NotFound(_))));
}

async fn models_are_seeded_once_in_order(db: TestDb) {
    let store = &db.store;
    let builtin = tokenrouter_engine::catalogue::builtin().unwrap();
    let out = store
        .change_config(ConfigChange::SeedModels(builtin.clone()), &ok)
        .await
        .unwrap();
    assert_eq!(out.changed, Changed::ModelsSeeded(builtin.clone()));
    let again = store
        .change_config(ConfigChange::SeedModels(builtin.clone()), &ok)
        .await
        .unwrap();
    assert!(again.version.is_none());
    let rows = store.list_models().await.unwrap();
    assert!(rows.iter().all(|r| r.updated_at_ms == 0));
    let models: Vec<pb::Model> = rows.into_iter().map(|r| r.model).collect();
    assert_eq!(
        models, builtin,
        "every column round-trips, in catalogue order"
    );
}

fn model(id: &str) -> pb::Model {
    pb::Model {
        id: id.into(),
        provider_kind: "openai".into(),
        upstream_model: id.into(),
        input_price_micros_per_mtok: 1,
        output_price_micros_per_mtok: 2,
        cached_input_price_micros_per_mtok: 3,
        context_window: 1000,
        enabled: true,
        tools: true,
        vision: true,
        json_mode: true,
        streaming: true,
        embeddings: false,
        quality: 70,
        tier: "complex".into(),
        max_output_tokens: 100,
        price_source: "https://example.com/pricing".into(),
        price_as_of: "2025-01-01".into(),
        display_name: id.to_uppercase(),
    }
}

/// Every start inserts the built-in models the table lacks; rows that exist keep the
/// operator's values, and rows from before the capability columns get those filled once.
async fn seeding_adds_missing_models_and_keeps_operator_edits(db: TestDb) {
    let store = &db.store;
    let v1 = vec![model("a"), model("b")];
    store
        .change_config(ConfigChange::SeedModels(v1), &ok)
        .await
        .unwrap();
    // The operator edits "a"; "b" is a row as migrated from before 0003 (no capabilities).
    let mut edited = model("a");
    edited.input_price_micros_per_mtok = 999;
    edited.enabled = false;
    edited.quality = 5;
    store
        .change_config(
            ConfigChange::UpdateModel(ModelRow {
                model: edited.clone(),
                updated_at_ms: 7,
            }),
            &ok,
        )
        .await
        .unwrap();
    db.execute(
        "UPDATE models SET tools = FALSE, quality = 0, tier = '', price_source = '', \
         input_price_micros_per_mtok = 42 WHERE id = 'b'",
    )
    .await;

    // A newer catalogue: new values for all three, and a new model "c".
    let newer: Vec<pb::Model> = ["a", "b", "c"]
        .iter()
        .map(|id| pb::Model {
            quality: 88,
            input_price_micros_per_mtok: 5,
            ..model(id)
        })
        .collect();
    let out = store
        .change_config(ConfigChange::SeedModels(newer.clone()), &ok)
        .await
        .unwrap();
    let Changed::ModelsSeeded(seeded) = out.changed else {
        panic!("not a seed")
    };
    let ids: Vec<&str> = seeded.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["b", "c"]);
    let rows = store.list_models().await.unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.model.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"], "new models come last");
    assert_eq!(rows[0].model, edited, "operator edits win");
    assert_eq!(rows[0].updated_at_ms, 7);
    let b = &rows[1].model;
    assert_eq!((b.quality, b.tier.as_str(), b.tools), (88, "complex", true));
    assert_eq!(
        b.input_price_micros_per_mtok, 42,
        "prices are never overwritten"
    );
    assert_eq!(rows[2].model, newer[2]);

    // The fill happens once: a later catalogue changes nothing that exists.
    let out = store
        .change_config(ConfigChange::SeedModels(newer), &ok)
        .await
        .unwrap();
    assert!(out.version.is_none());
}

async fn models_upsert_and_update(db: TestDb) {
    let store = &db.store;
    let row = |m: pb::Model| ModelRow {
        model: m,
        updated_at_ms: 3,
    };
    let missing = store
        .change_config(ConfigChange::UpdateModel(row(model("a"))), &ok)
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
    for id in ["a", "b"] {
        store
            .change_config(ConfigChange::UpsertModel(row(model(id))), &ok)
            .await
            .unwrap();
    }
    let changed = pb::Model {
        embeddings: true,
        streaming: false,
        tier: "simple".into(),
        ..model("a")
    };
    let out = store
        .change_config(ConfigChange::UpsertModel(row(changed.clone())), &ok)
        .await
        .unwrap();
    assert_eq!(out.changed, Changed::Model(row(changed.clone())));
    let rows = store.list_models().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0], row(changed), "replaced in place");
    // A refused model is rolled back.
    let refuse = |_: Proposed<'_>| Err("no".to_string());
    let out = store
        .change_config(ConfigChange::UpsertModel(row(model("z"))), &refuse)
        .await;
    assert!(matches!(out, Err(StoreError::Rejected(_))));
    assert_eq!(store.list_models().await.unwrap().len(), 2);
}

fn routing_rule(name: &str) -> RoutingRuleRow {
    RoutingRuleRow {
        id: 0,
        name: name.into(),
        priority: 100,
        is_enabled: true,
        match_json: r#"{"task":"coding"}"#.into(),
        action_json: r#"{"set_model":"gpt-4o"}"#.into(),
        key_id: String::new(),
        created_at_ms: 1,
        updated_at_ms: 1,
    }
}

async fn routing_rules_crud(db: TestDb) {
    let store = &db.store;
    let counted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = counted.clone();
    let count = move |p: Proposed<'_>| {
        if let Proposed::RoutingRule { count, .. } = p {
            seen.lock().unwrap().push(count);
        }
        Ok(())
    };
    let Changed::RoutingRule(a) = store
        .change_config(ConfigChange::CreateRoutingRule(routing_rule("a")), &count)
        .await
        .unwrap()
        .changed
    else {
        panic!("not a rule")
    };
    assert!(a.id > 0);
    store
        .change_config(ConfigChange::CreateRoutingRule(routing_rule("b")), &count)
        .await
        .unwrap();
    assert_eq!(*counted.lock().unwrap(), [1, 2]);
    let dup = store
        .change_config(ConfigChange::CreateRoutingRule(routing_rule("a")), &ok)
        .await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists(_))), "{dup:?}");

    let mut changed = RoutingRuleRow {
        priority: -5,
        is_enabled: false,
        key_id: "key_x".into(),
        created_at_ms: 99,
        updated_at_ms: 50,
        ..a.clone()
    };
    store
        .change_config(ConfigChange::UpdateRoutingRule(changed.clone()), &ok)
        .await
        .unwrap();
    changed.created_at_ms = a.created_at_ms;
    let listed = store.list_routing_rules().await.unwrap();
    assert_eq!(listed[0], changed, "creation time kept");
    assert_eq!(store.load_config().await.unwrap().routing_rules, listed);

    let rename_to_taken = RoutingRuleRow {
        name: "b".into(),
        ..changed.clone()
    };
    let taken = store
        .change_config(ConfigChange::UpdateRoutingRule(rename_to_taken), &ok)
        .await;
    assert!(matches!(taken, Err(StoreError::AlreadyExists(_))));
    store
        .change_config(ConfigChange::DeleteRoutingRule { id: a.id }, &ok)
        .await
        .unwrap();
    for change in [
        ConfigChange::DeleteRoutingRule { id: a.id },
        ConfigChange::UpdateRoutingRule(changed),
    ] {
        let gone = store.change_config(change, &ok).await;
        assert!(matches!(gone, Err(StoreError::NotFound(_))), "{gone:?}");
    }
    assert_eq!(store.list_routing_rules().await.unwrap().len(), 1);
}

async fn routing_configs_set_replace_delete(db: TestDb) {
    let store = &db.store;
    let backend = |model: &str, weight| pb::Backend {
        model: model.into(),
        priority: 0,
        weight,
    };
    let config = RoutingConfigRow {
        key_id: "key_a".into(),
        active: true,
        strategy: "rules".into(),
        backends: vec![backend("openai/gpt-4o", 3), backend("é/ü", 1)],
        rules: vec![pb::ConfigRule {
            name: "code".into(),
            match_json: r#"{"headers":{"x-team":"a"}}"#.into(),
            backends: vec![backend("gpt-4o-mini", 0)],
        }],
        updated_at_ms: 5,
    };
    let no_key = store
        .change_config(ConfigChange::SetRoutingConfig(config.clone()), &ok)
        .await;
    assert!(matches!(no_key, Err(StoreError::NotFound(_))), "{no_key:?}");
    store
        .change_config(ConfigChange::CreateKey(key("key_a", 1)), &ok)
        .await
        .unwrap();
    store
        .change_config(ConfigChange::SetRoutingConfig(config.clone()), &ok)
        .await
        .unwrap();
    assert_eq!(
        store.list_routing_configs().await.unwrap(),
        std::slice::from_ref(&config)
    );
    let replaced = RoutingConfigRow {
        active: false,
        strategy: "split".into(),
        rules: Vec::new(),
        ..config
    };
    store
        .change_config(ConfigChange::SetRoutingConfig(replaced.clone()), &ok)
        .await
        .unwrap();
    let state = store.load_config().await.unwrap();
    assert_eq!(state.routing_configs, [replaced]);

    let delete = || ConfigChange::DeleteRoutingConfig {
        key_id: "key_a".into(),
    };
    store.change_config(delete(), &ok).await.unwrap();
    assert!(store.list_routing_configs().await.unwrap().is_empty());
    let gone = store.change_config(delete(), &ok).await;
    assert!(matches!(gone, Err(StoreError::NotFound(_))));
}

async fn firewall_columns_of_the_request_log_round_trip(db: TestDb) {
    let store = &db.store;
    let mut r = record("fw");
    r.firewall_actions = vec!["mask:prompt:a, b".into(), "warn:response:é".into()];
    r.warnings = vec!["firewall rule 'é' matched the response".into()];
    store
        .insert_usage(&[r.clone(), record("plain")], 1)
        .await
        .unwrap();
    let rows = store
        .list_logs(&LogQuery {
            limit: 10,
            ..LogQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(rows[1].record.firewall_actions, r.firewall_actions);
    assert_eq!(rows[1].record.warnings, r.warnings);
    assert!(rows[0].record.firewall_actions.is_empty() && rows[0].record.warnings.is_empty());
}

async fn routing_columns_of_the_request_log_round_trip(db: TestDb) {
    let store = &db.store;
    let mut r = record("routed");
    r.input_tokens = 7;
    r.mode = "latency".into();
    r.tier = "complex".into();
    r.rule_trace = r#"[{"rule":"eu","id":3,"matched":true}]"#.into();
    r.attempts = vec![
        Attempt {
            provider: "openai".into(),
            model: "gpt-4o".into(),
            status: 503,
            latency_ms: 40,
            error: "http_503".into(),
        },
        Attempt {
            provider: "azure".into(),
            model: "gpt-4o".into(),
            status: 0,
            latency_ms: 60_000,
            error: "timeout".into(),
        },
        Attempt {
            provider: "claude".into(),
            model: "sonnet-é".into(),
            status: 200,
            latency_ms: 700,
            error: String::new(),
        },
    ];
    r.ttfb_ms = 812;
    r.retry_after_s = 30;
    // A trace of 40 rules (tens of KB, non-ASCII included), stored in the backend's long form.
    let mut long = record("long-trace");
    let rules: Vec<String> = (0..40)
        .map(|i| {
            format!(
                r#"{{"conditions":[{{"actual":"chat","condition":"task","expected":"coding","matched":false}}],"id":{i},"matched":false,"priority":{i},"rule":"règle {i}"}}"#
            )
        })
        .collect();
    long.rule_trace = format!("[{}]", rules.join(","));
    store
        .insert_usage(&[r.clone(), record("plain"), long.clone()], 1)
        .await
        .unwrap();
    let rows = store
        .list_logs(&LogQuery {
            limit: 10,
            ..LogQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(rows[0].record.rule_trace, long.rule_trace);
    let one = store.get_log("long-trace").await.unwrap().unwrap();
    assert_eq!(one.record.rule_trace, long.rule_trace);
    let rows = &rows[1..];
    assert_eq!(rows[1].record, r);
    let plain = &rows[0].record;
    assert!(plain.attempts.is_empty() && plain.rule_trace.is_empty());
    assert!(plain.mode.is_empty() && plain.tier.is_empty());
    assert_eq!((plain.ttfb_ms, plain.retry_after_s), (0, 0));
}

/// A long trace is stored once however many rows carry it, found again by a process that has
/// not seen it yet, and stored once when two replicas bring it at the same time.
async fn long_rule_traces_are_stored_once(db: TestDb) {
    let long = |name: &str| {
        let rule = format!(
            r#"{{"conditions":[{{"actual":"chat","condition":"task","expected":"coding","matched":false}}],"id":1,"matched":false,"priority":10,"rule":"{name}"}}"#
        );
        format!("[{}]", vec![rule; 10].join(","))
    };
    let with = |id: &str, trace: String| UsageRecord {
        rule_trace: trace,
        ..record(id)
    };
    let batch = [
        with("a", long("règle a")),
        with("b", long("règle a")),
        with("c", long("b")),
        with("d", r#"[{"rule":"short","id":1,"matched":true}]"#.into()),
        with("e", long("règle a")),
    ];
    db.store.insert_usage(&batch, 1).await.unwrap();
    let other = db.reopen().await;
    other
        .insert_usage(&[with("f", long("b"))], 2)
        .await
        .unwrap();
    // Two replicas storing the same new trace at once.
    let (g, h) = ([with("g", long("new"))], [with("h", long("new"))]);
    let (first, second) = tokio::join!(db.store.insert_usage(&g, 3), other.insert_usage(&h, 3));
    assert_eq!((first.unwrap(), second.unwrap()), (vec![0], vec![0]));

    assert_eq!(db.scalar("SELECT COUNT(*) FROM rule_traces").await, 3);
    assert_eq!(
        db.scalar("SELECT COUNT(DISTINCT rule_trace_id) FROM request_logs")
            .await,
        3
    );
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM request_logs WHERE rule_trace_id IS NULL")
            .await,
        1,
        "the short trace stays in its row"
    );
    let expected: Vec<UsageRecord> = batch
        .into_iter()
        .chain([
            with("f", long("b")),
            with("g", long("new")),
            with("h", long("new")),
        ])
        .collect();
    for store in [&db.store, &other] {
        for r in &expected {
            let got = store.get_log(&r.request_id).await.unwrap().unwrap();
            assert_eq!(got.record.rule_trace, r.rule_trace, "{}", r.request_id);
        }
        let listed = store
            .list_logs(&LogQuery {
                limit: 20,
                ..LogQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), expected.len());
        for entry in listed {
            let r = expected
                .iter()
                .find(|r| r.request_id == entry.record.request_id)
                .unwrap();
            assert_eq!(entry.record.rule_trace, r.rule_trace);
        }
    }
}

/// Runs of equal traces sent once (`rule_trace_as_previous`) are stored as if each record
/// carried its run's trace, long or short, past a statement chunk; a marked record with no trace
/// before it is stored without one.
async fn trace_runs_are_stored_resolved(db: TestDb) {
    let long = format!(r#"[{{"rule":"long","pad":"{}"}}]"#, "x".repeat(600));
    let short = r#"[{"rule":"short","id":1,"matched":true}]"#.to_string();
    let sent = |id: &str, trace: &str, as_previous: bool| UsageRecord {
        rule_trace: trace.into(),
        rule_trace_as_previous: as_previous,
        ..record(id)
    };
    let mut batch = vec![
        sent("t0", "", true),
        sent("t1", &long, false),
        sent("t2", "", true),
        sent("t3", "", false),
        sent("t4", "", true),
        sent("t5", &short, false),
        sent("t6", "", true),
    ];
    // Past the first statement's rows (256): the run goes on across the chunk.
    batch.extend((7..300).map(|i| sent(&format!("t{i:03}"), "", true)));
    batch.push(sent("t300", &long, false));
    batch.push(sent("t301", "", true));
    let mut expected = batch.clone();
    assert_eq!(
        tokenrouter_proto::trace_runs::restore(&mut expected),
        (298, 1)
    );
    assert_eq!(db.store.insert_usage(&batch, 1).await.unwrap().len(), 302);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM rule_traces").await, 1);
    for r in &expected {
        let got = db.store.get_log(&r.request_id).await.unwrap().unwrap();
        assert_eq!(got.record.rule_trace, r.rule_trace, "{}", r.request_id);
    }
    assert_eq!(
        expected[4].rule_trace, long,
        "a record without a trace ends no run"
    );
    assert_eq!(expected[299].rule_trace, short);
}

/// A batch of traces that all differ (a rule on a per-user value) stores each, past the
/// statement chunk, and every row reads its own.
async fn many_distinct_traces_in_one_batch(db: TestDb) {
    let batch: Vec<UsageRecord> = (0..300)
        .map(|i| UsageRecord {
            rule_trace: format!(
                r#"[{{"rule":"per user","actual":"user-{i}","pad":"{}"}}]"#,
                "x".repeat(600)
            ),
            ..record(&format!("r{i:03}"))
        })
        .collect();
    assert_eq!(db.store.insert_usage(&batch, 1).await.unwrap().len(), 300);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM rule_traces").await, 300);
    for r in [&batch[0], &batch[255], &batch[256], &batch[299]] {
        let got = db.store.get_log(&r.request_id).await.unwrap().unwrap();
        assert_eq!(got.record.rule_trace, r.rule_trace);
    }
}

async fn usage_batches_are_idempotent(db: TestDb) {
    let store = &db.store;
    let batch = vec![record("r1"), record("r2")];
    assert_eq!(store.insert_usage(&batch, 100).await.unwrap(), [0, 1]);
    assert!(store.insert_usage(&batch, 200).await.unwrap().is_empty());
    assert_eq!(
        store
            .insert_usage(&[record("r2"), record("r3"), record("r3")], 300)
            .await
            .unwrap(),
        [1],
        "only the first r3 is new"
    );
    let all = store
        .list_logs(&LogQuery {
            limit: 10,
            ..LogQuery::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = all.iter().map(|e| e.record.request_id.as_str()).collect();
    assert_eq!(ids, ["r3", "r2", "r1"]);
    assert_eq!(all[1].received_at_ms, 100, "a resend does not overwrite");
    assert_eq!(all[0].record.input_tokens, i64::MAX as u64);
    assert!(all[0].record.stream);

    let page = store
        .list_logs(&LogQuery {
            limit: 10,
            key_id: Some("key_1".into()),
            before_request_id: Some("r2".into()),
            ..LogQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].record.request_id, "r1");
    let none = store
        .list_logs(&LogQuery {
            limit: 10,
            key_id: Some("other".into()),
            before_request_id: None,
            ..LogQuery::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let bad = store
        .list_logs(&LogQuery {
            limit: 10,
            key_id: None,
            before_request_id: Some("nope".into()),
            ..LogQuery::default()
        })
        .await;
    assert!(matches!(bad, Err(StoreError::NotFound(_))));

    // A batch larger than one statement's rows: ids stored before, and ids repeated across
    // the batch (also across a statement's boundary), are not new; the rest keep their order.
    let big: Vec<UsageRecord> = (0..700)
        .map(|i| match i {
            5 => record("r3"),
            300 => record("b10"),
            650 => record("b299"),
            _ => record(&format!("b{i}")),
        })
        .collect();
    let new = store.insert_usage(&big, 400).await.unwrap();
    let expected: Vec<usize> = (0..700).filter(|i| ![5, 300, 650].contains(i)).collect();
    assert_eq!(new, expected);
    let stored = store
        .list_logs(&LogQuery {
            limit: 3,
            ..LogQuery::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = stored
        .iter()
        .map(|e| e.record.request_id.as_str())
        .collect();
    assert_eq!(ids, ["b699", "b698", "b697"], "stored in batch order");
}

async fn log_filters_and_usage_totals(db: TestDb) {
    let store = &db.store;
    let row = |id: &str, key: &str, provider: &str, status: u32, cost: i64| UsageRecord {
        request_id: id.into(),
        key_id: key.into(),
        provider: provider.into(),
        model: "gpt-4o".into(),
        requested_model: format!("{provider}/gpt-4o"),
        status,
        input_tokens: 10,
        output_tokens: 5,
        cost_picos: cost,
        ..UsageRecord::default()
    };
    store
        .insert_usage(&[row("a", "k1", "openai", 200, 1_500_000)], 1_000)
        .await
        .unwrap();
    store
        .insert_usage(
            &[
                row("b", "k1", "claude", 500, 7),
                row("c", "k2", "openai", 201, 2_000_001),
            ],
            2_000,
        )
        .await
        .unwrap();
    let ids = |q: LogQuery| {
        let store = &store;
        async move {
            let rows = store.list_logs(&LogQuery { limit: 10, ..q }).await.unwrap();
            rows.into_iter()
                .map(|e| e.record.request_id)
                .collect::<Vec<_>>()
        }
    };
    let provider = |p: &str| LogQuery {
        provider: Some(p.into()),
        ..LogQuery::default()
    };
    assert_eq!(ids(provider("openai")).await, ["c", "a"]);
    let status = |s: &str| LogQuery {
        status: Some(StatusFilter::parse(s).unwrap()),
        ..LogQuery::default()
    };
    assert_eq!(ids(status("500")).await, ["b"]);
    assert_eq!(ids(status("2xx")).await, ["c", "a"]);
    assert_eq!(ids(status("5XX")).await, ["b"]);
    assert!(ids(status("4xx")).await.is_empty());
    let model = |m: &str| LogQuery {
        model: Some(m.into()),
        ..LogQuery::default()
    };
    assert_eq!(ids(model("gpt-4o")).await.len(), 3);
    assert_eq!(ids(model("claude/gpt-4o")).await, ["b"]);
    let window = LogQuery {
        since_ms: Some(1_500),
        until_ms: Some(2_001),
        key_id: Some("k1".into()),
        ..LogQuery::default()
    };
    assert_eq!(ids(window).await, ["b"]);
    let until = LogQuery {
        until_ms: Some(2_000),
        ..LogQuery::default()
    };
    assert_eq!(ids(until).await, ["a"]);

    let totals = |since_ms: i64, key: Option<&str>| {
        let store = &store;
        let query = UsageQuery {
            since_ms,
            key_id: key.map(str::to_string),
            group_by: None,
        };
        async move { store.usage(&query).await.unwrap().totals }
    };
    assert_eq!(
        totals(0, None).await,
        UsageTotals {
            requests: 3,
            failed_requests: 1,
            input_tokens: 20,
            output_tokens: 10,
            cost_picos: 3_500_001,
        },
        "the 500 is counted as a request, not as tokens or spend"
    );
    assert_eq!(totals(0, None).await.successful(), 2);
    let recent = totals(1_500, Some("k1")).await;
    assert_eq!((recent.requests, recent.failed_requests), (1, 1));
    assert_eq!((recent.input_tokens, recent.cost_picos), (0, 0));
    assert_eq!(totals(2_001, None).await, UsageTotals::default());
    // Sums that would overflow i64 are still exact.
    let huge: Vec<UsageRecord> = (0..3)
        .map(|i| UsageRecord {
            input_tokens: u64::MAX,
            cost_picos: i64::MAX,
            ..row(&format!("h{i}"), "big", "openai", 200, 0)
        })
        .collect();
    store.insert_usage(&huge, 3_000).await.unwrap();
    let big = totals(0, Some("big")).await;
    assert_eq!(big.requests, 3);
    assert_eq!(big.input_tokens, u64::MAX, "saturates instead of wrapping");
    assert_eq!(big.cost_picos, 3 * i128::from(i64::MAX));
}

fn usage_row(id: &str, key: &str, model: &str, status: u32, at_day: i64) -> UsageRecord {
    UsageRecord {
        request_id: id.into(),
        key_id: key.into(),
        provider: format!("p-{model}"),
        model: model.into(),
        status,
        input_tokens: 100,
        output_tokens: 10,
        cost_picos: 1_000_000 * (at_day + 1),
        ..UsageRecord::default()
    }
}

async fn usage_breakdowns_and_key_totals(db: TestDb) {
    let store = &db.store;
    store
        .change_config(ConfigChange::CreateKey(key("key_a", 1)), &ok)
        .await
        .unwrap();
    let day = 86_400_000;
    let base = 20_000 * day; // 2024-10-04
    store
        .insert_usage(
            &[
                usage_row("1", "key_a", "m1", 200, 0),
                usage_row("2", "key_a", "m2", 429, 0),
                usage_row("3", "key_b", "m1", 200, 0),
            ],
            base + 5,
        )
        .await
        .unwrap();
    let replay = UsageRecord {
        replay_of: "1".into(),
        ..usage_row("4", "key_a", "m1", 200, 1)
    };
    store
        .insert_usage(
            &[usage_row("5", "key_a", "m1", 201, 1), replay],
            base + day + 7,
        )
        .await
        .unwrap();
    let report = |group_by, key: Option<&str>| {
        let store = &store;
        let query = UsageQuery {
            since_ms: base,
            key_id: key.map(str::to_string),
            group_by: Some(group_by),
        };
        async move {
            let mut r = store.usage(&query).await.unwrap();
            r.groups.sort_by_key(|(k, _)| format!("{k:?}"));
            r
        }
    };
    let t = |requests, failed_requests, ok: u64, cost_picos| UsageTotals {
        requests,
        failed_requests,
        input_tokens: 100 * ok,
        output_tokens: 10 * ok,
        cost_picos,
    };
    let by_key = report(UsageGroupBy::Key, None).await;
    assert_eq!(
        by_key.totals,
        t(5, 1, 3, 4_000_000),
        "the replay is not charged"
    );
    assert_eq!(
        by_key.groups,
        [
            (
                UsageGroupKey::Key {
                    id: "key_a".into(),
                    name: "n".into()
                },
                t(4, 1, 2, 3_000_000)
            ),
            (
                UsageGroupKey::Key {
                    id: "key_b".into(),
                    name: String::new()
                },
                t(1, 0, 1, 1_000_000)
            ),
        ]
    );
    let by_model = report(UsageGroupBy::Model, Some("key_a")).await;
    assert_eq!(
        by_model.groups,
        [
            (UsageGroupKey::Model("m1".into()), t(3, 0, 2, 3_000_000)),
            (UsageGroupKey::Model("m2".into()), t(1, 1, 0, 0)),
        ]
    );
    let by_provider = report(UsageGroupBy::Provider, None).await;
    assert_eq!(
        by_provider.groups[1].0,
        UsageGroupKey::Provider("p-m2".into())
    );
    let by_day = report(UsageGroupBy::Day, None).await;
    assert_eq!(
        by_day.groups,
        [
            (UsageGroupKey::Day(20_000), t(3, 1, 2, 2_000_000)),
            (UsageGroupKey::Day(20_001), t(2, 0, 1, 2_000_000)),
        ]
    );
    assert_eq!(by_day.totals, by_key.totals);

    let keys = store.key_usage(None).await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys["key_a"],
        KeyUsage {
            requests: 4,
            failed_requests: 1,
            input_tokens: 200,
            output_tokens: 20,
            cost_picos: 3_000_000,
            last_used_at_ms: Some(base + day + 7),
        }
    );
    let one = store.key_usage(Some("key_b")).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one["key_b"].last_used_at_ms, Some(base + 5));
    assert!(store.key_usage(Some("key_x")).await.unwrap().is_empty());
}

async fn analytics_columns_bodies_and_metadata_search(db: TestDb) {
    let store = &db.store;
    let mut k = key("key_a", 1);
    k.name = "current".into();
    k.workspace_id = "team".into();
    store
        .change_config(ConfigChange::CreateKey(k), &ok)
        .await
        .unwrap();
    let full = UsageRecord {
        metadata_json: r#"{"user":"Alice_1","pct":"50%"}"#.into(),
        idempotency_key: "idem-1".into(),
        key_name: "at-the-time".into(),
        workspace_id: "ws".into(),
        request_body: br#"{"model":"m"}"#.to_vec(),
        response_body: vec![0xff, 0x00],
        bodies_truncated: true,
        ..usage_row("full", "key_a", "m", 200, 0)
    };
    let replay = UsageRecord {
        replay_of: "full".into(),
        idempotency_key: "idem-1".into(),
        metadata_json: r#"{"user":"bob"}"#.into(),
        ..usage_row("replay", "key_a", "m", 200, 0)
    };
    store
        .insert_usage(&[full.clone(), replay], 1)
        .await
        .unwrap();
    let listed = store
        .list_logs(&LogQuery {
            limit: 10,
            ..LogQuery::default()
        })
        .await
        .unwrap();
    let (r, f) = (&listed[0], &listed[1]);
    assert!(f.has_bodies && !r.has_bodies);
    assert!(f.record.request_body.is_empty(), "lists carry no bodies");
    assert_eq!(f.record.metadata_json, full.metadata_json);
    assert_eq!(
        (f.record.key_name.as_str(), f.record.workspace_id.as_str()),
        ("at-the-time", "ws")
    );
    assert_eq!(r.record.replay_of, "full");
    assert_eq!(
        (r.record.key_name.as_str(), r.record.workspace_id.as_str()),
        ("current", "team"),
        "rows without a key name show the key's"
    );
    let got = store.get_log("full").await.unwrap().unwrap();
    assert_eq!(got.record, full, "every field round-trips, bodies included");
    assert!(store.get_log("nope").await.unwrap().is_none());
    let bare = store.get_log("replay").await.unwrap().unwrap();
    assert!(bare.record.request_body.is_empty() && !bare.has_bodies);

    let search = |text: &str| {
        let store = &store;
        let query = LogQuery {
            limit: 10,
            metadata_contains: Some(text.into()),
            ..LogQuery::default()
        };
        async move {
            let rows = store.list_logs(&query).await.unwrap();
            rows.into_iter()
                .map(|e| e.record.request_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(search("alice").await, ["full"], "ASCII case-insensitive");
    assert_eq!(search("\"user\"").await, ["replay", "full"]);
    assert_eq!(search("50%").await, ["full"]);
    assert!(search("5%0").await.is_empty(), "% is literal");
    assert_eq!(search("e_1").await, ["full"]);
    assert!(search("Alice-1").await.is_empty(), "_ is literal");
    // A filter and the cursor together.
    let page = store
        .list_logs(&LogQuery {
            limit: 10,
            metadata_contains: Some("user".into()),
            before_request_id: Some("replay".into()),
            ..LogQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].record.request_id, "full");
}

async fn keys_are_updated_field_by_field(db: TestDb) {
    let store = &db.store;
    store
        .change_config(ConfigChange::CreateKey(key("key_a", 1)), &ok)
        .await
        .unwrap();
    let update = |name: Option<&str>, store_bodies| ConfigChange::UpdateKey {
        id: "key_a".into(),
        name: name.map(str::to_string),
        store_bodies,
        limits: Limits::default(),
    };
    let out = store
        .change_config(update(None, Some(true)), &ok)
        .await
        .unwrap();
    assert!(out.version.is_some());
    let Changed::Key(k) = out.changed else {
        panic!("not a key")
    };
    assert!(k.store_bodies);
    assert_eq!(k.name, "n");
    let out = store
        .change_config(update(Some("renamed"), None), &ok)
        .await
        .unwrap();
    assert!(out.version.is_some());
    let stored = store.get_key("key_a").await.unwrap().unwrap();
    assert_eq!(
        (stored.name.as_str(), stored.store_bodies),
        ("renamed", true)
    );
    assert_eq!(store.load_config().await.unwrap().keys, [stored]);
    let same = store
        .change_config(update(Some("renamed"), Some(true)), &ok)
        .await
        .unwrap();
    assert!(same.version.is_none(), "no change, no version");
    let missing = store
        .change_config(
            ConfigChange::UpdateKey {
                id: "key_x".into(),
                name: None,
                store_bodies: Some(true),
                limits: Limits::default(),
            },
            &ok,
        )
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))));
    assert!(store.get_key("key_x").await.unwrap().is_none());
}

async fn keys_are_found_by_hash(db: TestDb) {
    let store = &db.store;
    let k = key("key_a", 1);
    store
        .change_config(ConfigChange::CreateKey(k.clone()), &ok)
        .await
        .unwrap();
    assert_eq!(store.find_key_by_hash(&k.sha256).await.unwrap(), Some(k));
    assert_eq!(store.find_key_by_hash(&[0; 32]).await.unwrap(), None);
}

fn claim(request_id: &str, sha: u8) -> Claim {
    Claim {
        key_id: "key_1".into(),
        idempotency_key: "idem-1".into(),
        request_sha256: vec![sha; 32],
        request_id: request_id.into(),
    }
}

async fn claim_finish_replay_release_and_expiry(db: TestDb) {
    let s = db.store.idempotency();
    assert_eq!(
        s.claim(&claim("r1", 1), 1000).await.ok(),
        Some(ClaimState::Claimed)
    );
    // A second claim sees the first running, whatever its body.
    let running = ClaimState::Running {
        request_id: "r1".into(),
        request_sha256: vec![1; 32],
    };
    assert_eq!(
        s.claim(&claim("r2", 1), 1001).await.ok(),
        Some(running.clone())
    );
    assert_eq!(s.claim(&claim("r3", 2), 1002).await.ok(), Some(running));
    // Only the claiming request finishes it.
    let recorded = Recorded {
        status: 200,
        content_type: "application/json".into(),
        body: b"{\"ok\":true}".to_vec(),
    };
    s.finish("key_1", "idem-1", "r2", Some(&recorded), 1003)
        .await
        .unwrap();
    assert!(matches!(
        s.claim(&claim("r4", 1), 1004).await,
        Ok(ClaimState::Running { .. })
    ));
    s.finish("key_1", "idem-1", "r1", Some(&recorded), 1005)
        .await
        .unwrap();
    let done = s.claim(&claim("r5", 1), 1006).await.unwrap();
    assert_eq!(
        done,
        ClaimState::Done {
            request_id: "r1".into(),
            request_sha256: vec![1; 32],
            recorded: recorded.clone(),
        }
    );
    // Replayed for 24 h, then the key is free again.
    let later = 1005 + REPLAY_FOR_MS;
    assert_eq!(
        s.claim(&claim("r6", 1), later).await.ok(),
        Some(ClaimState::Claimed)
    );
    // A failed request releases its claim; a lapsed claim frees the key too.
    s.finish("key_1", "idem-1", "r6", None, later + 1)
        .await
        .unwrap();
    assert_eq!(
        s.claim(&claim("r7", 1), later + 2).await.ok(),
        Some(ClaimState::Claimed)
    );
    let lapsed = later + 2 + CLAIM_LAPSES_AFTER_MS;
    assert_eq!(
        s.claim(&claim("r8", 1), lapsed).await.ok(),
        Some(ClaimState::Claimed)
    );
}

async fn concurrent_claims_have_one_winner(db: TestDb) {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = db.store.clone();
            tokio::spawn(async move {
                store
                    .idempotency()
                    .claim(&claim(&format!("r{i}"), 1), 1000)
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        if matches!(t.await.unwrap().unwrap(), ClaimState::Claimed) {
            won += 1;
        }
    }
    assert_eq!(won, 1);
}

fn grant(owner: Owner, amount_picos: i64, external_id: Option<&str>) -> Grant {
    Grant {
        owner,
        amount_picos,
        source: "admin".into(),
        external_id: external_id.map(str::to_string),
        note: "n".into(),
        at_ms: 7,
    }
}

async fn grants_credit_once_per_external_id(db: TestDb) {
    let store = &db.store;
    let m = store.metering();
    store
        .change_config(ConfigChange::CreateKey(key("key_a", 1)), &ok)
        .await
        .unwrap();
    let a = || Owner::Key("key_a".into());
    assert_eq!(m.balance(&a()).await.unwrap(), None, "not metered");
    let missing = m.balance(&Owner::Key("key_x".into())).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );

    // The first credit makes the key metered: a configuration change.
    let v = store.load_config().await.unwrap().version;
    let first = m.grant(&grant(a(), 100, None)).await.unwrap();
    assert_eq!(
        first,
        Granted {
            balance_picos: 100,
            credited: true,
            new_version: Some(v + 1),
        }
    );
    let state = store.load_config().await.unwrap();
    assert_eq!(state.version, v + 1);
    assert!(state.keys[0].metered);

    let paid = m.grant(&grant(a(), 50, Some("evt_1"))).await.unwrap();
    assert_eq!((paid.balance_picos, paid.credited), (150, true));
    assert_eq!(paid.new_version, None, "already metered");
    let again = m.grant(&grant(a(), 50, Some("evt_1"))).await.unwrap();
    assert_eq!(
        again,
        Granted {
            balance_picos: 150,
            credited: false,
            new_version: None,
        },
        "an event is credited once"
    );
    for amount in [0, -5] {
        let bad = m.grant(&grant(a(), amount, None)).await;
        assert!(matches!(bad, Err(StoreError::Rejected(_))), "{bad:?}");
    }
    let overflow = m.grant(&grant(a(), i64::MAX, Some("evt_2"))).await;
    assert!(
        matches!(overflow, Err(StoreError::Rejected(_))),
        "{overflow:?}"
    );
    // The refused event was not recorded: it can still be credited.
    let later = m.grant(&grant(a(), 1, Some("evt_2"))).await.unwrap();
    assert_eq!((later.balance_picos, later.credited), (151, true));
    let nobody = m.grant(&grant(Owner::Key("key_x".into()), 1, None)).await;
    assert!(matches!(nobody, Err(StoreError::NotFound(_))), "{nobody:?}");
    assert_eq!(store.load_config().await.unwrap().version, v + 1);

    let team = Owner::Workspace("default".into());
    let w = m.grant(&grant(team.clone(), 10, None)).await.unwrap();
    assert_eq!(w.new_version, Some(v + 2));
    assert_eq!(m.balance(&team).await.unwrap(), Some(10));
    assert_eq!(
        m.key_balances().await.unwrap(),
        [("key_a".to_string(), 151)].into_iter().collect()
    );
    assert_eq!(m.total_key_balance().await.unwrap(), 151);
    store
        .change_config(
            ConfigChange::RevokeKey {
                id: "key_a".into(),
                at_ms: 9,
            },
            &ok,
        )
        .await
        .unwrap();
    assert_eq!(m.total_key_balance().await.unwrap(), 0, "active keys only");
}

async fn usage_is_charged_once_to_key_and_workspace(db: TestDb) {
    let store = &db.store;
    let m = store.metering();
    let metered = KeyRow {
        metered: true,
        ..key("key_a", 1)
    };
    store
        .change_config(ConfigChange::CreateKey(metered), &ok)
        .await
        .unwrap();
    store
        .change_config(ConfigChange::CreateKey(key("key_b", 2)), &ok)
        .await
        .unwrap();
    let (a, team) = (
        Owner::Key("key_a".into()),
        Owner::Workspace("default".into()),
    );
    assert_eq!(m.balance(&a).await.unwrap(), Some(0));
    m.grant(&grant(a.clone(), 1000, None)).await.unwrap();
    m.grant(&grant(team.clone(), 500, None)).await.unwrap();

    let cost = |id: &str, key: &str, picos: i64| UsageRecord {
        request_id: id.into(),
        key_id: key.into(),
        status: 200,
        cost_picos: picos,
        ..UsageRecord::default()
    };
    let replay = UsageRecord {
        replay_of: "r1".into(),
        ..cost("r2", "key_a", 100)
    };
    let batch = vec![
        cost("r1", "key_a", 300),
        replay,
        cost("r3", "key_a", 0),
        cost("r4", "key_b", 50),
    ];
    store.insert_usage(&batch, 1).await.unwrap();
    assert_eq!(m.balance(&a).await.unwrap(), Some(700), "replays are free");
    assert_eq!(
        m.balance(&team).await.unwrap(),
        Some(150),
        "key_b's workspace too"
    );
    assert_eq!(m.balance(&Owner::Key("key_b".into())).await.unwrap(), None);
    store.insert_usage(&batch, 2).await.unwrap();
    assert_eq!(m.balance(&a).await.unwrap(), Some(700), "charged once");
    // A batch charging two parts of one key, past its balance: it stops at zero.
    store
        .insert_usage(&[cost("r5", "key_a", 600), cost("r6", "key_a", 600)], 3)
        .await
        .unwrap();
    assert_eq!(m.balance(&a).await.unwrap(), Some(0));
    assert_eq!(m.balance(&team).await.unwrap(), Some(0));
}

async fn topup_sessions_round_trip(db: TestDb) {
    let store = &db.store;
    let m = store.metering();
    store
        .change_config(ConfigChange::CreateKey(key("key_a", 1)), &ok)
        .await
        .unwrap();
    let session = TopupSession {
        session_id: "cs_1".into(),
        key_id: "key_a".into(),
        amount_picos: 5_000_000,
        checkout_url: "https://pay.example/cs_1".into(),
        created_at_ms: 10,
        expires_at_ms: 20,
    };
    m.insert_topup_session(&session).await.unwrap();
    let dup = m.insert_topup_session(&session).await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists(_))), "{dup:?}");
    assert_eq!(m.topup_session("cs_1").await.unwrap(), Some(session));
    assert_eq!(m.topup_session("cs_2").await.unwrap(), None);
}

async fn token_minutes_count_started_minutes(db: TestDb) {
    let store = &db.store;
    let at = |id: &str, key: &str, minute: i64, tokens: u64| UsageRecord {
        request_id: id.into(),
        key_id: key.into(),
        status: 200,
        started_at_unix_ms: minute * 60_000 + 59_999,
        input_tokens: tokens,
        output_tokens: tokens.saturating_mul(2),
        ..UsageRecord::default()
    };
    let replay = UsageRecord {
        replay_of: "a".into(),
        ..at("r", "k", 5, 1000)
    };
    store
        .insert_usage(&[at("old", "k", 1, 7)], 60_000)
        .await
        .unwrap();
    store
        .insert_usage(
            &[
                at("a", "k", 5, 1),
                at("b", "k", 5, 2),
                at("c", "k", 6, u64::MAX),
                at("other", "k2", 5, 9),
                replay,
            ],
            400_000,
        )
        .await
        .unwrap();
    let minutes = store.metering().token_minutes("k", 100_000).await.unwrap();
    assert_eq!(
        minutes,
        [
            MinuteTokens {
                minute: 5,
                input: 3,
                output: 6,
            },
            MinuteTokens {
                minute: 6,
                input: i64::MAX as u64,
                output: i64::MAX as u64,
            },
        ]
    );
    assert!(store
        .metering()
        .token_minutes("nobody", 0)
        .await
        .unwrap()
        .is_empty());
}
