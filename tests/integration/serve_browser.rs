//! The original demo's own page (`../shared/seed/index.html`, unmodified) in headless Chromium
//! against `ntv serve --static`: type a prompt, press Step three times, force a candidate, and
//! the page shows the tokens ntv returned. A screenshot is kept in target/tmp/.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); a missing one is a
//! loud failure, never a skip.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::serve::{Server, request};
use crate::util::{Sandbox, ids};

/// The demo's folder, beside the crate.
fn seed_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/seed");
    assert!(
        dir.join("index.html").is_file(),
        "the original demo's page is missing: {}/index.html",
        dir.display()
    );
    dir.canonicalize().unwrap()
}

pub(crate) fn which(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed\nhint: apt-get install chromium chromium-driver (as .ci/run does)")
        })
}

/// chromedriver on a free port, killed when dropped.
pub(crate) struct Driver {
    child: Child,
    pub(crate) url: String,
}

impl Driver {
    pub(crate) fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(which("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "chromedriver does not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Poll `f` until it returns Some (or fail after `secs`).
pub(crate) async fn until<T, F, Fut>(what: &str, secs: u64, mut f: F) -> Res<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Res<Option<T>>>,
{
    let t = Instant::now();
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if t.elapsed() > Duration::from_secs(secs) {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The completion tokens the page shows on the active branch (their text in the DOM).
async fn shown(c: &Client) -> Res<Vec<String>> {
    let v = c
        .execute(
            "return Array.from(document.querySelectorAll('.branch.active .tok.gen')).map(e => e.textContent)",
            vec![],
        )
        .await?;
    Ok(serde_json::from_value(v)?)
}

/// What the browser did: the page's completion texts and the forced candidate's id.
struct Seen {
    texts: Vec<String>,
    after_steps: Vec<String>,
    forced: i64,
    prompt_texts: Vec<String>,
}

/// Previews the server has answered.
fn previews(s: &Server) -> usize {
    s.log()
        .iter()
        .filter(|l| l.starts_with("POST /api/preview "))
        .count()
}

/// Whether the page has fetched the distribution after its last step (it previews 180 ms after
/// each step answer): the server's log has a preview after the last step.
fn previewed_after_step(s: &Server) -> bool {
    let log = s.log();
    let last = |p: &str| log.iter().rposition(|l| l.starts_with(p));
    match (last("POST /api/step "), last("POST /api/preview ")) {
        (Some(step), Some(preview)) => preview > step,
        (None, _) => true,
        _ => false,
    }
}

async fn drive(
    c: &Client,
    s: &Server,
    prompt: &str,
    prompt_tokens: &[String],
    shot: &Path,
) -> Res<Seen> {
    c.goto(&s.base).await?;
    // The page polls the status, then previews its starter prompt: candidates appear.
    until("the first distribution", 60, || async {
        Ok((!c
            .find_all(Locator::Css(".barRow[data-token-id]"))
            .await?
            .is_empty())
        .then_some(()))
    })
    .await?;
    // The greedy preset (its panel starts collapsed, so the button is pressed from script);
    // it previews again, and the answer redraws the branch (its textarea too).
    let before = previews(s);
    c.execute(
        "document.querySelector('#presetButtons .btn[data-preset=\"greedy\"]').click()",
        vec![],
    )
    .await?;
    until("the greedy preset", 10, || async {
        let on = c
            .execute(
                "return document.querySelector('#presetButtons .btn[data-preset=\"greedy\"]').classList.contains('active')",
                vec![],
            )
            .await?;
        Ok((on == Value::Bool(true)).then_some(()))
    })
    .await?;
    until("the preview after the preset", 30, || async {
        Ok((previews(s) > before).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Type the prompt. Each keystroke makes the page re-tokenise, and an answer redraws the
    // textarea: when it was replaced under the keys, type the rest into the new one.
    let mut typed = false;
    for _ in 0..10 {
        let ta = c
            .find(Locator::Css(
                ".branch.active textarea[data-role=\"prompt\"]",
            ))
            .await?;
        let value = ta.prop("value").await.ok().flatten().unwrap_or_default();
        if value == prompt {
            typed = true;
            break;
        }
        let attempt = if !value.is_empty() && prompt.starts_with(value.as_str()) {
            ta.send_keys(&prompt[value.len()..]).await
        } else {
            match ta.clear().await {
                Ok(()) => ta.send_keys(prompt).await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = attempt {
            eprintln!("typing the prompt again ({e})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !typed {
        return Err(format!("could not type {prompt:?} into the page's prompt").into());
    }
    // The page re-tokenises as it is typed; wait until it shows exactly the prompt's tokens.
    let prompt_texts: Vec<String> = until("the new prompt's tokens", 30, || async {
        let v = c
            .execute(
                "return Array.from(document.querySelectorAll('.branch.active .tok:not(.gen)')).map(e => e.textContent)",
                vec![],
            )
            .await?;
        let texts: Vec<String> = serde_json::from_value(v)?;
        Ok((texts == prompt_tokens).then_some(texts))
    })
    .await
    .map_err(|e| {
        format!("{e} (typed {prompt:?}; the page's prompt tokens should be {prompt_tokens:?})")
    })?;
    for n in 1..=3 {
        c.find(Locator::Id("stepBtn"))
            .await?
            .click()
            .await
            .map_err(|e| format!("pressing Step: {e}"))?;
        until("a step", 30, || async {
            Ok((shown(c).await?.len() == n).then_some(()))
        })
        .await?;
        // Let the page fetch and draw the next distribution before the next press.
        until("the preview after a step", 30, || async {
            Ok(previewed_after_step(s).then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let after_steps = shown(c).await?;
    // Force the second candidate by clicking its bar.
    let bars = c.find_all(Locator::Css(".barRow[data-token-id]")).await?;
    let bar = bars.get(1).ok_or("fewer than two candidates shown")?;
    let forced: i64 = bar
        .attr("data-token-id")
        .await?
        .ok_or("a bar without data-token-id")?
        .parse()?;
    bar.click()
        .await
        .map_err(|e| format!("clicking a candidate: {e}"))?;
    let texts = until("the forced token", 30, || async {
        let s = shown(c).await?;
        Ok((s.len() == 4).then_some(s))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(shot, c.screenshot().await?)?;
    Ok(Seen {
        texts,
        after_steps,
        forced,
        prompt_texts,
    })
}

#[test]
fn the_demo_page_runs_on_ntv_serve() {
    let seed = seed_dir();
    let s = Server::start(&["-c", "512", "--static", seed.to_str().unwrap()]).ready();
    let (code, html) = s.get_text("/");
    assert_eq!(code, 200);
    assert_eq!(
        html,
        std::fs::read_to_string(seed.join("index.html")).unwrap(),
        "the page unchanged"
    );
    let driver = Driver::start();
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-browser.png");
    let _ = std::fs::remove_file(&shot);
    let prompt = "The capital of Italy is";
    let display = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t["display"].as_str().unwrap().to_string())
            .collect()
    };
    let prompt_tokens =
        display(&s.ok("/api/preview", &request("check", prompt, &[]))["prompt_tokens"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen = rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": which("chromium"),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1920,1200"],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .expect("a Chromium session");
        let seen = drive(&client, &s, prompt, &prompt_tokens, &shot).await;
        let _ = client.close().await;
        seen
    });
    let seen = seen.unwrap_or_else(|e| {
        panic!(
            "the page did not work: {e}\nserver log:\n{}",
            s.log().join("\n")
        )
    });
    assert!(shot.is_file(), "screenshot saved");

    // What ntv returns for the same prompt: three greedy tokens (the page's greedy preset),
    // then the forced one.
    let sb = Sandbox::new();
    let generated = sb.json(&[
        "--no-session",
        "generate",
        "-p",
        prompt,
        "-n",
        "3",
        "--greedy",
        "--temp",
        "1",
        "--top-p",
        "1",
        "--repeat-penalty",
        "1",
        "-t",
        "1",
        "--json",
    ]);
    let mut want = ids(&generated["completion_ids"]);
    assert_eq!(want.len(), 3, "{generated}");
    want.push(seen.forced);
    let p = s.ok("/api/preview", &request("check", prompt, &want));
    let want_texts = display(&p["completion_tokens"]);
    assert_eq!(
        seen.after_steps,
        want_texts[..3],
        "three greedy steps as ntv generate"
    );
    assert_eq!(
        seen.texts, want_texts,
        "the page shows the tokens ntv returned"
    );
    assert_eq!(
        seen.prompt_texts,
        display(&p["prompt_tokens"]),
        "and the prompt's tokens"
    );
    assert_eq!(seen.prompt_texts, prompt_tokens);
    let log = s.log();
    assert!(
        log.iter().any(|l| l.starts_with("POST /api/step 200")),
        "{log:?}"
    );
}
