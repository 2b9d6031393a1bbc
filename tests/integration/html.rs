//! `--format html`: every page rendered from the real model, its DOM checked with `scraper`
//! (structure, the data the script reads, escaping of hostile token texts, no external
//! reference), then opened in headless Chromium from a file:// URL: the script runs without
//! error, hovering or clicking a token shows its distribution, and a screenshot of each page
//! is kept in `target/tmp/html-pages/` (CARGO_TARGET_TMPDIR).
//!
//! The browser test needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them);
//! a missing one is a loud failure, never a skip.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::actions::{InputSource, MouseActions, PointerAction};
use fantoccini::{Client, ClientBuilder, Locator};
use scraper::{Html, Selector};
use serde_json::{Value, json};

use crate::serve_browser::{Driver, Res, until, which};
use crate::util::{PROMPT, Sandbox, m};

/// A prompt whose pills must be escaped (its tokens are `<`, `script`, `>` …).
const HOSTILE_PROMPT: &str = "x<script>alert(1)</script>y";
/// Forced completion text that would end the data block or open an element if unescaped.
const HOSTILE_TEXT: &str = "</script><b>bold</b>&amp;<!--";

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap_or_else(|e| panic!("selector {s}: {e:?}"))
}

/// Run `ntv ARGS` (which ask for `--format html`), expecting `code`; the page's text.
#[track_caller]
fn page_with(sb: &Sandbox, args: &[&str], code: i32) -> String {
    let out = sb.run(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "ntv {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = String::from_utf8(out.stdout).expect("utf-8 page");
    assert!(
        html.starts_with("<!DOCTYPE html>"),
        "not a page: {html:.200}"
    );
    html
}

#[track_caller]
fn page(sb: &Sandbox, args: &[&str]) -> String {
    page_with(sb, args, 0)
}

/// What every page must be: parsed, self-contained, its scripts only ours.
#[track_caller]
fn parse(html: &str) -> Html {
    let doc = Html::parse_document(html);
    for el in doc.select(&sel("[src], [href]")) {
        for a in ["src", "href"] {
            if let Some(v) = el.value().attr(a) {
                assert!(v.starts_with('#'), "external reference {a}={v:?}");
            }
        }
    }
    let lower = html.to_lowercase();
    for bad in [
        "http://", "https://", "@import", "url(", "<link", "<iframe", "<img", "<object", "<embed",
    ] {
        assert!(!lower.contains(bad), "the page contains {bad:?}");
    }
    // The error collector, the data block (where there is one) and the page script: nothing
    // a token text could have added.
    let scripts: Vec<_> = doc.select(&sel("script")).collect();
    assert!(
        (2..=3).contains(&scripts.len()),
        "{} script elements",
        scripts.len()
    );
    for s in &scripts {
        assert!(
            matches!(s.value().attr("type"), None | Some("application/json")),
            "script type {:?}",
            s.value().attr("type")
        );
    }
    assert_eq!(doc.select(&sel("b, style ~ style")).count(), 0);
    doc
}

/// The JSON the page's script reads.
fn data(doc: &Html) -> Value {
    let el = doc
        .select(&sel("script#ntv-data"))
        .next()
        .expect("a data block");
    serde_json::from_str(&el.text().collect::<String>()).expect("the data block is JSON")
}

fn texts(doc: &Html, s: &str) -> Vec<String> {
    doc.select(&sel(s)).map(|e| e.text().collect()).collect()
}

#[test]
fn generate_page_shows_every_step_and_escapes_the_prompt() {
    let sb = Sandbox::new();
    let args = |f: &'static str| {
        vec![
            "--no-session",
            "generate",
            "-m",
            m(),
            "-p",
            HOSTILE_PROMPT,
            "-n",
            "8",
            "-t",
            "1",
            "--seed",
            "7",
            "--format",
            f,
        ]
    };
    let html = page(&sb, &args("html"));
    let doc = parse(&html);
    let json = sb.json(&args("json"));
    let ids: Vec<i64> = json["completion_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(doc.select(&sel("body[data-page=tokens]")).count(), 1);
    let pills: Vec<_> = doc.select(&sel(".context .tok.gen")).collect();
    assert_eq!(pills.len(), ids.len());
    for (i, t) in pills.iter().enumerate() {
        assert_eq!(t.value().attr("data-step"), Some(i.to_string().as_str()));
        assert!(t.value().classes().any(|c| c == "new"));
    }
    // The same generation: the recorded selections are the JSON output's tokens, with every
    // step's shown candidates (10 by default) and the JSON's p_final.
    let d = data(&doc);
    let steps = d["steps"].as_array().unwrap();
    assert_eq!(steps.len(), ids.len());
    for (s, (id, rec)) in steps
        .iter()
        .zip(ids.iter().zip(json["steps"].as_array().unwrap()))
    {
        assert_eq!(s["sel"].as_i64(), Some(*id));
        let shown = rec["appended_meta"]["dist"]["tokens"].as_array().unwrap();
        assert!(s["c"].as_array().unwrap().len() >= shown.len());
        let mine = s["c"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c[6].as_i64() == Some(*id))
            .unwrap();
        let p = rec["selected"]["p_final"].as_f64().unwrap();
        assert!(
            (mine[2].as_f64().unwrap() - p).abs() < 1e-6,
            "{mine} vs {p}"
        );
    }
    // The hostile prompt is in the pills as text, never as markup.
    let context: String = texts(&doc, ".context .pills > .tok:not(.gen)").concat();
    assert!(context.contains(HOSTILE_PROMPT), "{context}");
    assert!(
        !html.contains(HOSTILE_PROMPT),
        "the prompt went out unescaped"
    );
    // Without the script, the last step's distribution is drawn.
    assert_eq!(
        doc.select(&sel("#dist-body table.dist tbody tr")).count(),
        steps.last().unwrap()["c"].as_array().unwrap().len()
    );
}

#[test]
fn step_branch_show_and_preview_pages_escape_a_forced_hostile_completion() {
    let sb = Sandbox::new();
    let s = sb.session();
    let s = s.to_str().unwrap();
    let first = page(
        &sb,
        &[
            "--session",
            s,
            "step",
            "-m",
            m(),
            "-p",
            PROMPT,
            "-n",
            "2",
            "-t",
            "1",
            "--seed",
            "1",
            "--format",
            "html",
        ],
    );
    let doc = parse(&first);
    assert_eq!(doc.select(&sel(".tok.gen.new")).count(), 2);
    let forced = page(
        &sb,
        &[
            "--session",
            s,
            "step",
            "--text",
            HOSTILE_TEXT,
            "-t",
            "1",
            "--format",
            "html",
        ],
    );
    let doc = parse(&forced);
    let all = texts(&doc, ".tok.gen");
    let new = texts(&doc, ".tok.gen.new");
    assert_eq!(new.concat(), HOSTILE_TEXT, "the forced tokens, as text");
    assert_eq!(all.len(), 2 + new.len());
    assert_eq!(doc.select(&sel(".tok.gen.forced")).count(), new.len());
    assert!(!forced.contains(HOSTILE_TEXT));
    let steps = data(&doc)["steps"].as_array().unwrap().clone();
    assert_eq!(steps.len(), all.len());
    assert_eq!(steps[2]["by"], "forced");

    // branch show: no model, the prompt as text, the same tokens and distributions.
    let show = page(&sb, &["--session", s, "branch", "show", "--format", "html"]);
    let sdoc = parse(&show);
    assert_eq!(texts(&sdoc, ".tok.gen"), all);
    assert_eq!(sdoc.select(&sel(".tok.gen.new")).count(), 0);
    assert!(texts(&sdoc, "pre.prompt").concat().contains(PROMPT));
    assert_eq!(data(&sdoc)["steps"], Value::Array(steps));

    // preview: the next token's distribution, as many candidates as the JSON shows.
    let pv = page(
        &sb,
        &["--session", s, "preview", "-t", "1", "--format", "html"],
    );
    let pdoc = parse(&pv);
    let json = sb.json(&["--session", s, "preview", "-t", "1", "--format", "json"]);
    let n = json["dist"]["tokens"].as_array().unwrap().len();
    assert_eq!(pdoc.select(&sel(".tok.next[data-step=next]")).count(), 1);
    assert_eq!(data(&pdoc)["next"]["c"].as_array().unwrap().len(), n);
    assert_eq!(pdoc.select(&sel("#dist-body tbody tr")).count(), n);
    assert_eq!(texts(&pdoc, ".tok.gen"), all);
}

#[test]
fn attribute_pages_draw_the_heatmap_the_matrix_and_a_batch_index() {
    let sb = Sandbox::new();
    let s = sb.session();
    let s = s.to_str().unwrap();
    sb.json(&[
        "--session",
        s,
        "step",
        "-m",
        m(),
        "-p",
        HOSTILE_PROMPT,
        "-n",
        "3",
        "-t",
        "1",
        "--seed",
        "2",
        "--format",
        "json",
    ]);
    let args = |f: &'static str| {
        vec![
            "--session",
            s,
            "attribute",
            "--all",
            "-t",
            "1",
            "--format",
            f,
        ]
    };
    let html = page(&sb, &args("html"));
    let doc = parse(&html);
    let json = sb.json(&args("json"));
    let targets = json["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 3);
    assert_eq!(
        doc.select(&sel("section.attr .targets .tok.target"))
            .count(),
        3
    );
    // The matrix: a row per target, a column per position of the longest context.
    let longest = targets
        .iter()
        .map(|t| t["context_len"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(doc.select(&sel("table.heat tbody tr")).count(), 3);
    assert_eq!(
        doc.select(&sel("table.heat thead th.col")).count() as u64,
        longest
    );
    assert_eq!(
        doc.select(&sel("section.attr .ctx .tok")).count() as u64,
        longest
    );
    // The first target's context has no score for the later completion tokens.
    let first_len = targets[0]["context_len"].as_u64().unwrap();
    assert_eq!(
        doc.select(&sel("table.heat tbody tr[data-row='0'] td.none"))
            .count() as u64,
        longest - first_len
    );
    let d = data(&doc);
    for (t, rec) in d[0]["targets"].as_array().unwrap().iter().zip(targets) {
        let scores: Vec<f64> = rec["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["score"].as_f64().unwrap())
            .collect();
        let mine: Vec<f64> = t["s"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(mine.len(), scores.len());
        assert!(mine.iter().zip(&scores).all(|(a, b)| (a - b).abs() < 1e-6));
    }
    let facts = texts(&doc, "dl.facts dd");
    assert!(facts.contains(&json["targets"][0]["method"].as_str().unwrap().to_string()));
    assert!(
        facts.contains(
            &json["targets"][0]["aggregation"]
                .as_str()
                .unwrap()
                .to_string()
        )
    );
    assert!(doc.select(&sel(".legend .scale")).count() >= 1);
    assert!(
        texts(&doc, ".pills.plain .tok")
            .concat()
            .contains(HOSTILE_PROMPT)
    );

    // A batch: one page, an index of its requests, the bad line in place (exit 2).
    std::fs::write(
        sb.path().join("reqs.jsonl"),
        "{\"prompt\": \"Hi <b>there</b>\", \"id\": \"a\"}\n{\"prompt\": \"2+2=\", \"id\": \"b\", \"method\": \"attention\"}\nnot json\n",
    )
    .unwrap();
    let batch = page_with(
        &sb,
        &[
            "--no-session",
            "attribute",
            "-m",
            m(),
            "--batch",
            "reqs.jsonl",
            "-t",
            "1",
            "--format",
            "html",
        ],
        2,
    );
    let bdoc = parse(&batch);
    assert_eq!(bdoc.select(&sel("nav.index li")).count(), 3);
    let hrefs: Vec<_> = bdoc
        .select(&sel("nav.index a"))
        .map(|a| a.value().attr("href").unwrap().to_string())
        .collect();
    assert_eq!(hrefs, ["#req-1", "#req-2", "#req-3"]);
    for h in &hrefs {
        assert_eq!(
            bdoc.select(&sel(&format!("article.request{h}"))).count(),
            1,
            "{h}"
        );
    }
    assert_eq!(bdoc.select(&sel("article.request section.attr")).count(), 2);
    assert_eq!(bdoc.select(&sel("#req-3 .fail")).count(), 1);
    assert_eq!(data(&bdoc).as_array().unwrap().len(), 2);
    assert!(
        texts(&bdoc, "#req-1 .ctx .tok")
            .concat()
            .contains("<b>there</b>")
    );
}

/// Record a greedy trace; with `tamper`, step 2's token becomes its runner-up.
fn trace(sb: &Sandbox, name: &str, tamper: bool) -> PathBuf {
    let path = sb.path().join(name);
    sb.json(&[
        "--no-session",
        "generate",
        "-m",
        m(),
        "-p",
        PROMPT,
        "-n",
        "12",
        "-t",
        "1",
        "--temp",
        "0",
        "--record",
        path.to_str().unwrap(),
        "--format",
        "json",
    ]);
    if tamper {
        let mut t: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let step = &mut t["cases"][0]["steps"][2];
        step["selected_id"] = step["top"][1]["id"].clone();
        std::fs::write(&path, serde_json::to_vec(&t).unwrap()).unwrap();
    }
    path
}

#[test]
fn check_and_diff_pages_mark_the_first_divergence() {
    let sb = Sandbox::new();
    let good = trace(&sb, "good.json", false);
    let bad = trace(&sb, "bad.json", true);
    let pass = page(
        &sb,
        &[
            "--no-session",
            "check",
            good.to_str().unwrap(),
            "--format",
            "html",
        ],
    );
    let doc = parse(&pass);
    assert_eq!(doc.select(&sel(".verdict.pass")).count(), 1);
    assert_eq!(doc.select(&sel(".divergence, .tok.diverge")).count(), 0);
    assert_eq!(doc.select(&sel(".strip")).count(), 2);
    assert_eq!(
        doc.select(&sel(".strip"))
            .next()
            .unwrap()
            .select(&sel(".tok"))
            .count(),
        12
    );

    // A regression: the page still comes out (exit 1), the divergence at step 2 marked in the
    // strips, the plot and the worst-steps table.
    let fail = page_with(
        &sb,
        &[
            "--no-session",
            "check",
            bad.to_str().unwrap(),
            "--format",
            "html",
        ],
        1,
    );
    let doc = parse(&fail);
    assert_eq!(doc.select(&sel(".verdict.fail")).count(), 1);
    let div = texts(&doc, ".divergence strong").concat();
    assert!(div.contains("step 2") && div.contains("token"), "{div}");
    for strip in doc.select(&sel(".strip")) {
        let toks: Vec<_> = strip.select(&sel(".tok")).collect();
        assert!(toks[2].value().classes().any(|c| c == "diverge"));
        assert!(
            toks[3..]
                .iter()
                .all(|t| t.value().classes().any(|c| c == "after"))
        );
    }
    assert_eq!(doc.select(&sel("figure.plot svg line.mark")).count(), 1);
    assert_eq!(doc.select(&sel("figure.plot svg polyline")).count(), 1);
    let rows = doc.select(&sel("table.worst tbody tr")).count();
    assert!((1..=10).contains(&rows), "{rows} rows");

    // diff of the trace with itself: KL 0 everywhere, no divergence.
    let same = page(
        &sb,
        &[
            "--no-session",
            "diff",
            good.to_str().unwrap(),
            good.to_str().unwrap(),
            "--format",
            "html",
        ],
    );
    let doc = parse(&same);
    assert!(
        texts(&doc, ".divergence")
            .concat()
            .contains("same top-1 token at every step")
    );
    assert_eq!(doc.select(&sel("table.worst tbody tr")).count(), 10);
    assert!(
        texts(&doc, "table.worst tbody td:nth-child(2)")
            .iter()
            .all(|k| k == "0")
    );
    assert_eq!(doc.select(&sel("svg line.mark")).count(), 0);
}

#[test]
fn sweep_page_plots_each_candidate() {
    let sb = Sandbox::new();
    let args = |f: &'static str| {
        vec![
            "--no-session",
            "sweep",
            "-m",
            m(),
            "-p",
            PROMPT,
            "temp=0.2:2:0.2",
            "-t",
            "1",
            "--format",
            f,
        ]
    };
    let doc = parse(&page(&sb, &args("html")));
    let json = sb.json(&args("json"));
    let lines = json["candidates"].as_array().unwrap().len().min(8);
    assert_eq!(doc.select(&sel("figure.plot")).count(), 3);
    assert_eq!(
        doc.select(&sel("figure.plot"))
            .next()
            .unwrap()
            .select(&sel("polyline"))
            .count(),
        lines
    );
    assert_eq!(doc.select(&sel(".keys .key")).count(), lines);
}

#[test]
fn lens_page_draws_positions_by_layers() {
    let sb = Sandbox::new();
    let args = |f: &'static str| {
        vec![
            "lens",
            "--no-session",
            "-m",
            m(),
            "-p",
            PROMPT,
            "--all",
            "-t",
            "1",
            "--format",
            f,
        ]
    };
    let html = page(&sb, &args("html"));
    let doc = parse(&html);
    let json = sb.json(&args("json"));
    let positions = json["positions"].as_array().unwrap();
    let layers = json["n_layers"].as_u64().unwrap() as usize;
    let grid = doc.select(&sel("figure.grid")).next().expect("the grid");
    let rows: Vec<_> = grid.select(&sel("tbody tr")).collect();
    assert_eq!(rows.len(), positions.len(), "one row per position");
    for (r, p) in rows.iter().zip(positions) {
        let cells: Vec<_> = r.select(&sel("td")).collect();
        assert_eq!(cells.len(), layers, "one cell per layer");
        // Each cell's title is the lens probability of the tracked token at that layer.
        let last: f64 = cells[layers - 1]
            .value()
            .attr("title")
            .unwrap()
            .parse()
            .unwrap();
        let want = p["layers"][layers - 1]["p"].as_f64().unwrap();
        // The title shows four decimals (three significant digits below 0.001).
        assert!(
            (last - want).abs() <= 5e-5 + 5e-3 * want,
            "{last} vs {want}"
        );
    }
    assert_eq!(
        doc.select(&sel("table.worst tbody tr")).count(),
        positions.len()
    );
}

#[test]
fn commands_without_a_page_refuse_html_before_any_work() {
    let sb = Sandbox::new();
    let err = sb.fails(&["load", m(), "--format", "html"], 2);
    assert!(
        err.contains("--format html") && err.contains("hint:"),
        "{err}"
    );
    assert!(sb.session_bytes().is_none(), "nothing written");
    sb.fails(
        &[
            "--no-session",
            "generate",
            "--batch",
            "x.jsonl",
            "--format",
            "html",
        ],
        2,
    );
    sb.fails(&["branch", "list", "--format", "html"], 2);
}

/// A client of a headless Chromium.
async fn chromium(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": which("chromium"),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1280,900",
                "--allow-file-access-from-files"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Open a page; wait for its script's end marker; no error on the way.
async fn open(c: &Client, file: &Path) -> Res<()> {
    c.goto(&format!("file://{}", file.display())).await?;
    until("the page script", 20, || async {
        Ok(
            (c.execute("return window.ntvReady === true", vec![]).await? == Value::Bool(true))
                .then_some(()),
        )
    })
    .await?;
    let errors = c.execute("return window.ntvErrors", vec![]).await?;
    if errors != json!([]) {
        return Err(format!("script errors on {}: {errors}", file.display()).into());
    }
    Ok(())
}

async fn hover(c: &Client, css: &str) -> Res<()> {
    let el = c.find(Locator::Css(css)).await?;
    let actions = MouseActions::new("mouse".into()).then(PointerAction::MoveToElement {
        element: el,
        duration: Some(Duration::from_millis(50)),
        x: 0.0,
        y: 0.0,
    });
    c.perform_actions(actions).await?;
    Ok(())
}

async fn js(c: &Client, script: &str) -> Res<Value> {
    Ok(c.execute(script, vec![]).await?)
}

async fn shoot(c: &Client, dir: &Path, name: &str) -> Res<()> {
    let png = c.screenshot().await?;
    if !png.starts_with(b"\x89PNG") {
        return Err("the screenshot is not a PNG".into());
    }
    std::fs::write(dir.join(format!("{name}.png")), png)?;
    Ok(())
}

/// The distribution panel after pointing at step `i`: its title, its rows, the selected row's
/// token and what the data says it should be.
async fn panel(c: &Client, i: usize) -> Res<Value> {
    js(
        c,
        &format!(
            "const d = JSON.parse(document.getElementById('ntv-data').textContent).steps[{i}];
             const sel = document.querySelector('#dist-body tr.sel td .tok');
             return {{title: document.getElementById('dist-step').textContent,
                     rows: document.querySelectorAll('#dist-body tbody tr').length,
                     want_rows: d.c.length,
                     sel: sel && sel.textContent,
                     want_sel: d.c.find(x => x[6] === d.sel)[0],
                     token: document.querySelector('.tok.gen[data-step=\"{i}\"]').textContent}};"
        ),
    )
    .await
}

/// A failed expectation in the browser, as an error (a panic would leave Chromium running).
fn expect(ok: bool, what: &str, seen: &Value) -> Res<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("{what}: {seen}").into())
    }
}

fn check_panel(p: &Value, i: usize) -> Res<()> {
    expect(
        p["title"] == format!(" step {i}").as_str(),
        &format!("the panel shows step {i}"),
        p,
    )?;
    expect(
        p["rows"] == p["want_rows"],
        "one row per recorded candidate",
        p,
    )?;
    expect(
        p["sel"] == p["want_sel"],
        "the selected row is the step's token",
        p,
    )?;
    expect(
        p["sel"] == p["token"],
        "the selected row is the pointed token",
        p,
    )
}

async fn browse(c: &Client, pages: &[(&str, PathBuf)], shots: &Path) -> Res<()> {
    for (name, file) in pages {
        open(c, file).await?;
        match *name {
            "generate" | "step" => {
                // Hovering a token shows its step; a click pins it against later hovers.
                hover(c, ".tok.gen[data-step=\"1\"]").await?;
                check_panel(&panel(c, 1).await?, 1)?;
                c.find(Locator::Css(".tok.gen[data-step=\"3\"]"))
                    .await?
                    .click()
                    .await?;
                hover(c, ".tok.gen[data-step=\"0\"]").await?;
                check_panel(&panel(c, 3).await?, 3)?;
                let pinned = js(
                    c,
                    "return document.querySelectorAll('.tok.gen.pinned').length",
                )
                .await?;
                expect(pinned == json!(1), "one token pinned", &pinned)?;
            }
            "preview" => {
                hover(c, ".tok.next").await?;
                let title =
                    js(c, "return document.getElementById('dist-step').textContent").await?;
                expect(
                    title == json!(" next token"),
                    "the panel shows the next token",
                    &title,
                )?;
                let rows = js(c, "return document.querySelectorAll('#dist-body tbody tr').length === JSON.parse(document.getElementById('ntv-data').textContent).next.c.length").await?;
                expect(
                    rows == json!(true),
                    "one row per next-token candidate",
                    &rows,
                )?;
            }
            "attribute" => {
                // Hovering target 2 colours the context by its scores.
                hover(c, ".targets .tok.target[data-target=\"2\"]").await?;
                let seen = js(
                    c,
                    "const g = JSON.parse(document.getElementById('ntv-data').textContent)[0];
                     const sec = document.querySelector('section.attr');
                     const ctx = Array.from(sec.querySelectorAll('.ctx .tok'));
                     return {selected: sec.dataset.selected,
                             scores: ctx.filter(t => t.dataset.score !== '').map(t => Number(t.dataset.score)),
                             want: g.targets[2].s,
                             active: sec.querySelector('.targets .active').dataset.target,
                             row: sec.querySelector('table.heat tr.active').dataset.row};",
                )
                .await?;
                expect(seen["selected"] == "2", "target 2 selected", &seen)?;
                expect(
                    seen["scores"] == seen["want"],
                    "the context shows target 2's scores",
                    &seen,
                )?;
                expect(seen["active"] == "2", "target 2 marked", &seen)?;
                expect(
                    seen["row"] == "2",
                    "the matrix row of target 2 marked",
                    &seen,
                )?;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        shoot(c, shots, name).await?;
    }
    Ok(())
}

#[test]
fn html_pages_run_in_chromium() {
    let sb = Sandbox::new();
    let s = sb.session();
    let s = s.to_str().unwrap();
    let good = trace(&sb, "good.json", false);
    let bad = trace(&sb, "bad.json", true);
    let mut pages: Vec<(&str, PathBuf)> = Vec::new();
    let mut save = |name: &'static str, args: &[&str], code: i32| {
        let html = page_with(&sb, args, code);
        let f = sb.path().join(format!("{name}.html"));
        std::fs::write(&f, html).unwrap();
        pages.push((name, f));
    };
    save(
        "generate",
        &[
            "--session",
            s,
            "generate",
            "-m",
            m(),
            "-p",
            HOSTILE_PROMPT,
            "-n",
            "12",
            "-t",
            "1",
            "--seed",
            "5",
            "--format",
            "html",
        ],
        0,
    );
    save(
        "step",
        &[
            "--session",
            s,
            "step",
            "--text",
            HOSTILE_TEXT,
            "-t",
            "1",
            "--format",
            "html",
        ],
        0,
    );
    save(
        "preview",
        &["--session", s, "preview", "-t", "1", "--format", "html"],
        0,
    );
    save(
        "lens",
        &[
            "lens",
            "--no-session",
            "-m",
            m(),
            "-p",
            PROMPT,
            "--all",
            "-t",
            "1",
            "--format",
            "html",
        ],
        0,
    );
    save(
        "branch-show",
        &["--session", s, "branch", "show", "--format", "html"],
        0,
    );
    save(
        "attribute",
        &[
            "--session",
            s,
            "attribute",
            "--all",
            "-t",
            "1",
            "--format",
            "html",
        ],
        0,
    );
    std::fs::write(
        sb.path().join("reqs.jsonl"),
        "{\"prompt\": \"Hi\"}\n{\"prompt\": \"2+2=\", \"method\": \"attention\"}\n",
    )
    .unwrap();
    save(
        "attribute-batch",
        &[
            "--no-session",
            "attribute",
            "-m",
            m(),
            "--batch",
            "reqs.jsonl",
            "-t",
            "1",
            "--format",
            "html",
        ],
        0,
    );
    save(
        "check",
        &[
            "--no-session",
            "check",
            bad.to_str().unwrap(),
            "--format",
            "html",
        ],
        1,
    );
    save(
        "diff",
        &[
            "--no-session",
            "diff",
            good.to_str().unwrap(),
            bad.to_str().unwrap(),
            "--format",
            "html",
        ],
        0,
    );
    save(
        "sweep",
        &[
            "--no-session",
            "sweep",
            "-m",
            m(),
            "-p",
            PROMPT,
            "temp=0.2:2:0.2",
            "top-p=0.5,0.9",
            "-t",
            "1",
            "--format",
            "html",
        ],
        0,
    );

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("html-pages");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let driver = Driver::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        let c = chromium(&driver).await;
        let r = browse(&c, &pages, &shots).await;
        let _ = c.close().await;
        r
    });
    result.unwrap_or_else(|e| panic!("a page did not work in Chromium: {e}"));
    for (name, _) in &pages {
        assert!(
            shots.join(format!("{name}.png")).is_file(),
            "screenshot of {name}"
        );
    }
}

#[test]
fn a_constrained_generation_shows_validity() {
    let sb = Sandbox::new();
    let html = page(
        &sb,
        &[
            "--no-session",
            "generate",
            "-m",
            m(),
            "-p",
            "Is Paris in France?",
            "--choice",
            "Yes",
            "--choice",
            "No",
            "--seed",
            "2",
            "-t",
            "1",
            "--format",
            "html",
        ],
    );
    let doc = parse(&html);
    let d = data(&doc);
    let steps = d["steps"].as_array().unwrap();
    assert!(!steps.is_empty());
    let first = &steps[0];
    assert!(first["con"].is_string(), "{first}");
    assert!(first["valid"].as_u64().is_some(), "{first}");
    let invalid = |s: &Value| {
        s["c"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c[4] == false)
            .count()
    };
    assert!(
        invalid(first) > 0,
        "the constraint forbids some shown candidates: {first}"
    );
    // Drawn without the script: the last step's forbidden candidates are marked.
    let last = steps.last().unwrap();
    assert_eq!(
        doc.select(&sel("#dist-body tr.invalid")).count(),
        invalid(last)
    );
}
