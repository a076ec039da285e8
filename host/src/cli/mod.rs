//! The command line. Subcommands are thin: each parses its arguments and
//! calls into the library. `anyhow` lives here and nowhere deeper.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::dirs::HostDirs;
use crate::native::{self, Caller};
use crate::App;

mod calibrate;
pub mod chat;
mod ps;
pub mod setup;
mod update;

#[derive(Debug, Parser)]
#[command(
    name = "bitnet-host",
    version,
    about = "Runs local BitNet language models for browser extensions (native messaging host)",
    long_about = "Runs local BitNet language models for browser extensions.\n\n\
        Browsers start it with their own arguments (a chrome-extension:// origin, or Firefox's \
        manifest path and add-on id); it then speaks native messaging on stdin/stdout."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Speak native messaging on stdin/stdout, as when a browser starts the host
    Native,
    /// Print the folders the host reads and writes
    Paths,
    /// Show what this machine has: CPU features, memory, CUDA, Vulkan, Metal
    Hardware {
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
        /// Probe again instead of using the cached vendor sections
        #[arg(long)]
        refresh: bool,
    },
    /// Show which server builds can run here, best first, and why the others cannot
    Select {
        /// A model file or a name as `models` lists it: its weight format decides what can load it
        #[arg(long, short = 'm', conflicts_with = "format")]
        model: Option<std::path::PathBuf>,
        /// The model's weight format (i2_s, tq2_0, tq1_0, f16, ...)
        #[arg(long)]
        format: Option<String>,
        /// Also list every skipped candidate with its reason
        #[arg(long)]
        explain: bool,
        /// Print the selection as JSON
        #[arg(long)]
        json: bool,
    },
    /// Chat with a model: one answer to PROMPT, or a conversation when no
    /// prompt is given (the same path as an extension: probe, select,
    /// launch, stream)
    #[command(visible_alias = "run")]
    Chat {
        /// What to say; omit for an interactive conversation
        prompt: Option<String>,
        /// A GGUF model file, or a name as `models` lists it (default: the
        /// installed default, or a generated random-weight model)
        #[arg(long, short = 'm')]
        model: Option<std::path::PathBuf>,
        /// Most tokens in an answer
        #[arg(long, short = 'n', default_value_t = 128)]
        max_tokens: u32,
        /// Sampling temperature; 0 always picks the likeliest token (default: the server's)
        #[arg(long)]
        temperature: Option<f32>,
        /// Sampling seed: the same seed and prompt give the same answer
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run the per-user daemon in the foreground (browser connections relay to
    /// it unless BITNET_HOST_DAEMON=0; it exits after BITNET_DAEMON_IDLE_MS
    /// without connections)
    Daemon,
    /// Start the daemon at login (systemd user unit, launchd agent, Windows logon task)
    Service {
        /// install (copying this binary to the data folder first), uninstall, or status
        #[arg(value_enum)]
        action: ServiceAction,
    },
    /// Register the host with the browsers on this machine (native-messaging manifests)
    Install(crate::cli::setup::InstallArgs),
    /// Remove exactly what `install` wrote
    Uninstall {
        /// Print what was removed as JSON
        #[arg(long)]
        json: bool,
    },
    /// Check the installation, the hardware, the backend and the models; say how to fix each problem
    Doctor {
        /// Print every check as JSON
        #[arg(long)]
        json: bool,
    },
    /// Measure the built-in engine on a model: prompt and generation tokens/s (like llama-bench)
    Bench {
        /// A GGUF model file, or a name as `models` lists it (default: as for `chat`)
        #[arg(long, short = 'm')]
        model: Option<std::path::PathBuf>,
        /// Prompt tokens to process (llama-bench's -p)
        #[arg(long = "n-prompt", short = 'p', default_value_t = 128)]
        prompt: usize,
        /// Tokens to generate (llama-bench's -n)
        #[arg(long = "n-gen", short = 'n', default_value_t = 128)]
        generate: usize,
        /// Threads (default: physical cores); give several to compare, e.g. -t 1,2
        #[arg(long, short = 't', value_delimiter = ',')]
        threads: Vec<usize>,
        /// Also decode this many sequences together, one token each per pass, as the
        /// batcher does for concurrent requests (aggregate tokens/s); e.g. --streams 1,2,4,8
        #[arg(long, value_delimiter = ',')]
        streams: Vec<usize>,
        /// Tokens already in the context before the prompt and the generation (llama-bench's -d)
        #[arg(long = "n-depth", short = 'd', default_value_t = 0)]
        depth: usize,
        /// How the KV cache stores keys: f16, f32, or q8_0 (as the runner's)
        #[arg(long = "cache-type-k", alias = "ctk", default_value = "f16")]
        cache_type_k: String,
        /// How the KV cache stores values: the keys' type, or f16 with q8_0 keys
        #[arg(long = "cache-type-v", alias = "ctv", default_value = "f16")]
        cache_type_v: String,
    },
    /// Time every candidate that runs a model on this CPU (bundled builds, the built-in
    /// engine) and order them by what they measured here from then on
    Calibrate {
        /// A GGUF model file, or a name as `models` lists it (default: as for `chat`)
        #[arg(long, short = 'm')]
        model: Option<std::path::PathBuf>,
        /// Timed completions per candidate (the median counts)
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Print the figures and the new order as JSON
        #[arg(long)]
        json: bool,
    },
    /// Download a model into the models folder (verified, resumable): a catalog name
    /// (`pull --list`), a URL, or a Hugging Face owner/repo with --file
    Pull {
        /// bitnet-2b (or another name `pull --list` shows), https://..., or owner/repo
        #[arg(required_unless_present = "list")]
        source: Option<String>,
        /// The file in owner/repo to download (e.g. ggml-model-i2_s.gguf)
        #[arg(long)]
        file: Option<String>,
        /// List the catalog: known BitNet models by short name
        #[arg(long, conflicts_with_all = ["source", "file", "sha256"])]
        list: bool,
        /// Expected sha256 (otherwise the server's, when it gives one)
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Show what the daemon has loaded: model, backend, pid, memory, when it unloads, who is connected
    Ps {
        /// Print it as JSON
        #[arg(long)]
        json: bool,
    },
    /// Stop the per-user daemon once its running requests finish
    Stop,
    /// Update the host and its server bundle from the signed release (or a local bundle zip)
    Update {
        /// Only say what is available
        #[arg(long)]
        check: bool,
        /// stable, or beta (pre-releases too); default from config.toml [update]
        #[arg(long, value_enum)]
        channel: Option<crate::update::Channel>,
        /// Install this BitNet-Release.zip instead of downloading one
        #[arg(long)]
        bundle: Option<std::path::PathBuf>,
        /// The model the new servers must load in their health check
        /// (default: the running daemon's model, else the built-in default)
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// Servers only, leave the host binary alone
        #[arg(long)]
        servers_only: bool,
        /// Go back to the previously installed server bundle
        #[arg(long, conflicts_with_all = ["check", "bundle"])]
        rollback: bool,
        /// Print the outcome as JSON
        #[arg(long)]
        json: bool,
    },
    /// List the models in the models folder, with size, format and architecture
    #[command(visible_aliases = ["list", "ls"])]
    Models {
        /// Print the list as JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove a model from the models folder (by its name as `models` lists it)
    Rm {
        /// The model's name as `models` lists it (e.g. bitnet-2b/ggml-model-i2_s.gguf)
        name: String,
    },
    /// Show the last lines the model servers wrote (the supervisor's log)
    Logs {
        /// How many lines
        #[arg(long, short = 'l', default_value_t = 50)]
        lines: usize,
    },
    /// Run the built-in engine as a llama-server-compatible HTTP server
    /// (the supervisor starts it like any bundled build)
    Runner(RunnerArgs),
    /// Internal: the short-lived child that loads vendor libraries
    #[command(hide = true)]
    Probe {
        #[arg(long)]
        child: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ServiceAction {
    /// Register the daemon to start at login, and start it
    Install,
    /// Remove the registration
    Uninstall,
    /// Say whether it is registered and running
    Status,
}

/// llama-server's flags, as the supervisor passes them.
#[derive(Debug, clap::Args)]
struct RunnerArgs {
    /// The GGUF model file to serve
    #[arg(long, short = 'm')]
    model: std::path::PathBuf,
    /// The address to listen on (loopback unless you mean otherwise)
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port to listen on
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Compute threads (default: physical cores)
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Context size in tokens, per request
    #[arg(long = "ctx-size", short = 'c', default_value_t = 4096)]
    ctx_size: usize,
    /// Requests served at once (llama-server's --parallel / -np)
    #[arg(long, alias = "np", default_value_t = 4)]
    parallel: usize,
    /// The key clients must send (visible to every local user in `ps`:
    /// prefer --api-key-file).
    #[arg(long = "api-key")]
    api_key: Option<String>,
    /// A file holding the key (what the supervisor passes: owner-only).
    #[arg(long = "api-key-file", conflicts_with = "api_key")]
    api_key_file: Option<std::path::PathBuf>,
    /// Accepted for compatibility; the engine runs on the CPU.
    #[arg(long = "n-gpu-layers", alias = "ngl")]
    n_gpu_layers: Option<u32>,
    /// How the KV cache stores keys: f16 (half the memory), f32, or q8_0
    /// (int8 per 32 with a scale: 0.56x f16's bytes, faster attention;
    /// values f16)
    #[arg(long = "cache-type-k", alias = "ctk", default_value = "f16")]
    cache_type_k: String,
    /// How the KV cache stores values: the keys' type, or f16 with q8_0 keys
    #[arg(long = "cache-type-v", alias = "ctv", default_value = "f16")]
    cache_type_v: String,
}

/// Writes the CLI's own output. Only reachable from subcommands that are not
/// the browser-facing mode.
pub(crate) fn out(text: &str) {
    use std::io::Write;
    #[allow(clippy::disallowed_methods)] // CLI output, never in native mode
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
}

/// Native mode's runtime: one thread. Its work is I/O (the pipes have
/// threads of their own; heavy work goes to the blocking pool or a child),
/// and a request that stays on the thread that read it answers without a
/// hop between workers.
fn native_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

fn run_daemon() -> anyhow::Result<()> {
    let dirs = HostDirs::resolve().ok_or_else(|| anyhow::anyhow!("no home directory for the host's folders"))?;
    let _guard = crate::logging::init(Some(&dirs), "info");
    let app = Arc::new(App::new(Some(dirs.clone())));
    let rt = runtime()?;
    let listening = |app: Arc<App>| {
        tokio::spawn(crate::update::background_checks(app.clone(), dirs.clone()));
        if let Some(port) = crate::http_api::port(&app) {
            tokio::spawn(crate::http_api::serve(app, port));
        }
    };
    let won = rt.block_on(crate::daemon::serve(app, &dirs, listening))?;
    if !won {
        eprintln!("bitnet-host: a daemon is already running for this user");
    }
    Ok(())
}

fn run_native(caller: Caller) -> anyhow::Result<()> {
    let dirs = HostDirs::resolve();
    let _guard = crate::logging::init(dirs.as_ref(), "warn");
    if crate::daemon::enabled() && dirs.as_ref().is_some_and(crate::daemon::usable) {
        let dirs = dirs.ok_or_else(|| anyhow::anyhow!("no home directory for the host's folders"))?;
        tracing::info!(?caller, "relaying to the daemon");
        let rt = native_runtime()?;
        let r = rt.block_on(crate::daemon::relay(dirs, crate::native::caller_json(&caller)));
        rt.shutdown_timeout(std::time::Duration::from_millis(50));
        return r;
    }
    let app = Arc::new(App::new(dirs));
    let rt = native_runtime()?;
    rt.block_on(native::serve_stdio(app, caller));
    // A blocking stdin read may still be parked in the runtime's pool (after
    // SIGTERM); do not wait for it.
    rt.shutdown_timeout(std::time::Duration::from_millis(50));
    Ok(())
}

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(caller) = native::browser_launch(&args) {
        return exit(run_native(caller));
    }
    let cli = Cli::parse();
    exit(match cli.command {
        Command::Native => run_native(Caller::Manual),
        Command::Paths => paths(),
        Command::Hardware { json, refresh } => hardware(json, refresh),
        Command::Probe { child } => probe_child(child),
        Command::Select { model, format, explain, json } => select(model.as_deref(), format.as_deref(), explain, json),
        Command::Logs { lines } => logs(lines),
        Command::Models { json } => models(json),
        Command::Stop => stop(),
        Command::Ps { json } => ps::ps(json),
        Command::Update { check, channel, bundle, model, servers_only, rollback, json } => {
            crate::cli::update::update(crate::cli::update::Args {
                check,
                channel,
                bundle,
                model,
                servers_only,
                rollback,
                json,
            })
        }
        Command::Rm { name } => rm(&name),
        Command::Pull { source, file, list, sha256 } => match source {
            Some(source) if !list => pull(&source, file.as_deref(), sha256.as_deref()).map(|_| ()),
            _ => catalog_list(),
        },
        Command::Bench { model, prompt, generate, threads, streams, depth, cache_type_k, cache_type_v } => {
            kv_type(&cache_type_k, &cache_type_v)
                .and_then(|kv| bench(model.as_deref(), prompt, generate, depth, kv, threads, streams))
        }
        Command::Calibrate { model, rounds, json } => {
            crate::cli::calibrate::calibrate(crate::cli::calibrate::Args { model, rounds, json })
        }
        Command::Install(a) => crate::cli::setup::install(a),
        Command::Daemon => run_daemon(),
        Command::Service { action } => crate::cli::setup::service(match action {
            ServiceAction::Install => "install",
            ServiceAction::Uninstall => "uninstall",
            ServiceAction::Status => "status",
        }),
        Command::Uninstall { json } => crate::cli::setup::uninstall(json),
        Command::Doctor { json } => crate::cli::setup::doctor(json),
        Command::Chat { prompt, model, max_tokens, temperature, seed } => {
            crate::cli::chat::run(crate::cli::chat::ChatArgs { prompt, model, max_tokens, temperature, seed })
        }
        Command::Runner(args) => runner(args),
    })
}

fn hardware(json: bool, refresh: bool) -> anyhow::Result<()> {
    let dirs = HostDirs::resolve();
    let _guard = crate::logging::init(dirs.as_ref(), "warn");
    let report = crate::hardware::prober(dirs.as_ref()).report(refresh)?;
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        out(&crate::hardware::table(&report));
    }
    Ok(())
}

fn select(model: Option<&std::path::Path>, format: Option<&str>, explain: bool, json: bool) -> anyhow::Result<()> {
    use bitnet_supervisor::Launch;
    let dirs = HostDirs::resolve();
    let _guard = crate::logging::init(dirs.as_ref(), "warn");
    let (config, config_error) = crate::backend::load_config(dirs.as_ref());
    if let Some(e) = config_error {
        anyhow::bail!("{e}");
    }
    let report = crate::hardware::prober(dirs.as_ref()).report(false)?;
    let format = match model {
        Some(m) => {
            let home = dirs.as_ref().ok_or_else(|| anyhow::anyhow!("no home directory for the host's folders"))?;
            let m = &crate::cli::chat::model_arg(home, m)?;
            let g = bitnet_ternary::Gguf::open(m)?;
            let f = g.weight_format();
            if f.is_none() {
                anyhow::bail!("{} has no weight tensors (a vocabulary-only file?)", m.display());
            }
            f
        }
        None => format.map(str::to_lowercase),
    };
    let sel = crate::backend::selection(dirs.as_ref(), &config, &report, format.as_deref());
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(&sel)?));
        return Ok(());
    }
    let mut text = String::from("Candidates, best first:\n");
    if sel.candidates.is_empty() {
        text.push_str("  (none: nothing here can load this model)\n");
    }
    for (i, c) in sel.candidates.iter().enumerate() {
        let how = match &c.launch {
            Launch::Bundled { path } | Launch::Path { path } => path.display().to_string(),
            Launch::Builtin => {
                // The kernels the engine will pick on the reported CPU.
                let forced = std::env::var("BITNET_KERNEL").unwrap_or_default();
                let isa = bitnet_ternary::kernels::isa_for(&report.cpu.arch, &|f| report.cpu.has(f), &forced);
                format!("the host's own engine (bitnet-host runner): {}", isa.describe())
            }
            Launch::Remote { url } => url.clone(),
        };
        text.push_str(&format!("  {}. {:<28} {}\n", i + 1, c.id, how));
        if explain && bitnet_supervisor::job::key_on_command_line(c) {
            text.push_str(&format!(
                "     {:<28} takes its API key on the command line, which every local user can read \
                 ({{api_key}} in its catalog args; {{api_key_file}} keeps it in an owner-only file)\n",
                ""
            ));
        }
    }
    if sel.candidates.len() > 1 {
        text.push_str(&format!("{}\n", sel.merit.why));
    }
    if explain {
        for m in &sel.merit.figures {
            text.push_str(&format!(
                "  {:<30} prompt {:.1} tok/s, decode {:.2} tok/s, {} threads ({})\n",
                m.candidate, m.prompt_tok_s, m.decode_tok_s, m.threads, m.source
            ));
        }
        text.push_str("Skipped:\n");
        for s in &sel.skipped {
            text.push_str(&format!("  {:<30} {}\n", s.id, s.reason));
        }
    }
    out(&text);
    Ok(())
}

