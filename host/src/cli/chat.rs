//! `bitnet-host chat`: the README's main job. It takes the extension's path
//! through the host (hardware probe, selection, supervisor, proxy) and
//! prints the answer as it streams. Without a model it generates the
//! built-in default: random weights, said plainly, for trying the machinery.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use serde_json::{json, Value};

use crate::cli::out;
use crate::dirs::HostDirs;
use crate::App;

pub struct ChatArgs {
    pub prompt: Option<String>,
    pub model: Option<PathBuf>,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
    pub seed: Option<u64>,
}

/// Where the generated default model lives.
pub fn default_model_path(dirs: &HostDirs) -> PathBuf {
    dirs.data.join("models").join(crate::backend::GENERATED_DEFAULT)
}

/// The seed of the default model: fixed, so every install has the same one.
const DEFAULT_SEED: u64 = 0xB17E7;

/// A model given on the command line: a file (relative to here or
/// absolute), else a name as `bitnet-host models` lists it.
pub(crate) fn model_arg(dirs: &HostDirs, m: &std::path::Path) -> anyhow::Result<PathBuf> {
    if m.is_file() {
        return std::path::absolute(m).with_context(|| format!("{}", m.display()));
    }
    let models = dirs.data.join("models");
    crate::backend::resolve_model_name(&models, &m.to_string_lossy()).ok_or_else(|| {
        anyhow::anyhow!("no model file `{}` here or in {} (see `bitnet-host models`)", m.display(), models.display())
    })
}

/// The model to use: the one named; else the one the daemon has loaded;
/// else a pulled catalog model; else, on a terminal (`offer`), the offer to
/// download the catalog's first model; else the generated default (made on
/// first use, atomically), said plainly.
pub(crate) fn resolve_model(dirs: &HostDirs, named: Option<PathBuf>, offer: bool) -> anyhow::Result<PathBuf> {
    if let Some(m) = named {
        return model_arg(dirs, &m);
    }
    if let Some(loaded) = daemon_model(dirs) {
        eprintln!("Using the model the daemon has loaded: {}", loaded.display());
        return Ok(loaded);
    }
    let models = dirs.data.join("models");
    let path = default_model_path(dirs);
    if let Some(found) = crate::backend::default_model(&models).filter(|p| *p != path) {
        let name = crate::backend::model_name(&models, &found);
        match crate::catalog::pulled(&models).into_iter().find(|(_, p)| *p == found) {
            Some((m, _)) => eprintln!("Using {} ({})", m.name, m.title),
            None => eprintln!("Using {name} (the first model in {})", models.display()),
        }
        return Ok(found);
    }
    if offer && !path.is_file() {
        if let Some(pulled) = offer_pull()? {
            return Ok(pulled);
        }
    }
    if !path.is_file() {
        eprintln!(
            "No model given: using the built-in default, a small BitNet b1.58 model with RANDOM weights\n\
             generated on this machine ({}). It exercises the whole machinery but writes gibberish.\n\
             For real answers: `bitnet-host pull {}`, or --model <file.gguf>.",
            path.display(),
            crate::catalog::CATALOG[0].name
        );
        let bytes = bitnet_ternary::writer::random_model(&bitnet_ternary::writer::Shape::default_model(), DEFAULT_SEED);
        bitnet_ternary::writer::write_atomic(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    } else {
        eprintln!(
            "Using the built-in random-weight default model (gibberish by design); `bitnet-host pull {}` gets a real one.",
            crate::catalog::CATALOG[0].name
        );
    }
    Ok(path)
}

/// The model a running daemon has loaded, when its file is still there.
fn daemon_model(dirs: &HostDirs) -> Option<PathBuf> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    rt.block_on(crate::cli::daemon_model(dirs)).filter(|p| p.is_file())
}

/// On a terminal with nothing pulled: ask to download the catalog's first
/// model. Some(path) once pulled; None when declined (or not a terminal).
fn offer_pull() -> anyhow::Result<Option<PathBuf>> {
    use std::io::IsTerminal;
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Ok(None);
    }
    let m = &crate::catalog::CATALOG[0];
    let size = m.approx_bytes.map(|b| format!(", {:.1} GB", b as f64 / 1e9)).unwrap_or_default();
    eprint!("No model here yet. Download {} ({}{size}) from Hugging Face now? [Y/n] ", m.title, m.name);
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !wants(&answer) {
        return Ok(None);
    }
    crate::cli::pull(m.name, None, None).map(Some)
}

