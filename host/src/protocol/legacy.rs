//! TabAgent's legacy dialect: `{action, messageId, ...}` requests, answered
//! with `{status: "success"|"error", ..., messageId}`.
//!
//! Each action maps onto a v1 request type; replies and events are reshaped
//! into what TabAgent's extension reads. Commands are never executed: the old
//! Python host's `execute_command` was remote code execution for any page
//! that could reach the extension.

use serde_json::{json, Map, Value};

use super::message::{Dialect, ErrorCode, ProtoError, Rejected, Request, RequestId};

/// Actions that asked the old host to run something. Refused outright.
const COMMAND_ACTIONS: &[&str] = &["execute_command", "run_command", "exec", "shell", "spawn", "run_script"];

/// Legacy action -> v1 request type.
fn v1_kind(action: &str) -> Option<&'static str> {
    Some(match action {
        "handshake" => "hello",
        "ping" => "ping",
        "get_system_info" => "hardware",
        "get_model_state" => "model_state",
        "load_model" => "load_model",
        "unload_model" => "unload_model",
        "generate" => "chat",
        "stop_generation" => "cancel",
        "list_loaded_models" => "models",
        "pull_model" => "pull",
        "update_settings" => "settings",
        _ => return None,
    })
}

fn first_str<'a>(obj: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().filter_map(|k| obj.get(*k)).find(|v| v.is_string())
}

pub(super) fn parse(obj: Map<String, Value>, action: &Value) -> Result<Request, Rejected> {
    let id = match RequestId::read(&obj, "messageId") {
        Ok(id) => id,
        Err(error) => {
            let action = action.as_str().unwrap_or_default().to_owned();
            return Err(Rejected { error, id: None, dialect: Dialect::Legacy { action } });
        }
    };
    let reject = |error: ProtoError, action: &str| Rejected {
        error,
        id: id.clone(),
        dialect: Dialect::Legacy { action: action.to_owned() },
    };
    let Some(action) = action.as_str() else {
        return Err(reject(ProtoError::new(ErrorCode::InvalidRequest, "`action` must be a string"), ""));
    };
    if COMMAND_ACTIONS.contains(&action) {
        return Err(reject(
            ProtoError::new(ErrorCode::Forbidden, format!("`{action}` is refused: bitnet-host never runs commands")),
            action,
        ));
    }
    let Some(kind) = v1_kind(action) else {
        return Err(reject(ProtoError::new(ErrorCode::UnknownType, format!("Unknown action: {action}")), action));
    };
    let mut params = Map::new();
    match action {
        "load_model" => {
            if let Some(p) = first_str(&obj, &["modelPath", "model_path"]) {
                params.insert("model".into(), p.clone());
            }
        }
        "pull_model" => {
            if let Some(m) = first_str(&obj, &["model_id", "model_name", "model"]) {
                params.insert("model".into(), m.clone());
            }
        }
        "generate" => {
            params.insert("messages".into(), obj.get("messages").cloned().unwrap_or(Value::Array(vec![])));
            params.insert("stream".into(), Value::Bool(true));
            if let Some(Value::Object(settings)) = obj.get("settings") {
                for (from, to) in [
                    ("temperature", "temperature"),
                    ("top_k", "top_k"),
                    ("top_p", "top_p"),
                    ("max_new_tokens", "max_tokens"),
                    ("repetition_penalty", "repeat_penalty"),
                ] {
                    if let Some(v) = settings.get(from) {
                        params.insert(to.into(), v.clone());
                    }
                }
            }
        }
        // TabAgent's stop has no target: it stops every generation of this
        // connection.
        "stop_generation" => {
            params.insert("kind".into(), Value::from("chat"));
        }
        "list_loaded_models" => {
            params.insert("loaded_only".into(), Value::Bool(true));
        }
        "update_settings" => {
            if let Some(s) = obj.get("settings") {
                params.insert("settings".into(), s.clone());
            }
        }
        _ => {}
    }
    Ok(Request { id, dialect: Dialect::Legacy { action: action.to_owned() }, kind: kind.to_owned(), params })
}

fn success(fields: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("status".into(), Value::from("success"));
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    m
}

/// Shapes a v1 result into the legacy reply for `action`.
pub fn shape_result(action: &str, result: Value) -> Map<String, Value> {
    let r = &result;
    match action {
        "handshake" => success(json!({
            "type": "handshake",
            "host": r["host"]["name"],
            "version": r["host"]["version"],
            "protocolVersions": r["protocol"]["versions"],
            "capabilities": r["capabilities"],
        })),
        "ping" => success(json!({"response": "pong", "version": r["version"], "pid": r["pid"]})),
        "get_system_info" => success(system_info(r)),
        "get_model_state" => success(json!({"payload": {
            "isReady": r["ready"],
            "backend": r["backend"],
            "modelPath": r["model"],
        }})),
        "generate" => {
            let text = r["text"].clone();
            success(json!({
                "type": "generationComplete",
                "payload": {"output": text, "generatedText": text, "numTokens": r["usage"]["completion_tokens"]},
            }))
        }
        "list_loaded_models" => success(json!({"models": r["models"], "payload": {"models": r["models"]}})),
        "stop_generation" => success(json!({"message": "Generation stopped", "stopped": r["cancelled"]})),
        _ => success(json!({ "payload": result })),
    }
}

