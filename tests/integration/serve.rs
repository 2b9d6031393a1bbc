//! `ntv serve`: the real binary on a free loopback port with the test model, checked against
//! the original demo's README (field names and defaults) and against ntv's own commands (the
//! same tokens as `ntv generate`, the same scores as `ntv attribute`), bad input, concurrent
//! clients, the API key, model loading and a clean stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::docs::validate;
use crate::util::{KNOWN_IDS, PROMPT, Sandbox, ids, m, std_cmd};

/// A running `ntv serve`, stopped (killed) when dropped.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    log: Arc<Mutex<Vec<String>>>,
    agent: ureq::Agent,
    key: Option<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// `ntv serve -m MODEL -t 1 --port 0 EXTRA…` in a temp folder; waits until the model is
    /// ready.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    /// [`Server::start`] with more environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std_cmd()
            .current_dir(dir.path())
            .envs(env.iter().copied())
            .args(["serve", "-m", m(), "-t", "1", "--port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ntv serve starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("ntv serve: listening on ") {
                    let _ = tx.send(addr.to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "ntv serve did not say where it listens:\n{}",
                    log.lock().unwrap().join("\n")
                )
            });
        let base = base.replace("0.0.0.0", "127.0.0.1");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        Self {
            child: Some(child),
            base,
            log,
            agent,
            key: None,
            reader: Some(reader),
            _dir: dir,
        }
    }

    /// The same server, sending `Authorization: Bearer KEY`.
    pub fn with_key(mut self, key: &str) -> Self {
        self.key = Some(key.to_string());
        self
    }

    /// Wait until `GET /api/model/status` says ready.
    pub fn ready(self) -> Self {
        let t = Instant::now();
        loop {
            let (code, st) = self.get("/api/model/status");
            if code == 200 && st["ready"] == true {
                return self;
            }
            assert!(st["error"].is_null(), "the model failed to load: {st}");
            assert!(t.elapsed() < Duration::from_secs(60), "not ready: {st}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn answer(mut res: ureq::http::Response<ureq::Body>) -> (u16, Value) {
        let code = res.status().as_u16();
        let text = res.body_mut().read_to_string().expect("a body");
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| Value::String(format!("(not JSON: {e}) {text}")));
        (code, v)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let mut r = self.agent.get(format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            r = r.header("Authorization", format!("Bearer {k}"));
        }
        Self::answer(r.call().expect("GET answered"))
    }

    pub fn get_text(&self, path: &str) -> (u16, String) {
        let mut res = self
            .agent
            .get(format!("{}{path}", self.base))
            .call()
            .expect("GET answered");
        (
            res.status().as_u16(),
            res.body_mut().read_to_string().unwrap(),
        )
    }

    pub fn post_raw(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let mut r = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(k) = &self.key {
            r = r.header("Authorization", format!("Bearer {k}"));
        }
        Self::answer(r.send(body).expect("POST answered"))
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string().as_bytes())
    }

    /// POST, expect 200, return the body.
    #[track_caller]
    pub fn ok(&self, path: &str, body: &Value) -> Value {
        let (code, v) = self.post(path, body);
        assert_eq!(code, 200, "POST {path} {body}: {v}");
        v
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return status;
            }
            if t.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("ntv serve did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The demo README's preview request for `prompt` on `branch`.
pub fn request(branch: &str, prompt: &str, completion: &[i64]) -> Value {
    json!({
        "branch_id": branch,
        "prompt": prompt,
        "system_prompt": "You are a helpful assistant.",
        "use_chat_template": true,
        "completion_ids": completion,
        "top_k": 10,
        "params": {
            "greedy": false,
            "temperature": 0.7,
            "top_p": 0.8,
            "repetition_penalty": 1.05,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "seed": null,
            "stop_sequences": []
        },
        "constraint": {"enabled": false, "type": "multiple_choice", "schema": "Yes\nNo\nMaybe"}
    })
}

fn with(mut v: Value, extra: Value) -> Value {
    for (k, x) in extra.as_object().unwrap() {
        if k == "params" {
            for (pk, px) in x.as_object().unwrap() {
                v["params"][pk] = px.clone();
            }
        } else {
            v[k] = x.clone();
        }
    }
    v
}

#[track_caller]
fn pill(p: &Value) {
    assert!(p["id"].is_i64(), "{p}");
    assert!(p["text"].is_string() && p["display"].is_string(), "{p}");
    assert!(p["special"].is_boolean(), "{p}");
}

/// The demo's `model` object.
#[track_caller]
fn model_fields(v: &Value) {
    for k in ["model_id", "device", "dtype"] {
        assert!(v[k].is_string(), "{k}: {v}");
    }
    assert_eq!(v["has_chat_template"], true, "{v}");
    assert!(v["eos_token_id"].is_i64(), "{v}");
    assert_eq!(v["vocab_size"], 49152, "{v}");
}

/// The demo's `dist` object.
#[track_caller]
fn dist_fields(d: &Value, top_k: usize) {
    assert_eq!(d["top_k"], top_k, "{d}");
    let toks = d["tokens"].as_array().unwrap();
    assert_eq!(toks.len(), top_k);
    for t in toks {
        pill(t);
        for k in ["p_base", "p_final"] {
            assert!(t[k].is_f64() || t[k].is_i64(), "{k}: {t}");
        }
        assert!(t["kept"].is_boolean() && t["valid"].is_boolean(), "{t}");
    }
    for k in ["other_p_base", "other_p_final"] {
        assert!(d[k].is_number(), "{k}: {d}");
    }
    assert!(d["kept_token_count"].as_u64().unwrap() >= 1);
    assert!(d["constraint_active"].is_boolean());
    assert!(d.get("constraint_type").is_some());
}

fn write_jsonl(sb: &Sandbox, name: &str, lines: &[Value]) -> PathBuf {
    let path = sb.path().join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn serve_answers_like_the_demo_with_ntv_numbers() {
    let s = Server::start(&["-c", "1024"]).ready();
    let sb = Sandbox::new();

    // Status: the demo's fields.
    let (code, st) = s.get("/api/model/status");
    assert_eq!(code, 200);
    validate("serve.status", &st);
    model_fields(&st);
    assert_eq!(
        (st["loading"].clone(), st["ready"].clone()),
        (json!(false), json!(true))
    );
    assert!(st["error"].is_null());

    // Preview: the README's request; the same numbers as `ntv preview`.
    let p = s.ok("/api/preview", &request("main", PROMPT, &[]));
    validate("serve.preview", &p);
    model_fields(&p["model"]);
    let prompt_ids: Vec<i64> = p["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            pill(t);
            t["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(prompt_ids, KNOWN_IDS, "the chat template is applied");
    assert_eq!(p["completion_tokens"], json!([]));
    assert_eq!(p["context_token_count"], 25);
    dist_fields(&p["dist"], 10);
    assert_eq!(p["dist"]["constraint_active"], false);
    assert_eq!(p["decoded_tokens"], 25, "first request decodes the prompt");
    let cli = sb.json(&["--no-session", "preview", "-p", PROMPT, "-t", "1", "--json"]);
    for (a, b) in p["dist"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .zip(cli["dist"]["tokens"].as_array().unwrap())
    {
        assert_eq!(a["id"], b["id"]);
        assert_eq!(a["p_final"], b["p_final"], "same p_final as ntv preview");
        assert_eq!(a["p_base"], b["p_base"]);
    }
    let again = s.ok("/api/preview", &request("main", PROMPT, &[]));
    assert_eq!(
        again["decoded_tokens"], 0,
        "the branch's KV state is reused"
    );
    assert_eq!(again["dist"], p["dist"]);

    // A step loop with a seed replays `ntv generate` with that seed, decoding one token per
    // step after the first.
    let n = 12;
    let generated = sb.json(&[
        "--no-session",
        "generate",
        "-p",
        PROMPT,
        "-n",
        "12",
        "--seed",
        "7",
        "-t",
        "1",
        "--json",
    ]);
    let want = ids(&generated["completion_ids"]);
    let mut completion: Vec<i64> = Vec::new();
    for i in 0..n {
        let req = with(
            request("replay", PROMPT, &completion),
            json!({"params": {"seed": 7}, "reset_rng": false}),
        );
        let r = s.ok("/api/step", &req);
        if i == 0 {
            validate("serve.step", &r);
            model_fields(&r["model"]);
            dist_fields(&r["dist"], 10);
            assert_eq!(r["decoded_tokens"], 25);
        } else {
            assert_eq!(
                r["decoded_tokens"], 1,
                "step {i} decodes only the new token"
            );
        }
        let appended = r["appended"].as_array().unwrap();
        assert_eq!(appended.len(), 1, "{r}");
        pill(&appended[0]);
        let meta = &r["appended_meta"][0];
        assert_eq!(
            meta["dist"], r["dist"],
            "dist is the one the token came from"
        );
        assert_eq!(meta["selected_id"], appended[0]["id"]);
        assert_eq!(
            (meta["forced"].clone(), meta["forced_by"].clone()),
            (json!(false), Value::Null)
        );
        assert_eq!(r["selected"]["id"], appended[0]["id"]);
        assert!(r["selected"]["p_final"].as_f64().unwrap() > 0.0);
        let new = ids(&r["new_completion_ids"]);
        assert_eq!(
            &new[..completion.len()],
            &completion[..],
            "the whole completion comes back"
        );
        completion = new;
        assert_eq!(r["done"], r["stop_reason"] != Value::Null);
        if r["done"] == true {
            assert_eq!(r["stop_reason"], "eos_token");
            break;
        }
    }
    assert_eq!(
        completion,
        want[..completion.len()],
        "same tokens as ntv generate --seed 7"
    );
    assert_eq!(completion.len(), want.len().min(n));

    // Forced token: appended as is, marked forced by token.
    let cut = &completion[..4];
    let prev = s.ok("/api/preview", &request("replay", PROMPT, cut));
    assert_eq!(
        prev["decoded_tokens"], 1,
        "cutting the completion shorter keeps the KV prefix: only the last kept token is decoded again, for its logits"
    );
    let forced_id = prev["dist"]["tokens"][3]["id"].as_i64().unwrap();
    let r = s.ok(
        "/api/step",
        &with(
            request("replay", PROMPT, cut),
            json!({"force_token_id": forced_id}),
        ),
    );
    assert_eq!(ids(&r["new_completion_ids"]), [cut, &[forced_id]].concat());
    assert_eq!(r["appended_meta"][0]["forced"], true);
    assert_eq!(r["appended_meta"][0]["forced_by"], "token");
    assert_eq!(r["selected"]["id"], forced_id);
    assert_eq!(
        r["dist"], prev["dist"],
        "forced from the distribution shown before"
    );

    // Forced text: every token of the text, one snapshot each, no selection.
    let r = s.ok(
        "/api/step",
        &with(
            request("text", PROMPT, &[]),
            json!({"force_text": " Paris, of course"}),
        ),
    );
    let appended = r["appended"].as_array().unwrap();
    assert!(appended.len() >= 3, "{r}");
    let text: String = appended
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, " Paris, of course");
    assert_eq!(r["appended_meta"].as_array().unwrap().len(), appended.len());
    assert!(
        r["appended_meta"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["forced_by"] == "text")
    );
    assert!(r["selected"].is_null());
    assert_eq!(r["completion_text"], " Paris, of course");
    let step_ids = ids(&r["new_completion_ids"]);
    let cli = sb.json(&[
        "--no-session",
        "step",
        "-p",
        PROMPT,
        "--text",
        " Paris, of course",
        "-t",
        "1",
        "--json",
    ]);
    assert_eq!(
        step_ids,
        ids(&cli["completion_ids"]),
        "the same ids as ntv step --text"
    );

    // A completion the server has not seen (another branch, or a client that edited it) is
    // taken as given.
    let r = s.ok("/api/preview", &request("fresh", PROMPT, &step_ids));
    assert_eq!(
        r["decoded_tokens"].as_u64().unwrap() as usize,
        25 + step_ids.len()
    );
    let ctoks: Vec<i64> = r["completion_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ctoks, step_ids);

    // Attribution: the same scores as `ntv attribute` for the same target, for a completion
    // token (index) and a candidate next token.
    let ctx4 = &completion[..4];
    let a = s.ok(
        "/api/attribution",
        &json!({"branch_id": "main", "prompt": PROMPT, "system_prompt": "You are a helpful assistant.",
            "use_chat_template": true, "completion_ids": ctx4, "target_index": 2,
            "target_token_id": ctx4[2], "method": "attention"}),
    );
    validate("serve.attribution", &a);
    assert_eq!(a["ok"], true);
    assert_eq!(a["source_len"], 27);
    assert_eq!(a["context_len"], 27);
    assert_eq!(a["target_id"], ctx4[2]);
    assert_eq!(a["method"], "attention");
    let candidate = forced_id;
    let b = s.ok(
        "/api/attribution",
        &json!({"prompt": PROMPT, "completion_ids": ctx4, "target_index": 4,
            "target_token_id": candidate, "method": "occlusion"}),
    );
    assert_eq!(b["source_len"], 29);
    assert_eq!(b["target_id"], candidate);
    let batch = write_jsonl(
        &sb,
        "attr.jsonl",
        &[
            json!({"prompt": PROMPT, "completion_ids": ctx4, "index": 2, "method": "attention"}),
            json!({"prompt": PROMPT, "completion_ids": ctx4, "token": candidate, "method": "occlusion"}),
        ],
    );
    let lines = sb.jsonl(&[
        "--no-session",
        "attribute",
        "-t",
        "1",
        "--batch",
        batch.to_str().unwrap(),
    ]);
    for (served, line) in [&a, &b].into_iter().zip(&lines) {
        let scores: Vec<f64> = line["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["score"].as_f64().unwrap())
            .collect();
        let got: Vec<f64> = served["attributions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(got, scores, "the scores of ntv attribute");
        assert_eq!(served["target_id"], line["target"]["id"]);
    }
    let off = s.ok(
        "/api/attribution",
        &json!({"prompt": PROMPT, "method": "off"}),
    );
    assert_eq!(
        off,
        json!({"ok": true, "attributions": [], "source_len": 0})
    );

    // A constraint: every kept candidate is valid under it, and a step follows it.
    let c = with(
        request("yes-no", "Is Paris in France?", &[]),
        json!({"constraint": {"enabled": true, "type": "multiple_choice", "schema": "Yes\nNo"},
            "params": {"greedy": true}}),
    );
    let r = s.ok("/api/step", &c);
    assert_eq!(r["dist"]["constraint_active"], true);
    assert_eq!(r["dist"]["constraint_type"], "choice");
    for t in r["dist"]["tokens"].as_array().unwrap() {
        if t["kept"] == true {
            assert_eq!(t["valid"], true, "{t}");
        }
    }
    let first = r["appended"][0]["text"].as_str().unwrap();
    assert!(
        "Yes".starts_with(first) || "No".starts_with(first),
        "{first}"
    );

    // The page at / says how to get the demo's page.
    let (code, html) = s.get_text("/");
    assert_eq!(code, 200);
    assert!(html.contains("--static"), "{html}");

    // One log line per request: method, path, status, milliseconds.
    let log = s.log();
    assert!(
        log.iter()
            .any(|l| l.starts_with("POST /api/step 200 ") && l.ends_with(" ms")),
        "{log:?}"
    );
}

#[test]
fn serve_refuses_bad_input_with_a_detail_and_keeps_serving() {
    let s = Server::start(&["-c", "256", "--json-logs"]).ready();
    let base = request("bad", PROMPT, &[]);
    let long_prompt = "word ".repeat(400);
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("malformed JSON", "/api/preview", br#"{"prompt": "Hi""#.to_vec(), 400, "invalid request body"),
        ("not an object", "/api/step", b"[1, 2]".to_vec(), 422, "invalid request body"),
        ("wrong type", "/api/preview", with(base.clone(), json!({"params": {"temperature": "hot"}})).to_string().into_bytes(), 422, "params.temperature"),
        ("unknown field", "/api/step", with(base.clone(), json!({"tempreature": 1.0})).to_string().into_bytes(), 422, "tempreature"),
        ("negative id", "/api/step", with(base.clone(), json!({"completion_ids": [-1]})).to_string().into_bytes(), 400, "outside the vocabulary"),
        ("id past the vocabulary", "/api/preview", with(base.clone(), json!({"completion_ids": [49152]})).to_string().into_bytes(), 400, "outside the vocabulary"),
        ("forced id out of range", "/api/step", with(base.clone(), json!({"force_token_id": 99999999})).to_string().into_bytes(), 400, "outside the vocabulary"),
        ("target index out of range", "/api/attribution", json!({"prompt": PROMPT, "completion_ids": [28], "target_index": 5, "method": "attention"}).to_string().into_bytes(), 400, "out of range"),
        ("unknown method", "/api/attribution", json!({"prompt": PROMPT, "method": "lime"}).to_string().into_bytes(), 400, "unsupported attribution method"),
        ("bad parameter", "/api/preview", with(base.clone(), json!({"params": {"top_p": 1.5}})).to_string().into_bytes(), 400, "top_p"),
        ("top_k 0", "/api/preview", with(base.clone(), json!({"top_k": 0})).to_string().into_bytes(), 400, "top_k"),
        ("prompt longer than the context", "/api/preview", with(base.clone(), json!({"prompt": long_prompt})).to_string().into_bytes(), 400, "context size is 256"),
        ("completion longer than the context", "/api/step", with(base.clone(), json!({"completion_ids": vec![28; 300]})).to_string().into_bytes(), 400, "context size is 256"),
        ("invalid regex", "/api/preview", with(base.clone(), json!({"constraint": {"enabled": true, "type": "regex", "schema": "(["}})).to_string().into_bytes(), 400, "regex"),
        ("unknown constraint type", "/api/preview", with(base.clone(), json!({"constraint": {"enabled": true, "type": "xml", "schema": "x"}})).to_string().into_bytes(), 400, "constraint type"),
        ("forced token the constraint rejects", "/api/step", with(base.clone(), json!({"constraint": {"enabled": true, "type": "multiple_choice", "schema": "Yes\nNo"}, "force_token_id": 28})).to_string().into_bytes(), 400, "constraint"),
        ("empty model_id", "/api/model/load", br#"{"model_id": " "}"#.to_vec(), 400, "model_id is required"),
        ("huge body", "/api/preview", vec![b' '; 2 << 20], 413, "larger than the limit"),
    ];
    for (what, path, body, code, needle) in cases {
        let (got, v) = s.post_raw(path, &body);
        assert_eq!(got, code, "{what}: {v}");
        validate("serve.error", &v);
        let detail = v["detail"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no detail: {v}"));
        assert!(
            detail.to_lowercase().contains(&needle.to_lowercase()),
            "{what}: {detail:?} does not mention {needle:?}"
        );
        let (ok, st) = s.get("/api/model/status");
        assert_eq!(
            (ok, st["ready"].clone()),
            (200, json!(true)),
            "after {what}"
        );
    }
    let (code, v) = s.post("/api/nope", &json!({}));
    assert_eq!((code, v["detail"].as_str()), (404, Some("Not Found")));
    let (code, v) = s.get("/api/step");
    assert_eq!(
        (code, v["detail"].as_str()),
        (405, Some("Method Not Allowed"))
    );
    // The server still works after all that.
    let r = s.ok(
        "/api/step",
        &with(base, json!({"params": {"greedy": true}})),
    );
    assert_eq!(r["appended"].as_array().unwrap().len(), 1);
    // --json-logs: one JSON object per request.
    let logged: Vec<Value> = s
        .log()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        logged.iter().any(|l| l["method"] == "POST"
            && l["path"] == "/api/preview"
            && l["status"] == 413
            && l["ms"].is_number()),
        "{logged:?}"
    );
}

#[test]
fn serve_keeps_concurrent_clients_on_their_own_branches() {
    let s = Arc::new(Server::start(&["-c", "256", "--max-branches", "8"]).ready());
    const STEPS: usize = 20;
    let clients = 8;
    let run = |s: &Server, branch: String, i: usize| -> Vec<i64> {
        let prompt = format!("Name a colour. Client {i}.");
        let mut completion: Vec<i64> = Vec::new();
        for _ in 0..STEPS {
            let r = s.ok(
                "/api/step",
                &with(
                    request(&branch, &prompt, &completion),
                    json!({"params": {"seed": 100 + i as u64, "temperature": 1.0, "top_p": 1.0}}),
                ),
            );
            assert_eq!(r["branch_id"], branch);
            // Also on a workbench taken over from another branch: what this request decoded.
            assert!(
                r["decoded_tokens"].as_u64() <= r["context_token_count"].as_u64(),
                "{branch}: decoded {} of {}",
                r["decoded_tokens"],
                r["context_token_count"]
            );
            let new = ids(&r["new_completion_ids"]);
            assert_eq!(new.len(), completion.len() + 1, "{r}");
            assert_eq!(
                &new[..completion.len()],
                &completion[..],
                "branch {branch} mixed up"
            );
            completion = new;
            if r["done"] == true {
                break;
            }
        }
        completion
    };
    let t = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || run(&s, format!("c{i}"), i))
        })
        .collect();
    let together: Vec<Vec<i64>> = handles
        .into_iter()
        .map(|h| h.join().expect("client"))
        .collect();
    eprintln!(
        "8 clients × {STEPS} steps: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Alone, one after another, on fresh branches, each client gets the same tokens.
    for (i, got) in together.iter().enumerate() {
        assert_eq!(&run(&s, format!("alone{i}"), i), got, "client {i}");
    }
    let distinct: std::collections::HashSet<_> = together.iter().collect();
    assert!(distinct.len() > 1, "the clients' prompts and seeds differ");
}

#[test]
fn serve_guards_its_routes_and_models_and_stops_cleanly() {
    let models = tempfile::tempdir().unwrap();
    let linked = models.path().join("test-model.gguf");
    std::os::unix::fs::symlink(m(), &linked).unwrap();
    let mut s = Server::start(&[
        "--host",
        "0.0.0.0",
        "--api-key",
        "sesame",
        "--models-dir",
        models.path().to_str().unwrap(),
        "-c",
        "512",
    ]);
    // Binding beyond loopback is said out loud.
    let log = s.log();
    assert!(
        log.iter()
            .any(|l| l.starts_with("warning:") && l.contains("0.0.0.0")),
        "{log:?}"
    );
    // Without the key: 401 on /api, the page is public.
    let (code, v) = s.get("/api/model/status");
    assert_eq!(
        (code, v["detail"].as_str()),
        (401, Some("Not authenticated"))
    );
    let (code, _) = s.post("/api/preview", &request("k", PROMPT, &[]));
    assert_eq!(code, 401);
    assert_eq!(s.get_text("/").0, 200);
    // No CORS: a page from another origin gets no permission header.
    let res = s
        .agent
        .get(format!("{}/", s.base))
        .header("Origin", "http://elsewhere.example")
        .call()
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    s = s.with_key("sesame").ready();
    // Loading only from the allowed folder.
    let outside = Path::new(m()).to_str().unwrap().to_string();
    for (id, code) in [
        (outside.as_str(), 403),
        ("../test-model.gguf", 403),
        ("missing.gguf", 404),
    ] {
        let (got, v) = s.post("/api/model/load", &json!({"model_id": id}));
        assert_eq!(got, code, "{id}: {v}");
        assert!(v["detail"].is_string());
    }
    let r = s.ok("/api/model/load", &json!({"model_id": "test-model.gguf"}));
    validate("serve.load", &r);
    assert_eq!(r, json!({"ok": true, "model_id": "test-model.gguf"}));
    s = s.ready();
    let (_, st) = s.get("/api/model/status");
    assert_eq!(st["model_id"], "test-model.gguf");

    // SIGTERM while a request runs: the request is answered, then the server exits 0.
    let s = Arc::new(Mutex::new(s));
    let client = {
        let s = s.clone();
        let long: Vec<i64> = (0..200).map(|i| 1000 + i).collect();
        let req = request("long", PROMPT, &long);
        let (agent, base) = {
            let g = s.lock().unwrap();
            (g.agent.clone(), g.base.clone())
        };
        std::thread::spawn(move || {
            let res = agent
                .post(format!("{base}/api/preview"))
                .header("Authorization", "Bearer sesame")
                .send(req.to_string().as_bytes())
                .expect("answered");
            Server::answer(res)
        })
    };
    // Wait until the request has reached the server, then stop it.
    std::thread::sleep(Duration::from_millis(400));
    let status = s.lock().unwrap().terminate();
    let (code, v) = client.join().unwrap();
    assert_eq!(code, 200, "the request in flight was answered: {v}");
    assert_eq!(v["context_token_count"], 225);
    assert!(status.success(), "exit status {status}");
    let log = s.lock().unwrap().log();
    assert!(log.iter().any(|l| l == "ntv serve: stopped"), "{log:?}");
}

/// README's `ntv serve` section is real: each `curl` it shows runs against a server started
/// as README starts it (default context and branches); an output shown under one is what the
/// server answers, byte for byte; one shown without output answers 200 with the fields the
/// text names.
#[test]
fn serve_readme_examples_are_real() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("## The demo's page on GGUF: `ntv serve`")
        .expect("README has the serve section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    // (curl line, the json block right after it, if any)
    let mut examples: Vec<(String, Option<String>)> = Vec::new();
    let mut lines = section.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("curl ") {
            examples.push((line.to_string(), None));
        } else if line == "```json" {
            let mut body = String::new();
            for l in lines.by_ref() {
                if l == "```" {
                    break;
                }
                body.push_str(l);
            }
            let last = examples.last_mut().expect("output under a curl");
            last.1 = Some(body);
        }
    }
    assert!(examples.len() >= 2, "{examples:?}");
    let s = Server::start(&[]).ready();
    for (cmd, shown) in &examples {
        let args = shell_words::split(cmd).unwrap();
        let url = args
            .iter()
            .find(|a| a.contains("127.0.0.1:8000"))
            .expect("a URL");
        let path = &url[url.find('/').expect("a path")..];
        let body = args
            .iter()
            .position(|a| a == "-d")
            .map(|i| args[i + 1].clone());
        match (&body, shown) {
            (None, Some(shown)) => {
                let (code, text) = s.get_text(path);
                assert_eq!(code, 200);
                assert_eq!(&text, shown, "README shows what `{cmd}` prints");
            }
            (Some(b), None) => {
                let v = s.ok(path, &serde_json::from_str(b).unwrap());
                for field in ["appended", "new_completion_ids", "dist"] {
                    assert!(v.get(field).is_some(), "{cmd}: no {field}");
                }
                assert_eq!(v["appended"].as_array().unwrap().len(), 1);
            }
            _ => panic!("README example without a checkable form: {cmd}"),
        }
    }
}