/// Runs in the probe child: vendor libraries are loaded here and nowhere
/// else. Prints the vendor sections as JSON.
fn probe_child(child: bool) -> anyhow::Result<()> {
    anyhow::ensure!(child, "`probe` is internal; use `bitnet-host hardware`");
    let sections = bitnet_probe::child::probe_vendors_here();
    out(&serde_json::to_string(&sections)?);
    Ok(())
}

/// The engine's KV cache type from llama-server's `--cache-type-k/-v`:
/// the same type for both (f16 or f32), or q8_0 keys with f16 values.
fn kv_type(k: &str, v: &str) -> anyhow::Result<bitnet_ternary::model::KvType> {
    bitnet_supervisor::config::check_cache_types(k, v).map_err(anyhow::Error::msg)?;
    // Checked: k names the engine's cache type (q8_0 keys mean f16 values).
    bitnet_ternary::model::KvType::parse(k).ok_or_else(|| anyhow::anyhow!("cache type {k}"))
}

#[allow(clippy::too_many_arguments)]
fn bench(
    model: Option<&std::path::Path>,
    p: usize,
    n: usize,
    depth: usize,
    kv: bitnet_ternary::model::KvType,
    threads: Vec<usize>,
    streams: Vec<usize>,
) -> anyhow::Result<()> {
    let dirs = HostDirs::resolve().ok_or_else(|| anyhow::anyhow!("no home directory for the host's folders"))?;
    let model = &crate::cli::chat::resolve_model(&dirs, model.map(std::path::Path::to_path_buf), false)?;
    let started = std::time::Instant::now();
    let mut m = bitnet_ternary::model::Model::load(model, None)?;
    m.kv_type = kv;
    let load_s = started.elapsed().as_secs_f64();
    let threads =
        if threads.is_empty() { vec![sysinfo::System::physical_core_count().unwrap_or(1).max(1)] } else { threads };
    let bytes = m.bytes_per_token();
    let held = match m.weights_format() {
        f if f == m.format => String::new(),
        f => format!(" (held as {f})"),
    };
    out(&format!(
        "model {}: {} {} layers, {} weights{held}, {} output, loaded in {load_s:.1} s, {:.0} MB read per token, kernels {}\n",
        model.display(),
        m.hp.arch,
        m.hp.n_layer,
        m.format,
        m.output_format(),
        bytes as f64 / 1e6,
        bitnet_ternary::kernels::in_use()
    ));
    out(&format!("KV cache {}, {depth} tokens of context first\n", kv.name()));
    out("threads   pp tok/s   tg tok/s   tg GB/s\n");
    for &t in &threads {
        let s = bitnet_ternary::bench::speed(&m, depth, p, n, t.max(1));
        out(&format!(
            "{:>7} {:>10.2} {:>10.2} {:>9.2}\n",
            s.threads,
            s.pp_tokens_per_s,
            s.tg_tokens_per_s,
            s.tg_tokens_per_s * bytes as f64 / 1e9
        ));
    }
    if !streams.is_empty() {
        // A short prompt each, then n steps of one token per stream.
        out(&format!("batched decode after a {}-token prompt each, {n} steps: aggregate tokens/s\n", p.min(32)));
        out("threads  streams  tg tok/s  vs 1 stream\n");
        for &t in &threads {
            let mut single = None;
            for &s in &streams {
                let rate = bitnet_ternary::bench::batched_decode(&m, s.max(1), p.clamp(1, 32), n.max(1), t.max(1));
                let base = *single.get_or_insert(if s <= 1 { rate } else { f64::NAN });
                out(&format!("{:>7} {:>8} {:>9.2} {:>11.2}x\n", t.max(1), s.max(1), rate, rate / base));
            }
        }
    }
    Ok(())
}

