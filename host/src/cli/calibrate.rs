//! `bitnet-host calibrate`: every candidate that would run the model on
//! this machine's CPU (bundled CPU builds, a llama-server on PATH, the
//! built-in engine) is started on it through the supervisor, as a chat
//! would start it, and timed on the same completion by its own `timings`.
//! The figures go to `<state>/calibration.json`, and from then on the CPU
//! candidates are ordered by them (`select --explain` says so).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bitnet_supervisor::{Candidate, Job, JobSpec, Measured, Policy};
use serde_json::{json, Value};

use crate::calibration::Entry;
use crate::cli::out;
use crate::dirs::HostDirs;

pub struct Args {
    pub model: Option<PathBuf>,
    pub rounds: usize,
    pub json: bool,
}

/// Tokens each timed completion decodes.
const DECODE_TOKENS: u32 = 64;
/// The longest one completion may take (a big model on a slow CPU).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// The prompt every candidate processes, in its own tokens: plain prose,
/// repeated or cut to the reference turn's prompt length.
const PROMPT: &str = "A browser extension asks a local model to summarise the page the user is reading. \
The page is long: a report on river levels across three seasons, with tables of daily readings, notes \
on the gauges that failed, and a discussion of how the spring floods compared with those of earlier \
years. The extension sends the text in one request and waits for the first words of the answer; the \
user sees nothing until they come, so the time spent reading the prompt matters as much as the speed \
of the words that follow. Write a short summary that names the seasons, the highest reading, the \
gauges that failed and what the report concludes about the floods.";

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Prompt and decode tokens/s of `rounds` completions (after one to warm
/// up), medians, from the server's own `timings`. The prompt is `PROMPT`
/// in the server's own tokens, repeated or cut to `prompt_tokens`.
async fn measure(
    job: &Job,
    proxy: &bitnet_supervisor::Proxy,
    rounds: usize,
    prompt_tokens: usize,
) -> anyhow::Result<(f64, f64)> {
    let ep = job.ready().await?;
    let t: Value = proxy.post_json(&ep, "/tokenize", &json!({"content": PROMPT}), REQUEST_TIMEOUT).await?;
    let ids: Vec<Value> = t["tokens"].as_array().cloned().unwrap_or_default();
    anyhow::ensure!(!ids.is_empty(), "the server's /tokenize gave no tokens: {t}");
    let prompt: Vec<Value> = ids.iter().cycle().take(prompt_tokens).cloned().collect();
    let body =
        |n: u32| json!({"prompt": prompt, "n_predict": n, "temperature": 0, "ignore_eos": true, "cache_prompt": false});
    proxy.post_json(&ep, "/completion", &body(4), REQUEST_TIMEOUT).await?;
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        let v: Value = proxy.post_json(&ep, "/completion", &body(DECODE_TOKENS), REQUEST_TIMEOUT).await?;
        let t = &v["timings"];
        let (Some(p), Some(d)) = (t["prompt_per_second"].as_f64(), t["predicted_per_second"].as_f64()) else {
            anyhow::bail!(
                "the server's answer has no timings: {}",
                v.to_string().chars().take(300).collect::<String>()
            );
        };
        anyhow::ensure!(p > 0.0 && d > 0.0, "the server reported no speed: {t}");
        pp.push(p);
        tg.push(d);
    }
    Ok((median(&mut pp), median(&mut tg)))
}

/// Prompt tokens for a context of `n_ctx`: the reference turn's prompt,
/// or what leaves room for the answer in a small context.
fn prompt_len(n_ctx: usize) -> usize {
    let room = n_ctx.saturating_sub(DECODE_TOKENS as usize + 8);
    (bitnet_supervisor::merit::TURN_PROMPT_TOKENS as usize).min(room).max(8)
}