/// A yes to "[Y/n]": empty (Enter) or anything starting with y.
fn wants(answer: &str) -> bool {
    let a = answer.trim().to_ascii_lowercase();
    a.is_empty() || a.starts_with('y')
}

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let dirs = HostDirs::resolve().ok_or_else(|| anyhow::anyhow!("no home directory for the host's folders"))?;
    let _guard = crate::logging::init(Some(&dirs), "warn");
    let model = resolve_model(&dirs, args.model.clone(), true)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let app = Arc::new(App::new(Some(dirs)));
    let result = rt.block_on(session(&app, &model, &args));
    // Stop the server before the runtime goes.
    rt.block_on(async {
        app.backend.unload().await;
    });
    result
}

async fn session(app: &App, model: &std::path::Path, args: &ChatArgs) -> anyhow::Result<()> {
    let info = crate::backend::inspect_model(model).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = app.hardware().await.map_err(|e| anyhow::anyhow!(e))?;
    let job = app.backend.load(&report, info).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let ep = match job.ready().await {
        Ok(ep) => ep,
        Err(e) => {
            let tail = job.logs(12).join("\n  ");
            anyhow::bail!("{e}\n  last server output:\n  {tail}");
        }
    };
    eprintln!("[{} on {}]", model.file_name().map(|s| s.to_string_lossy()).unwrap_or_default(), ep.candidate);
    let mut history: Vec<Value> = Vec::new();
    let ask = async |history: &mut Vec<Value>, text: String| -> anyhow::Result<()> {
        history.push(json!({"role": "user", "content": text}));
        let _lease = job.lease();
        let mut body = json!({"messages": history, "max_tokens": args.max_tokens, "stream": true});
        if let Some(t) = args.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(s) = args.seed {
            body["seed"] = json!(s);
        }
        let started = std::time::Instant::now();
        let mut sse = app
            .backend
            .proxy
            .post_sse(&ep, "/v1/chat/completions", &body, app.backend.settings().request_timeout)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut answer = String::new();
        let mut pieces = 0u32;
        let mut first: Option<std::time::Instant> = None;
        let mut prompt_tokens = None;
        let mut timings = Value::Null;
        while let Some(chunk) = sse.next().await {
            let chunk = chunk.map_err(|e| anyhow::anyhow!("{e}"))?;
            prompt_tokens = chunk["usage"]["prompt_tokens"].as_u64().or(prompt_tokens);
            if chunk["timings"].is_object() {
                timings = chunk["timings"].clone();
            }
            if let Some(p) = chunk["choices"][0]["delta"]["content"].as_str() {
                first.get_or_insert_with(std::time::Instant::now);
                answer.push_str(p);
                pieces += 1;
                out(&printable(p));
            }
        }
        out("\n");
        eprintln!(
            "[{}]",
            server_stats(pieces, &timings, started, first).unwrap_or_else(|| stats(
                pieces,
                prompt_tokens,
                started,
                first
            ))
        );
        history.push(json!({"role": "assistant", "content": answer}));
        job.touch();
        Ok(())
    };
    match &args.prompt {
        Some(p) => ask(&mut history, p.clone()).await,
        None => {
            eprintln!("(/help for commands, /bye or Ctrl-D to leave)");
            let stdin = std::io::stdin();
            loop {
                eprint!("> ");
                let _ = std::io::stderr().flush();
                let mut line = String::new();
                if stdin.lock().read_line(&mut line)? == 0 {
                    // Ctrl-D: leave the shell's prompt on a line of its own.
                    eprintln!();
                    return Ok(());
                }
                match command(&line) {
                    Line::Empty => {}
                    Line::Bye => return Ok(()),
                    Line::Help => eprint!("{HELP}"),
                    Line::Unknown(c) => eprint!("unknown command {c}\n{HELP}"),
                    Line::Clear => {
                        history.retain(|m| m["role"] == "system");
                        eprintln!("(conversation cleared)");
                    }
                    Line::System(text) => {
                        history.retain(|m| m["role"] != "system");
                        history.insert(0, json!({"role": "system", "content": text}));
                        eprintln!("(system message set)");
                    }
                    Line::Say(text) => ask(&mut history, text).await?,
                }
            }
        }
    }
}

const HELP: &str =
    "  /bye           leave (also /exit, /quit, Ctrl-D)\n  /clear         forget the conversation so far\n  \
                    /system TEXT   set the system message\n  /help          this list\n";

/// What a line typed in the conversation asks for.
#[derive(Debug, PartialEq)]
enum Line {
    Empty,
    Bye,
    Help,
    Clear,
    System(String),
    Unknown(String),
    Say(String),
}