/// Download a model with a progress bar; prints and returns where it is.
pub(crate) fn pull(source: &str, file: Option<&str>, sha256: Option<&str>) -> anyhow::Result<std::path::PathBuf> {
    let dirs = HostDirs::resolve().ok_or_else(|| anyhow::anyhow!("no home directory for the host's folders"))?;
    let _guard = crate::logging::init(Some(&dirs), "warn");
    let rt = runtime()?;
    let (bar, mut show) = crate::cli::update::progress_bar("model");
    let path = rt.block_on(crate::pull::pull(&dirs, source, file, sha256, &mut show));
    bar.finish_and_clear();
    let path = path?;
    out(&format!("{}\n", path.display()));
    Ok(path)
}

/// `pull --list`: the catalog, and which entries are here already.
fn catalog_list() -> anyhow::Result<()> {
    let dirs = HostDirs::resolve().ok_or_else(|| anyhow::anyhow!("no home directory for the host's folders"))?;
    let models = dirs.data.join("models");
    let mut t = format!("{:<14} {:>9}  {:<10} {}\n", "NAME", "SIZE", "HERE", "MODEL");
    for m in crate::catalog::CATALOG {
        t.push_str(&format!(
            "{:<14} {:>9}  {:<10} {} ({}/{})\n",
            m.name,
            m.approx_bytes.map(|b| format!("{:.1} GB", b as f64 / 1e9)).unwrap_or("?".into()),
            if m.path(&models).is_file() { "pulled" } else { "-" },
            m.title,
            m.repo,
            m.file
        ));
    }
    t.push_str("download one: bitnet-host pull <NAME>\n");
    out(&t);
    Ok(())
}

