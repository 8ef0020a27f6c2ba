//! The `tokenrouter` command line: `serve` runs the control plane, the other verbs are Admin
//! API clients (plus the local `envoy-bootstrap`).
//!
//! Output: human-readable by default, JSON with `--json` (`TOKENROUTER_JSON=1`). Errors: human
//! `error: …` on stderr, JSON `{"error":{"type","message"}}` on stdout. Exit codes: 0 ok,
//! 1 user error, 2 network, 3 server.
//!
//! Every verb talks to the gRPC Admin API with the admin token, except `balance` and `topup`
//! when a gateway key is given (`--api-key` / `TOKENROUTER_API_KEY`): those then act for that
//! key over the REST API (`--rest-url` / `TOKENROUTER_REST_URL`), which is where a gateway key
//! may read its own balance and top itself up.
//!
//! `env` and `test` talk to the gateway itself (`--gateway-url` / `TOKENROUTER_GATEWAY_URL`)
//! with a gateway key: `--key`, else `TOKENROUTER_API_KEY`, else the one `keys create` cached in
//! `<data-dir>/last_key`.

mod billing;
mod client;
mod envoy;
mod error;
mod firewall;
mod gateway;
mod keys;
mod limits;
mod logs;
mod models;
mod output;
mod preview;
mod providers;
mod rest;
mod routing;
mod rules;
mod serve;
mod usage;
mod workspaces;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::{CliError, ErrorKind};
use output::Output;

/// tokenrouter: an LLM gateway inside Envoy. `serve` runs the control plane; the other verbs
/// manage it over gRPC.
#[derive(Debug, Parser)]
#[command(name = "tokenrouter", version, propagate_version = true)]
pub struct Cli {
    /// Print JSON instead of text.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TOKENROUTER_JSON",
        value_parser = clap::builder::BoolishValueParser::new(),
        default_value_t = false,
        num_args = 0,
        default_missing_value = "true"
    )]
    json: bool,

    /// Control plane gRPC URL.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TOKENROUTER_API_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    api_url: String,

    /// Admin token [default: read from <data-dir>/admin_token].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TOKENROUTER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,

    /// A gateway key (`sk-tr-…`): `balance` and `topup` then act for this key, over the REST
    /// API.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TOKENROUTER_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,

    /// Control plane REST URL (used with --api-key).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TOKENROUTER_REST_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    rest_url: String,

    /// Control plane data directory (database, admin token, master key).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TOKENROUTER_DATA_DIR",
        default_value = crate::config::DEFAULT_DATA_DIR
    )]
    data_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (gRPC: Admin, FilterSync, ADS, reflection; REST: health, metrics,
    /// demo provider).
    Serve(serve::ServeArgs),
    /// Gateway keys (`sk-tr-…`).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Workspaces: groups of keys sharing limits and, optionally, a balance.
    #[command(subcommand)]
    Workspaces(workspaces::WorkspacesCommand),
    /// A balance: a key's, a workspace's, or the total over every active key (with
    /// TOKENROUTER_API_KEY: that key's).
    Balance(billing::BalanceArgs),
    /// A checkout URL to add credit to a key. It never pays anything: a person must open the
    /// URL and pay; the credit arrives when the payment provider confirms it.
    Topup(billing::TopupArgs),
    /// Add credit by hand (operators).
    #[command(subcommand)]
    Credit(billing::CreditCommand),
    /// Upstream LLM providers.
    #[command(subcommand)]
    Providers(providers::ProvidersCommand),
    /// Firewall rules: block, mask or warn on prompts, responses and metadata.
    #[command(subcommand)]
    Firewall(firewall::FirewallCommand),
    /// The model catalogue: list it (prices, capabilities, quality, tier, status), change a
    /// model, add one.
    Models(models::ModelsArgs),
    /// Routing rules: match requests (task, text, metadata, mode, model, headers) and set the
    /// provider, model or mode.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// Per-key routing configurations: fallback chains, traffic splits, advanced rules.
    #[command(subcommand)]
    Routing(routing::RoutingCommand),
    /// Print OPENAI_API_KEY and OPENAI_BASE_URL for a gateway key, for `>> .env` (key: --key,
    /// else TOKENROUTER_API_KEY, else the one `keys create` cached).
    Env(gateway::EnvArgs),
    /// Send a tiny chat completion through the gateway to check a key end to end (402 = top
    /// up).
    Test(gateway::TestArgs),
    /// Recent gateway requests, newest first, filtered; `logs get ID` shows one with its bodies.
    Logs(logs::LogsArgs),
    /// Spend over the last N days (successful requests only), optionally by key, model,
    /// provider or day.
    Usage(usage::UsageArgs),
    /// Where a request would go and why (mode, tier, attempts, rule trace), without sending it.
    Preview(preview::PreviewArgs),
    /// Render the Envoy bootstrap (local; needs no running control plane).
    EnvoyBootstrap(envoy::EnvoyBootstrapArgs),
}

/// Global options every verb may use.
#[derive(Debug)]
pub struct Globals {
    pub api_url: String,
    pub admin_token: Option<String>,
    /// A gateway key, for the verbs a key may run on its own behalf.
    pub api_key: Option<String>,
    pub rest_url: String,
    pub data_dir: PathBuf,
}

/// Parses the command line, runs the verb and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let out = Output::new(cli.json);
    let globals = Globals {
        api_url: cli.api_url,
        admin_token: cli.admin_token.filter(|t| !t.trim().is_empty()),
        api_key: cli
            .api_key
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty()),
        rest_url: cli.rest_url,
        data_dir: cli.data_dir,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return out.error(&CliError::new(
                ErrorKind::Server,
                format!("cannot start the async runtime: {e}"),
            ))
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args, &globals).await,
            Command::Keys(cmd) => keys::run(cmd, &globals, &out).await,
            Command::Workspaces(cmd) => workspaces::run(cmd, &globals, &out).await,
            Command::Balance(args) => billing::balance(args, &globals, &out).await,
            Command::Topup(args) => billing::topup(args, &globals, &out).await,
            Command::Credit(cmd) => billing::credit(cmd, &globals, &out).await,
            Command::Providers(cmd) => providers::run(cmd, &globals, &out).await,
            Command::Firewall(cmd) => firewall::run(cmd, &globals, &out).await,
            Command::Models(args) => models::run(args, &globals, &out).await,
            Command::Rules(cmd) => rules::run(cmd, &globals, &out).await,
            Command::Routing(cmd) => routing::run(cmd, &globals, &out).await,
            Command::Env(args) => gateway::env(args, &globals, &out),
            Command::Test(args) => gateway::test(args, &globals, &out).await,
            Command::Logs(args) => logs::run(args, &globals, &out).await,
            Command::Usage(args) => usage::run(args, &globals, &out).await,
            Command::Preview(args) => preview::run(args, &globals, &out).await,
            Command::EnvoyBootstrap(args) => envoy::run(args, &globals, &out),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => out.error(&e),
    }
}

/// clap's errors: help and version exit 0; usage errors exit 1 (clap's own default is 2, which
/// our contract reserves for network errors).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as K;
    if matches!(e.kind(), K::DisplayHelp | K::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let json = std::env::args().any(|a| a == "--json")
        || std::env::var("TOKENROUTER_JSON")
            .map(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
    if json {
        let rendered = e.to_string();
        let message = rendered
            .lines()
            .next()
            .unwrap_or("invalid usage")
            .trim_start_matches("error: ")
            .to_string();
        Output::new(true).error(&CliError::new(ErrorKind::Usage, message))
    } else {
        let _ = e.print();
        ExitCode::from(ErrorKind::Usage.exit_code())
    }
}
