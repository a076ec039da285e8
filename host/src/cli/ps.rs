//! `bitnet-host ps`: what the running daemon has loaded and who is
//! connected (Ollama's `ps`). Asks a running daemon; never starts one.

use serde_json::{json, Value};

use crate::cli::out;
use crate::dirs::HostDirs;

pub fn ps(json_out: bool) -> anyhow::Result<()> {
    let dirs = HostDirs::resolve().ok_or_else(|| anyhow::anyhow!("no home directory for the host's folders"))?;
    let rt = crate::cli::runtime()?;
    let Some(reply) = rt.block_on(crate::daemon::control_request(&dirs, "status")) else {
        if json_out {
            out(&format!("{}\n", json!({"daemon": null, "model": null})));
        } else {
            out("no daemon is running\n");
        }
        return Ok(());
    };
    let st = reply.get("result").ok_or_else(|| anyhow::anyhow!("the daemon answered {reply}"))?;
    let doc = summary(st);
    if json_out {
        out(&format!("{}\n", serde_json::to_string_pretty(&doc)?));
    } else {
        out(&table(&doc));
    }
    Ok(())
}

/// The status reply cut down to what `ps` shows.
fn summary(st: &Value) -> Value {
    let server = &st["server"];
    let model = (server["state"] != "stopped" && !server["model"].is_null()).then(|| {
        json!({
            "name": server.get("name").cloned().unwrap_or_else(|| server["model"]["path"].clone()),
            "path": server["model"]["path"],
            "format": server["model"]["format"],
            "state": server["state"],
            "backend": server["candidate"],
            "pid": server["pid"],
            "rss_bytes": server["resources"]["rss_bytes"],
            "running": server["running"],
            "unload_in_ms": server["unload_in_ms"],
        })
    });
    json!({
        "daemon": {
            "pid": st["pid"],
            "version": st["version"],
            "uptime_ms": st["uptime_ms"],
            "connections": st["connections"],
        },
        "model": model,
    })
}

fn table(doc: &Value) -> String {
    let d = &doc["daemon"];
    let conns = d["connections"].as_array().cloned().unwrap_or_default();
    // The `ps` connection itself is one of them.
    let others: Vec<&Value> = conns.iter().filter(|c| c.get("browser").is_some()).collect();
    let mut t = format!(
        "daemon {} (version {}, up {}), {} browser connection{}\n",
        d["pid"],
        d["version"].as_str().unwrap_or("?"),
        human_duration(d["uptime_ms"].as_u64().unwrap_or(0)),
        others.len(),
        if others.len() == 1 { "" } else { "s" }
    );
    for c in others {
        let who = c["origin"].as_str().or(c["extension_id"].as_str()).unwrap_or("?");
        t.push_str(&format!("  {} {}\n", c["browser"].as_str().unwrap_or("?"), who));
    }
    let Some(m) = doc["model"].as_object() else {
        t.push_str("no model loaded\n");
        return t;
    };
    t.push_str(&format!("{:<40} {:<16} {:>8} {:>10}  {:<8} UNTIL\n", "NAME", "BACKEND", "PID", "MEMORY", "STATE"));
    let until = match (m["running"].as_u64(), m["unload_in_ms"].as_u64()) {
        (Some(n), _) if n > 0 => format!("in use ({n} request{})", if n == 1 { "" } else { "s" }),
        (_, Some(ms)) => format!("unloads in {}", human_duration(ms)),
        _ if m["state"] == "ready" => "kept loaded".into(),
        _ => "-".into(),
    };
    t.push_str(&format!(
        "{:<40} {:<16} {:>8} {:>10}  {:<8} {until}\n",
        m["name"].as_str().unwrap_or("?"),
        m["backend"].as_str().unwrap_or("-"),
        m["pid"].as_u64().map(|p| p.to_string()).unwrap_or("-".into()),
        m["rss_bytes"].as_u64().map(|b| format!("{:.1} MB", b as f64 / 1e6)).unwrap_or("-".into()),
        m["state"].as_str().unwrap_or("?"),
    ));
    t
}

/// "45 seconds", "4 minutes", "2 hours 5 minutes": the largest unit or two.
pub(crate) fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match s {
        0..=59 => plural(s, "second"),
        60..=3599 => plural(s / 60, "minute"),
        _ if s % 3600 / 60 == 0 => plural(s / 3600, "hour"),
        _ => format!("{} {}", plural(s / 3600, "hour"), plural(s % 3600 / 60, "minute")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human_duration(999), "0 seconds");
        assert_eq!(human_duration(1_000), "1 second");
        assert_eq!(human_duration(59_999), "59 seconds");
        assert_eq!(human_duration(60_000), "1 minute");
        assert_eq!(human_duration(299_000), "4 minutes");
        assert_eq!(human_duration(3_600_000), "1 hour");
        assert_eq!(human_duration(7_500_000), "2 hours 5 minutes");
    }

    #[test]
    fn the_table_says_what_runs_and_when_it_unloads() {
        let st = json!({
            "pid": 42, "version": "0.1.0", "uptime_ms": 125_000,
            "connections": [{"id": 0, "browser": "chromium", "origin": "chrome-extension://x/"}, {"id": 1}],
            "server": {"state": "ready", "candidate": "builtin-cpu", "pid": 77, "name": "bitnet/tiny.gguf",
                       "model": {"path": "/m/bitnet/tiny.gguf", "format": "i2_s"},
                       "resources": {"rss_bytes": 12_500_000}, "running": 0, "unload_in_ms": 240_000},
        });
        let t = table(&summary(&st));
        assert!(t.starts_with("daemon 42 (version 0.1.0, up 2 minutes), 1 browser connection\n"), "{t}");
        assert!(t.contains("  chromium chrome-extension://x/\n"), "{t}");
        let row = t.lines().last().unwrap();
        for part in ["bitnet/tiny.gguf", "builtin-cpu", "77", "12.5 MB", "ready", "unloads in 4 minutes"] {
            assert!(row.contains(part), "{part} in {row}");
        }
        let mut busy = st.clone();
        busy["server"]["running"] = json!(2);
        assert!(table(&summary(&busy)).ends_with("in use (2 requests)\n"));
        let stopped = json!({"pid": 42, "server": {"state": "stopped", "model": null}, "connections": []});
        assert!(table(&summary(&stopped)).ends_with("no model loaded\n"));
    }
}