/// The model a running daemon has loaded (never starts one; a daemon that
/// does not answer within 5 s counts as none).
pub(crate) async fn daemon_model(dirs: &HostDirs) -> Option<std::path::PathBuf> {
    let ask = crate::daemon::control_request(dirs, "status");
    let v = tokio::time::timeout(std::time::Duration::from_secs(5), ask).await.ok()??;
    v["result"]["server"]["model"]["path"].as_str().map(std::path::PathBuf::from)
}

/// Ask the daemon to retire and wait until it has exited.
fn stop() -> anyhow::Result<()> {
    let dirs = HostDirs::resolve().ok_or_else(|| anyhow::anyhow!("no home directory for the host's folders"))?;
    let rt = runtime()?;
    let Some(reply) = rt.block_on(crate::daemon::control_request(&dirs, "retire")) else {
        out("no daemon is running\n");
        return Ok(());
    };
    let pid = reply["result"]["pid"].as_i64().ok_or_else(|| anyhow::anyhow!("the daemon answered {reply}"))?;
    let t = std::time::Instant::now();
    while process_alive(pid) {
        anyhow::ensure!(
            t.elapsed() < crate::daemon::RETIRE_DRAIN + std::time::Duration::from_secs(5),
            "daemon {pid} is still finishing requests"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    out(&format!("stopped daemon {pid}\n"));
    Ok(())
}

#[cfg(unix)]
fn process_alive(pid: i64) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[cfg(windows)]
fn process_alive(pid: i64) -> bool {
    use windows_sys::Win32::Foundation::{CloseHandle, STILL_ACTIVE};
    use windows_sys::Win32::System::Threading::{GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION};
    // SAFETY: a handle we open, query and close.
    unsafe {
        let h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid as u32);
        if h.is_null() {
            return false;
        }
        let mut code = 0u32;
        let running = GetExitCodeProcess(h, &mut code) != 0 && code == STILL_ACTIVE as u32;
        CloseHandle(h);
        running
    }
}

#[cfg(not(any(unix, windows)))]
fn process_alive(_: i64) -> bool {
    false
}

fn models(json: bool) -> anyhow::Result<()> {
    let dirs = HostDirs::resolve().ok_or_else(|| anyhow::anyhow!("no home directory for the host's folders"))?;
    let root = dirs.data.join("models");
    let list: Vec<serde_json::Value> = crate::backend::scan_models(&root)
        .into_iter()
        .map(|p| {
            let g = bitnet_ternary::Gguf::open(&p);
            serde_json::json!({
                "name": p.strip_prefix(&root).unwrap_or(&p),
                "bytes": std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0),
                "format": g.as_ref().ok().and_then(|g| g.weight_format()),
                "architecture": g.as_ref().ok().and_then(|g| g.architecture().map(String::from)),
                "error": g.err().map(|e| e.to_string()),
            })
        })
        .collect();
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(&list)?));
        return Ok(());
    }
    let mut t = String::new();
    for m in &list {
        t.push_str(&format!(
            "{:<48} {:>9.1} MB  {:<8} {}\n",
            m["name"].as_str().unwrap_or(""),
            m["bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
            m["format"].as_str().unwrap_or("?"),
            m["architecture"].as_str().or(m["error"].as_str()).unwrap_or("")
        ));
    }
    if list.is_empty() {
        t.push_str(&format!("no models in {}\n", root.display()));
    }
    out(&t);
    Ok(())
}