/// Lines starting with `/` are commands, never sent to the model.
fn command(line: &str) -> Line {
    let line = line.trim();
    let Some(cmd) = line.strip_prefix('/') else {
        return if line.is_empty() { Line::Empty } else { Line::Say(line.to_string()) };
    };
    let (name, rest) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
    match name {
        "bye" | "exit" | "quit" => Line::Bye,
        "help" | "?" => Line::Help,
        "clear" => Line::Clear,
        "system" if !rest.trim().is_empty() => Line::System(rest.trim().to_string()),
        _ => Line::Unknown(format!("/{name}")),
    }
}

/// The line after an answer: tokens, time to the first, prompt speed (the
/// prompt's tokens over the time to the first token, when the server says
/// how many there were) and decode speed.
fn stats(pieces: u32, prompt: Option<u64>, started: std::time::Instant, first: Option<std::time::Instant>) -> String {
    let Some(first) = first else { return format!("no tokens in {:.2} s", started.elapsed().as_secs_f64()) };
    stats_line(pieces, prompt, (first - started).as_secs_f64(), first.elapsed().as_secs_f64())
}

/// The stats line from the server's own `timings` (llama-server's shape:
/// the prompt tokens it computed, those its cache answered, and its prompt
/// and decode speeds), when it sends them.
fn server_stats(
    pieces: u32,
    t: &Value,
    started: std::time::Instant,
    first: Option<std::time::Instant>,
) -> Option<String> {
    let (prompt_n, prompt_rate, decode_rate) =
        (t["prompt_n"].as_u64()?, t["prompt_per_second"].as_f64()?, t["predicted_per_second"].as_f64()?);
    let ttft = first.map(|f| (f - started).as_secs_f64() * 1e3)?;
    let cached = match t["cache_n"].as_u64() {
        Some(c) if c > 0 => format!(" (+{c} cached)"),
        _ => String::new(),
    };
    Some(format!(
        "{pieces} tokens, first after {ttft:.0} ms, prompt {prompt_n} tokens{cached} at {prompt_rate:.1} tokens/s, decode {decode_rate:.1} tokens/s"
    ))
}

fn stats_line(pieces: u32, prompt: Option<u64>, ttft_s: f64, decode_s: f64) -> String {
    let rate = if pieces > 1 && decode_s > 0.0 { f64::from(pieces - 1) / decode_s } else { 0.0 };
    let prompt = match prompt {
        Some(n) if ttft_s > 0.0 => format!("prompt {n} tokens at {:.1} tokens/s, ", n as f64 / ttft_s),
        _ => String::new(),
    };
    format!("{pieces} tokens, first after {:.0} ms, {prompt}decode {rate:.1} tokens/s", ttft_s * 1e3)
}

/// Model text for a terminal: control characters (escape sequences could
/// rewrite the screen) become U+FFFD; newlines and tabs stay.
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() && c != '\n' && c != '\t' { '\u{FFFD}' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::{command, Line};

    #[test]
    fn slash_lines_are_commands_and_never_reach_the_model() {
        assert_eq!(command("  /bye \n"), Line::Bye);
        assert_eq!(command("/exit"), Line::Bye);
        assert_eq!(command("/help"), Line::Help);
        assert_eq!(command("/clear"), Line::Clear);
        assert_eq!(command("/system  Be brief. "), Line::System("Be brief.".into()));
        assert_eq!(command("/system"), Line::Unknown("/system".into()));
        assert_eq!(command("/frobnicate x"), Line::Unknown("/frobnicate".into()));
        assert_eq!(command("   "), Line::Empty);
        assert_eq!(command("hello /bye"), Line::Say("hello /bye".into()));
    }

    #[test]
    fn the_stats_line_gives_first_token_time_and_prompt_and_decode_speed() {
        assert_eq!(
            super::stats_line(11, Some(40), 0.5, 2.0),
            "11 tokens, first after 500 ms, prompt 40 tokens at 80.0 tokens/s, decode 5.0 tokens/s"
        );
        assert_eq!(super::stats_line(1, None, 0.25, 0.0), "1 tokens, first after 250 ms, decode 0.0 tokens/s");
    }

    #[test]
    fn enter_or_yes_accepts_the_download_and_anything_else_declines() {
        for yes in ["\n", "y\n", " Yes ", "Y"] {
            assert!(super::wants(yes), "{yes:?}");
        }
        for no in ["n\n", "no", "later"] {
            assert!(!super::wants(no), "{no:?}");
        }
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(super::printable("a\x1b[2Jb\n\tc\x07"), "a\u{FFFD}[2Jb\n\tc\u{FFFD}");
    }
}