/// TabAgent's `get_system_info` fields, from the v1 hardware report.
fn system_info(r: &Value) -> Value {
    let cpu = &r["cpu"];
    let available = |section: &Value| section["status"] == "available";
    let nvidia: Vec<Value> = r["cuda"]["devices"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .map(|d| {
                    json!({
                        "name": d["name"],
                        "vendor": "nvidia",
                        "gpu_type": "discrete",
                        "vram_mb": d["memory_total_bytes"].as_u64().map(|b| b / (1024 * 1024)),
                        "driver_version": r["cuda"]["driver_version"],
                        "compute_capability": d["compute_capability"],
                        "available": true,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let vulkan_gpus: Vec<Value> = r["vulkan"]["devices"]
        .as_array()
        .map(|ds| ds.iter().filter(|d| d["counts_as_gpu"] == true).map(|d| json!({"name": d["name"], "gpu_type": d["kind"], "vram_mb": d["device_local_bytes"].as_u64().map(|b| b / (1024 * 1024))})).collect())
        .unwrap_or_default();
    json!({
        "platform": r["os"]["family"],
        "platform_version": r["os"]["version"],
        "architecture": r["os"]["arch"],
        "processor": cpu["brand"],
        "devices": {
            "cpu": {
                "name": cpu["brand"],
                "cores": cpu["physical_cores"],
                "threads": cpu["logical_cores"],
                "features": cpu["features"],
                "available": true,
            },
            "nvidia_dgpu": nvidia,
            "vulkan_gpu": vulkan_gpus,
            "memory": {"total_mb": r["memory"]["total_bytes"].as_u64().map(|b| b / (1024 * 1024)),
                       "available_mb": r["memory"]["available_bytes"].as_u64().map(|b| b / (1024 * 1024))},
        },
        "has_cuda": available(&r["cuda"]),
        "has_vulkan": !vulkan_gpus.is_empty(),
        "has_metal": available(&r["metal"]),
    })
}

/// Shapes a v1 error into the legacy reply for `action`.
pub fn shape_error(action: &str, error: &ProtoError) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("status".into(), Value::from("error"));
    m.insert("message".into(), Value::from(error.message.clone()));
    m.insert("code".into(), Value::from(error.code.as_str()));
    if action == "generate" {
        let kind = if error.code == ErrorCode::Cancelled { "generationStopped" } else { "generationError" };
        m.insert("type".into(), Value::from(kind));
    }
    m
}

/// Shapes a v1 event into the legacy event TabAgent listens for.
pub fn shape_event(event: &str, fields: &Map<String, Value>) -> Map<String, Value> {
    let mut m = Map::new();
    let (kind, payload) = match event {
        "delta" => (
            "generationUpdate",
            json!({"token": fields.get("text"), "tps": fields.get("tps"), "numTokens": fields.get("tokens")}),
        ),
        "progress" | "load" => ("modelWorkerLoadingProgress", Value::Object(fields.clone())),
        other => (other, Value::Object(fields.clone())),
    };
    m.insert("type".into(), Value::from(kind));
    m.insert("payload".into(), payload);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::parse_request;

    #[test]
    fn load_model_accepts_both_path_spellings() {
        for key in ["modelPath", "model_path"] {
            let frame = json!({"action": "load_model", "messageId": "m1", key: "/m.gguf"});
            let r = parse_request(frame.to_string().as_bytes()).unwrap();
            assert_eq!(r.kind, "load_model");
            assert_eq!(r.params["model"], "/m.gguf");
            assert_eq!(r.id, Some(RequestId(json!("m1"))));
        }
    }

    #[test]
    fn pull_model_accepts_every_name_key() {
        for key in ["model_id", "model_name", "model"] {
            let frame = json!({"action": "pull_model", key: "org/repo"});
            let r = parse_request(frame.to_string().as_bytes()).unwrap();
            assert_eq!(r.params["model"], "org/repo");
            assert_eq!(r.id, None);
        }
    }

    #[test]
    fn generate_maps_settings_onto_v1_names() {
        let frame = json!({"action": "generate", "messageId": 3,
            "messages": [{"role": "user", "content": "hi"}],
            "settings": {"temperature": 0.2, "top_k": 5, "top_p": 0.9, "max_new_tokens": 9, "repetition_penalty": 1.1}});
        let r = parse_request(frame.to_string().as_bytes()).unwrap();
        assert_eq!(r.kind, "chat");
        assert_eq!(r.params["max_tokens"], 9);
        assert_eq!(r.params["repeat_penalty"], 1.1);
        assert_eq!(r.params["temperature"], 0.2);
        assert_eq!(r.params["messages"][0]["content"], "hi");
    }

    #[test]
    fn command_actions_are_forbidden_and_unknown_actions_are_typed() {
        let r = parse_request(br#"{"action":"execute_command","messageId":"x","command":"ls"}"#).unwrap_err();
        assert_eq!(r.error.code, ErrorCode::Forbidden);
        assert_eq!(r.id, Some(RequestId(json!("x"))));
        let r = parse_request(br#"{"action":"fly","messageId":"y"}"#).unwrap_err();
        assert_eq!(r.error.code, ErrorCode::UnknownType);
        assert_eq!(r.error.message, "Unknown action: fly");
    }

    #[test]
    fn generation_events_and_results_take_tabagent_shapes() {
        let mut f = Map::new();
        f.insert("text".into(), json!("Hel"));
        f.insert("tokens".into(), json!(2));
        let e = shape_event("delta", &f);
        assert_eq!(
            Value::Object(e),
            json!({"type": "generationUpdate", "payload": {"token": "Hel", "tps": null, "numTokens": 2}})
        );
        let r = shape_result("generate", json!({"text": "Hello", "usage": {"completion_tokens": 2}}));
        assert_eq!(r["type"], "generationComplete");
        assert_eq!(r["payload"]["output"], "Hello");
        assert_eq!(r["payload"]["generatedText"], "Hello");
        let e = shape_error("generate", &ProtoError::new(ErrorCode::Cancelled, "stopped"));
        assert_eq!(e["type"], "generationStopped");
        assert_eq!(e["status"], "error");
    }
}