/// Remove `<data>/models/<name>` (and its partial download); nothing
/// outside the models folder.
fn rm(name: &str) -> anyhow::Result<()> {
    let dirs = HostDirs::resolve().ok_or_else(|| anyhow::anyhow!("no home directory for the host's folders"))?;
    let root = dirs.data.join("models");
    let rel = std::path::Path::new(name);
    let inside = rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    anyhow::ensure!(inside && !name.is_empty(), "`{name}` is not a model name inside {}", root.display());
    let path = root.join(rel);
    // Neither the file nor a folder on the way may be a symlink: a link in
    // models/ must not lead a delete outside it.
    let mut at = root.clone();
    for c in rel.components() {
        at.push(c);
        let m =
            std::fs::symlink_metadata(&at).map_err(|_| anyhow::anyhow!("no model `{name}` in {}", root.display()))?;
        anyhow::ensure!(
            !m.file_type().is_symlink(),
            "{} is a symlink; rm removes only files inside {}",
            at.display(),
            root.display()
        );
    }
    anyhow::ensure!(path.is_file(), "no model `{name}` in {}", root.display());
    std::fs::remove_file(&path)?;
    let _ = std::fs::remove_file(bitnet_installer::download::part_path(&path));
    out(&format!("removed {}\n", path.display()));
    Ok(())
}

