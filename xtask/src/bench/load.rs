//! The load generator: [oha](https://github.com/hatoo/oha), installed from crates.io into
//! `target/bench-tools` on first use (`cargo install --locked oha --root target/bench-tools`).
//!
//! Why oha: it installs with cargo alone (no root, no system package), has a fixed-rate mode
//! (`-q`, with latency correction for coordinated omission) and prints a JSON report with
//! percentiles. Every run is bounded by `-z` (duration).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::Paths;

/// What one load run measured. Latencies in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadResult {
    pub p50_us: f64,
    pub p99_us: f64,
    pub rps: f64,
    /// Responses that were not 200, plus transport errors.
    pub failures: u64,
    pub total: u64,
}

/// How to drive one run.
#[derive(Clone, Debug)]
pub struct Load {
    pub url: String,
    pub body: String,
    pub key: Option<String>,
    pub connections: usize,
    pub duration: Duration,
    /// Fixed request rate (requests per second); `None`: as fast as possible.
    pub rate: Option<u32>,
}

/// The installed oha binary and how it wants to be asked for JSON.
pub struct Oha {
    bin: PathBuf,
    json_flag: Vec<&'static str>,
}

impl Oha {
    /// Installs oha into `target/bench-tools` unless it is already there.
    pub fn ensure(paths: &Paths) -> Result<Oha> {
        let root = paths.root.join("target").join("bench-tools");
        let bin = root.join("bin").join("oha");
        if !bin.exists() {
            crate::run(
                crate::cargo(paths)
                    .args(["install", "--locked", "oha", "--root"])
                    .arg(&root),
            )?;
        }
        let help = Command::new(&bin)
            .arg("--help")
            .output()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let help = String::from_utf8_lossy(&help.stdout);
        // oha ≥ 1.5 has `--output-format json`; older releases `--json`.
        let json_flag = if help.contains("--output-format") {
            vec!["--output-format", "json"]
        } else {
            vec!["--json"]
        };
        Ok(Oha { bin, json_flag })
    }

    pub fn version(&self) -> String {
        Command::new(&self.bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "oha (version unknown)".into())
    }

    /// The command line of a run (also what BENCHMARKS.md shows).
    pub fn command(&self, load: &Load) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--no-tui")
            .args(&self.json_flag)
            .arg("-z")
            .arg(format!("{}ms", load.duration.as_millis()))
            .arg("-c")
            .arg(load.connections.to_string())
            .args(["-m", "POST", "-H", "content-type: application/json"]);
        if let Some(key) = &load.key {
            cmd.arg("-H").arg(format!("authorization: Bearer {key}"));
        }
        if let Some(rate) = load.rate {
            cmd.arg("-q")
                .arg(rate.to_string())
                .arg("--latency-correction");
        }
        cmd.arg("-d").arg(&load.body).arg(&load.url);
        cmd
    }

    pub fn run(&self, load: &Load) -> Result<LoadResult> {
        let output = self
            .command(load)
            .output()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        if !output.status.success() {
            bail!(
                "oha against {} failed ({}): {}",
                load.url,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        parse_report(&String::from_utf8_lossy(&output.stdout))
            .with_context(|| format!("oha report for {}", load.url))
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }
}

/// Reads oha's JSON report (latencies are in seconds there).
pub fn parse_report(text: &str) -> Result<LoadResult> {
    let json: Value = serde_json::from_str(text.trim()).context("report is not JSON")?;
    let seconds = |v: &Value| v.as_f64().map(|s| s * 1e6);
    let percentile = |name: &str| {
        seconds(&json["latencyPercentiles"][name])
            .with_context(|| format!("no latencyPercentiles.{name}"))
    };
    let rps = json["summary"]["requestsPerSec"]
        .as_f64()
        .context("no summary.requestsPerSec")?;
    let mut ok = 0;
    let mut total = 0;
    if let Some(codes) = json["statusCodeDistribution"].as_object() {
        for (code, count) in codes {
            let count = count.as_u64().unwrap_or(0);
            total += count;
            if code == "200" {
                ok += count;
            }
        }
    }
    if let Some(errors) = json["errorDistribution"].as_object() {
        // Requests cut off by the end of the `-z` window are not failures of the candidate.
        for (error, count) in errors {
            if !error.contains("aborted due to deadline") {
                total += count.as_u64().unwrap_or(0);
            }
        }
    }
    Ok(LoadResult {
        p50_us: percentile("p50")?,
        p99_us: percentile("p99")?,
        rps,
        failures: total - ok,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_parsed() -> Result<()> {
        let report = r#"{"summary":{"successRate":1.0,"requestsPerSec":1234.5},
            "latencyPercentiles":{"p50":0.0002,"p99":0.001},
            "statusCodeDistribution":{"200":100,"401":2},
            "errorDistribution":{"aborted due to deadline":1,"connection reset":3}}"#;
        let r = parse_report(report)?;
        assert!((r.p50_us - 200.0).abs() < 1e-6);
        assert!((r.p99_us - 1000.0).abs() < 1e-6);
        assert_eq!((r.total, r.failures), (105, 5));
        Ok(())
    }
}