pub fn calibrate(a: Args) -> anyhow::Result<()> {
    let dirs = HostDirs::resolve().ok_or_else(|| anyhow::anyhow!("no home directory for the host's folders"))?;
    let _guard = crate::logging::init(Some(&dirs), "warn");
    let (config, config_error) = crate::backend::load_config(Some(&dirs));
    if let Some(e) = config_error {
        anyhow::bail!("{e}");
    }
    let report = crate::hardware::prober(Some(&dirs)).report(false)?;
    let model = crate::cli::chat::resolve_model(&dirs, a.model, false)?;
    let gguf = bitnet_ternary::Gguf::open(&model)?;
    let format = gguf
        .weight_format()
        .ok_or_else(|| anyhow::anyhow!("{} has no weight tensors (a vocabulary-only file?)", model.display()))?;
    let model_ctx = gguf
        .architecture()
        .and_then(|a| gguf.get(&format!("{a}.context_length")))
        .and_then(bitnet_ternary::gguf::Value::as_u64)
        .unwrap_or(u64::MAX);
    drop(gguf);
    let sel = crate::backend::selection(Some(&dirs), &config, &report, Some(&format));
    let cands: Vec<Candidate> = sel.candidates.into_iter().filter(bitnet_supervisor::merit::on_cpu).collect();
    anyhow::ensure!(
        !cands.is_empty(),
        "nothing here runs {format} models on the CPU (see `bitnet-host select --explain`)"
    );
    let settings = config.settings(crate::backend::physical_cores());
    let prompt_tokens = prompt_len((settings.ctx_size as u64).min(model_ctx) as usize);
    let family = crate::calibration::family(&report);
    eprintln!(
        "Calibrating {} candidate(s) on {} ({format}, {} threads, {prompt_tokens}-token prompt, {DECODE_TOKENS} decoded, {} round(s) each)",
        cands.len(),
        model.display(),
        settings.threads,
        a.rounds
    );
    let rt = crate::cli::runtime()?;
    let proxy = bitnet_supervisor::Proxy::new();
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut entries = Vec::new();
    let mut failed = Vec::new();
    for c in cands {
        let stamp = crate::calibration::launch_stamp(&c.launch);
        let spec = JobSpec {
            model: model.clone(),
            candidates: vec![c.clone()],
            settings: settings.clone(),
            policy: Policy::default(),
            builtin_exe: std::env::current_exe().ok(),
            remote_api_key: None,
            log_dir: Some(crate::backend::server_logs_dir(&dirs)),
            run_dir: Some(crate::backend::run_dir(&dirs)),
        };
        let r = rt.block_on(async {
            let job = Job::start(spec);
            let r = measure(&job, &proxy, a.rounds, prompt_tokens).await;
            job.stop().await;
            r
        });
        match (r, stamp) {
            (Ok((pp, tg)), Some(binary)) => {
                eprintln!("  {:<28} prompt {pp:>8.1} tok/s   decode {tg:>7.2} tok/s", c.id);
                let measured = Measured {
                    candidate: c.id.clone(),
                    family: family.clone(),
                    format: format.clone(),
                    prompt_tok_s: pp,
                    decode_tok_s: tg,
                    threads: settings.threads as u32,
                    source: format!(
                        "calibrated here {date}: {}, median of {} completion(s)",
                        crate::backend::model_name(&dirs.data.join("models"), &model),
                        a.rounds.max(1)
                    ),
                };
                entries.push(Entry { measured, binary });
            }
            (Ok(_), None) => failed.push((c.id.clone(), "its binary cannot be read to stamp the figures".to_string())),
            (Err(e), _) => {
                eprintln!("  {:<28} failed: {e:#}", c.id);
                failed.push((c.id.clone(), format!("{e:#}")));
            }
        }
    }
    let saved = if entries.is_empty() {
        None
    } else {
        Some(crate::calibration::record(&dirs, &report, entries.clone()).context("saving the calibration")?)
    };
    let after = crate::backend::selection(Some(&dirs), &config, &report, Some(&format));
    if a.json {
        let v = json!({
            "model": model,
            "format": format,
            "family": family,
            "measured": entries.iter().map(|e| &e.measured).collect::<Vec<_>>(),
            "failed": failed.iter().map(|(id, why)| json!({"candidate": id, "error": why})).collect::<Vec<_>>(),
            "saved": saved,
            "order": after.candidates.iter().map(|c| &c.id).collect::<Vec<_>>(),
            "merit": after.merit,
        });
        out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    } else {
        let mut text = String::new();
        for e in &entries {
            let m = &e.measured;
            text.push_str(&format!(
                "{:<28} prompt {:>8.1} tok/s  decode {:>7.2} tok/s  a {}+{}-token turn {:>6.1} s\n",
                m.candidate,
                m.prompt_tok_s,
                m.decode_tok_s,
                bitnet_supervisor::merit::TURN_PROMPT_TOKENS,
                bitnet_supervisor::merit::TURN_ANSWER_TOKENS,
                m.turn_secs()
            ));
        }
        for (id, why) in &failed {
            text.push_str(&format!("{id:<28} not measured: {why}\n"));
        }
        if let Some(p) = &saved {
            text.push_str(&format!("Saved in {}\n", p.display()));
        }
        let order: Vec<&str> = after.candidates.iter().map(|c| c.id.as_str()).collect();
        text.push_str(&format!("Order for {format} models now: {}\n{}\n", order.join(", "), after.merit.why));
        out(&text);
    }
    anyhow::ensure!(failed.is_empty() || !entries.is_empty(), "no candidate could be measured");
    Ok(())
}
