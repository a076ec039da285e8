//! TabAgent's legacy `{action, messageId}` dialect through the real binary.

use std::time::Duration;

use bitnet_host_tests::browser::{chromium_args, FakeBrowser};
use serde_json::{json, Value};

use crate::host_bin;

const T: Duration = Duration::from_secs(10);
const TABAGENT_ID: &str = "fkkeoobeahalebjpbockfedlncckobjb";

fn tabagent() -> FakeBrowser {
    FakeBrowser::spawn(host_bin(), &chromium_args(TABAGENT_ID))
}

fn ask(b: &mut FakeBrowser, msg: Value) -> Value {
    b.send(&msg);
    b.collect("messageId", &msg["messageId"], T).1.value
}

#[test]
fn handshake_ping_and_system_info_echo_message_id() {
    let mut b = tabagent();
    let r = ask(&mut b, json!({"action": "handshake", "messageId": "m-1"}));
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["messageId"], "m-1");
    assert_eq!(r["type"], "handshake");
    assert!(r["version"].is_string());

    let r = ask(&mut b, json!({"action": "ping", "messageId": 17}));
    assert_eq!(r["status"], "success");
    assert_eq!(r["response"], "pong");
    assert_eq!(r["messageId"], 17);
    assert_eq!(r["pid"], b.pid());

    let r = ask(&mut b, json!({"action": "get_system_info", "messageId": "sys"}));
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["messageId"], "sys");
    assert_eq!(r["platform"], std::env::consts::OS);
    let cpu = &r["devices"]["cpu"];
    assert!(cpu["threads"].as_u64().unwrap() >= 1);
    assert!(cpu["cores"].as_u64().unwrap() >= 1);
    assert!(cpu["name"].is_string(), "{r}");
    assert!(r["devices"]["nvidia_dgpu"].is_array());
    assert_eq!(r["has_cuda"], false);
}

#[test]
fn execute_command_is_refused_and_nothing_runs() {
    let mut b = tabagent();
    let marker = tempfile::tempdir().unwrap().path().join("ran");
    let r = ask(
        &mut b,
        json!({"action": "execute_command", "messageId": "x", "command": format!("touch {}", marker.display())}),
    );
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["messageId"], "x");
    assert_eq!(r["code"], "forbidden");
    assert!(r["message"].as_str().unwrap().contains("never runs commands"));
    assert!(!marker.exists());
    // The connection is still up.
    let r = ask(&mut b, json!({"action": "ping", "messageId": "after"}));
    assert_eq!(r["status"], "success");
}

#[test]
fn unknown_actions_and_missing_backends_are_errors_with_message_id() {
    let mut b = tabagent();
    let r = ask(&mut b, json!({"action": "levitate", "messageId": 9}));
    assert_eq!(r["status"], "error");
    assert_eq!(r["message"], "Unknown action: levitate");
    assert_eq!(r["messageId"], 9);
    // generate with no model loaded.
    let messages = json!([{"role": "user", "content": "hi"}]);
    let r = ask(&mut b, json!({"action": "generate", "messageId": "g", "messages": messages}));
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["code"], "not_available", "{r}");
    assert_eq!(r["messageId"], "g");
    // pull_model with a source that is neither a URL nor owner/repo.
    let r = ask(&mut b, json!({"action": "pull_model", "messageId": "pm", "model_id": "nonsense"}));
    assert_eq!((r["status"].as_str(), r["code"].as_str()), (Some("error"), Some("invalid_request")), "{r}");
    let r = ask(&mut b, json!({"action": "load_model", "messageId": "l", "modelPath": "/no/such/model.gguf"}));
    assert_eq!((r["status"].as_str(), r["code"].as_str()), (Some("error"), Some("not_found")), "{r}");
    assert_eq!(r["messageId"], "l");
    let r = ask(&mut b, json!({"action": "unload_model", "messageId": "u"}));
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["payload"]["unloaded"], false, "{r}");
    let r = ask(&mut b, json!({"action": "get_model_state", "messageId": "s"}));
    assert_eq!(r["payload"]["isReady"], false);
}

#[test]
fn stop_generation_answers_even_with_nothing_running() {
    let mut b = tabagent();
    let r = ask(&mut b, json!({"action": "stop_generation", "messageId": "stop"}));
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["stopped"], 0);
}