fn logs(lines: usize) -> anyhow::Result<()> {
    let d = HostDirs::resolve().ok_or_else(|| anyhow::anyhow!("no home directory"))?;
    let path = crate::backend::server_logs_dir(&d).join("server.log");
    match crate::backend::tail_file(&path, lines) {
        Ok(text) => {
            out(&text);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("no server has run yet ({} does not exist)", path.display())
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// The built-in engine's server (llama-server's HTTP subset).
fn runner(a: RunnerArgs) -> anyhow::Result<()> {
    if a.host != "127.0.0.1" && a.host != "localhost" && a.host != "::1" {
        eprintln!("warning: listening on {} exposes the engine beyond this machine", a.host);
    }
    // The engine's compute threads: --threads (the supervisor passes the
    // configured count), else one per physical core.
    let threads = a.threads.or_else(sysinfo::System::physical_core_count).unwrap_or(1).max(1);
    bitnet_ternary::pool::configure_global(threads);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(a.parallel.max(1) + 1)
        .enable_all()
        .build()?;
    let kv_type = kv_type(&a.cache_type_k, &a.cache_type_v)?;
    let opts = bitnet_ternary::server::ServerOptions {
        model: a.model,
        host: if a.host == "localhost" { "127.0.0.1".into() } else { a.host },
        port: a.port,
        api_key: match &a.api_key_file {
            Some(f) => Some(read_key_file(f)?),
            None => a.api_key,
        },
        ctx_size: a.ctx_size,
        parallel: a.parallel,
        kv_type,
    };
    let _ = a.n_gpu_layers;
    rt.block_on(bitnet_ternary::server::serve(opts))?;
    Ok(())
}

/// A key from a file: a regular file, at most 4 KiB, whitespace trimmed.
fn read_key_file(path: &std::path::Path) -> anyhow::Result<String> {
    let key = bitnet_safefs::read_to_string(path, 4096).context("the key file")?;
    let key = key.trim();
    anyhow::ensure!(!key.is_empty(), "the key file {} is empty", path.display());
    Ok(key.to_string())
}

fn paths() -> anyhow::Result<()> {
    let d = HostDirs::resolve().ok_or_else(|| anyhow::anyhow!("no home directory to put the host's folders in"))?;
    out(&format!(
        "data    {}\nconfig  {}\ncache   {}\nstate   {}\nlogs    {}\n",
        d.data.display(),
        d.config.display(),
        d.cache.display(),
        d.state.display(),
        d.logs().display()
    ));
    Ok(())
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bitnet-host: {e:#}");
            ExitCode::FAILURE
        }
    }
}
