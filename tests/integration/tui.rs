//! The explorer, headless: ratatui's `TestBackend` renders the real model's states (insta
//! snapshots), and keys drive the same core the CLI uses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ntv::engine::{ContextOptions, LoadOptions, Model};
use ntv::sampling::SamplingParams;
use ntv::settings::{CacheSetting, ModelChoice, PromptSpec, RunSettings, SeedChoice};
use ntv::tui::App;
use ntv::workbench::{Mode, SessionStore, Workbench};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::util::{PROMPT, model};

fn settings(constraint: Option<ntv::constraint::ConstraintSpec>) -> RunSettings {
    RunSettings {
        prompt: Some(PromptSpec::text(PROMPT, ntv::chat::DEFAULT_SYSTEM)),
        params: SamplingParams::default(),
        preset: None,
        greedy: false,
        display_k: 10,
        context: ContextOptions {
            n_ctx: 512,
            n_threads: 1,
            ..ContextOptions::default()
        },
        gpu_layers: None,
        constraint,
        model: ModelChoice::Default,
        cache: CacheSetting::Off,
        seed: SeedChoice {
            seed: Some(7),
            reset_rng: false,
        },
        stops: Vec::new(),
        max_tokens: None,
    }
}

/// A core over the test model with a detached session.
fn open(m: &Model, constraint: Option<ntv::constraint::ConstraintSpec>) -> Workbench<'_> {
    Workbench::open(
        m,
        SessionStore::detached(),
        settings(constraint),
        Mode::Record { reset: false },
    )
    .unwrap()
}

fn press(app: &mut App<'_>, keys: &str) {
    for c in keys.chars() {
        let code = match c {
            '<' => KeyCode::Left,
            '>' => KeyCode::Right,
            'v' => KeyCode::Down,
            '\n' => KeyCode::Enter,
            '\x08' => KeyCode::Backspace,
            '\x1b' => KeyCode::Esc,
            c => KeyCode::Char(c),
        };
        app.key(KeyEvent::new(code, KeyModifiers::NONE))
            .expect("key");
    }
}

/// The heatmap's background at `level` for a positive score (the tables' ramp).
fn ntv_heat(level: f64) -> (ratatui::style::Color, ratatui::style::Color) {
    let (bg, fg) = ntv::tui::view::heat_colours(level, false);
    (
        ratatui::style::Color::Indexed(bg),
        ratatui::style::Color::Indexed(fg),
    )
}

/// Each cell's symbol and background colour.
fn backgrounds(app: &App<'_>, w: u16, h: u16) -> Vec<(String, ratatui::style::Color)> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| ntv::tui::view::draw(f, app)).unwrap();
    t.backend()
        .buffer()
        .content()
        .iter()
        .map(|c| (c.symbol().to_string(), c.bg))
        .collect()
}

/// The screen as text; the measured speed (the one varying figure) is written `[r] tok/s`,
/// keeping the width.
fn screen(app: &App<'_>, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| ntv::tui::view::draw(f, app)).unwrap();
    let text = format!("{}", t.backend());
    // The figure is right-aligned in a fixed width; its padding goes with it.
    let rate = regex::Regex::new(r" *\d+\.\d tok/s").unwrap();
    rate.replace_all(&text, |c: &regex::Captures| {
        let n = c[0].chars().count();
        format!("{:>n$}", "[r] tok/s")
    })
    .into_owned()
}

#[test]
fn screens_of_the_main_states() {
    let m = Arc::new(Model::load(model(), &LoadOptions::default()).expect("model"));
    let wb = open(&m, None);
    // The first frame comes before any decode: the context, and a note that it decodes.
    let mut app = App::open(wb, Arc::clone(&m));
    let first = screen(&app, 80, 24);
    assert!(
        first.contains("decoding the context") && first.contains("25 + 0 tokens"),
        "{first}"
    );
    assert_eq!(app.workbench().cache_use().decoded_tokens, 0);
    app.ready().unwrap();
    insta::assert_snapshot!("tui_fresh_80x24", screen(&app, 80, 24));
    press(&mut app, "ggg");
    insta::assert_snapshot!("tui_three_steps_wide", screen(&app, 140, 40));
    press(&mut app, "<<");
    insta::assert_snapshot!("tui_cursor_on_token_1", screen(&app, 80, 24));
    press(&mut app, "?");
    insta::assert_snapshot!("tui_help", screen(&app, 80, 24));
    press(&mut app, "?a");
    app.wait_attribution();
    let r = app.attribution_shown().expect("the overlay");
    assert_eq!(
        (r.target.index, r.method),
        (Some(1), ntv::attribution::Method::Attention)
    );
    let sum: f64 = r.scores.iter().map(|t| t.score).sum();
    assert!(
        (sum - 1.0).abs() < 1e-6,
        "attention scores are a distribution: {sum}"
    );
    // The time it took is the one varying figure on screen.
    let timed = regex::Regex::new(r"in \d+\.\d s").unwrap();
    let shown = screen(&app, 100, 30);
    assert!(timed.is_match(&shown), "{shown}");
    insta::assert_snapshot!("tui_attribution", timed.replace(&shown, "in [t] s"));
    // The context is shaded as `ntv attribute` shades it: the strongest token on the ramp's
    // hottest colour, the target's later tokens not at all.
    let top = r
        .scores
        .iter()
        .max_by(|a, b| a.score.abs().total_cmp(&b.score.abs()))
        .unwrap();
    let (hot, _) = ntv_heat(1.0);
    let cells = backgrounds(&app, 100, 30);
    assert!(
        cells
            .iter()
            .any(|(sym, bg)| *bg == hot && top.display.starts_with(sym.as_str())),
        "the top token {:?} on the hottest background",
        top.display
    );
    press(&mut app, "x");
    assert!(
        app.attribution_shown().is_none(),
        "any key closes the overlay"
    );

    let spec = ntv::constraint::ConstraintSpec {
        kind: ntv::constraint::ConstraintKind::Choice,
        source: r#"["Paris", "Lyon"]"#.into(),
    };
    let wb = open(&m, Some(spec));
    let mut app = App::new(wb, Arc::clone(&m)).unwrap();
    insta::assert_snapshot!("tui_constraint", screen(&app, 100, 24));
    assert_eq!(app.dist().kept_token_count, 1);
    press(&mut app, "C");
    assert_eq!(app.dist().kept_token_count, 22, "without the constraint");
    assert!(app.workbench().session().constraint.is_none());
    press(&mut app, "C");
    assert_eq!(app.dist().kept_token_count, 1, "back on");
}

#[test]
fn keys_drive_the_core_and_knobs_decode_nothing() {
    let m = Arc::new(Model::load(model(), &LoadOptions::default()).expect("model"));
    let wb = open(&m, None);
    let mut app = App::new(wb, Arc::clone(&m)).unwrap();
    let decoded = app.workbench().cache_use().decoded_tokens;
    let before = app.dist().tokens[0].clone();
    press(&mut app, "TTT");
    let after = app
        .dist()
        .tokens
        .iter()
        .find(|c| c.id == before.id)
        .unwrap();
    assert!((app.workbench().settings().params.temperature - 1.0).abs() < 1e-9);
    assert_ne!(
        after.p_final, before.p_final,
        "p_final moves with the temperature"
    );
    assert_eq!(after.p_base, before.p_base);
    assert_eq!(
        app.workbench().cache_use().decoded_tokens,
        decoded,
        "a knob decodes nothing"
    );
    press(&mut app, "ggg");
    assert_eq!(app.workbench().completion().len(), 3);
    assert_eq!(
        app.workbench().cache_use().decoded_tokens,
        decoded + 3,
        "each step (with the preview after it) decodes one token"
    );
    // Force the second candidate at the end, then undo it.
    press(&mut app, "v\n");
    assert_eq!(app.workbench().completion().len(), 4);
    press(&mut app, "u");
    assert_eq!(app.workbench().completion().len(), 3);
    // On token 1, another candidate rewinds onto a new branch; the old one is kept.
    let main = app.workbench().completion().to_vec();
    press(&mut app, "<<");
    let other = app
        .dist()
        .tokens
        .iter()
        .position(|c| c.id != main[1])
        .unwrap();
    for _ in 0..other {
        press(&mut app, "v");
    }
    press(&mut app, "\n");
    let s = app.workbench().session();
    assert_eq!(s.branches.len(), 2);
    assert_ne!(s.active_branch, "main");
    assert_eq!(app.workbench().completion()[..1], main[..1]);
    assert_ne!(app.workbench().completion()[1], main[1]);
    press(&mut app, "b");
    assert_eq!(app.workbench().session().active_branch, "main");
    assert_eq!(app.workbench().completion(), &main[..]);
    // Free text: typed on the status line, forced whole on enter; esc cancels.
    let n = app.workbench().completion().len();
    press(&mut app, "F Paris\n");
    let paris = m.tokenize(" Paris", false, false);
    assert_eq!(app.workbench().completion()[n..], paris[..]);
    press(&mut app, "Fxyz\x1b");
    assert_eq!(
        app.workbench().completion().len(),
        n + paris.len(),
        "esc typed nothing"
    );
    // A new prompt re-prefills; the branch starts over.
    press(&mut app, "e");
    for _ in 0..PROMPT.len() {
        press(&mut app, "\x08");
    }
    press(&mut app, "Name a colour.\n");
    assert_eq!(
        app.workbench().session().prompt.as_deref(),
        Some("Name a colour.")
    );
    assert!(app.workbench().completion().is_empty());
    // The knobs stop at their bounds: top-p never leaves (0, 1].
    press(&mut app, "oooooooooooooooooooooo");
    assert!((app.workbench().settings().params.top_p - 0.05).abs() < 1e-9);
    // Refused input goes to the status line and changes nothing.
    let n = app.workbench().completion().len();
    press(&mut app, "F\n");
    assert_eq!(app.workbench().completion().len(), n);
    let s = screen(&app, 100, 24);
    assert!(s.contains("--text is empty"), "the refusal is shown:\n{s}");
    press(&mut app, "q");
    assert!(app.quitting());
}

#[test]
fn gradient_attribution_runs_in_the_background_shows_progress_and_cancels() {
    use ntv::attribution::Method;
    let m = Arc::new(Model::load(model(), &LoadOptions::default()).expect("model"));
    let mut app = App::new(open(&m, None), Arc::clone(&m)).unwrap();
    press(&mut app, "gg");
    // Attention → occlusion → saliency → input×gradient → integrated gradients.
    press(&mut app, "AAAA");
    assert_eq!(app.method(), Method::IntegratedGradients);
    let deadline = Instant::now() + Duration::from_secs(120);
    let watch_until = |app: &mut App<'_>, what: &str, ok: &dyn Fn((u64, u64)) -> bool| {
        loop {
            let p = app.attribution_progress().expect(what);
            if ok(p) {
                return p;
            }
            assert!(Instant::now() < deadline, "{what}: still {p:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    // The key returns at once; the job runs on the attribution thread.
    press(&mut app, "a");
    assert!(
        app.attribution_progress().is_some(),
        "running in the background"
    );
    // Meanwhile the core is left alone: a step key only says how to cancel.
    press(&mut app, "s");
    assert_eq!(app.workbench().completion().len(), 2);
    assert!(app.status().contains("esc cancels"), "{}", app.status());
    let (_, total) = watch_until(&mut app, "progress", &|(_, t)| t > 0);
    assert_eq!(total, 50, "one unit per quadrature node");
    let s = screen(&app, 100, 24);
    assert!(
        s.contains("integrated_gradients: why") && s.contains("/50") && s.contains("esc cancels"),
        "the status line shows the progress:\n{s}"
    );
    // Cancel part-way: after the first batch of nodes, before the last.
    let (done, _) = watch_until(&mut app, "first batch", &|(d, _)| d > 0);
    assert!(done < 50, "{done}");
    press(&mut app, "\x1b");
    app.wait_attribution();
    assert!(app.attribution_progress().is_none());
    assert!(
        app.attribution_shown().is_none(),
        "a cancelled run shows nothing"
    );
    assert!(app.status().contains("cancelled"), "{}", app.status());
    assert!(!app.quitting(), "esc cancelled the job, it did not quit");

    // The thread takes the next job: saliency, shown with its scores.
    press(&mut app, "AAA");
    assert_eq!(app.method(), Method::Saliency);
    press(&mut app, "a");
    app.wait_attribution();
    let r = app.attribution_shown().expect("saliency overlay");
    assert_eq!(r.method, Method::Saliency);
    assert!(r.scores.iter().all(|t| t.score.is_finite()));
    // Quitting while a job runs cancels it; dropping the explorer joins its thread.
    press(&mut app, "xAAa");
    assert_eq!(app.method(), Method::IntegratedGradients);
    assert!(app.attribution_progress().is_some());
    press(&mut app, "q");
    assert!(app.quitting());
    let t = Instant::now();
    drop(app);
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "the cancelled job stopped at a batch boundary"
    );
}

/// The tmux server of one test, on its own socket; killed when dropped (also on panic).
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("tmux")
            // CI may run without a terminal type; the pane needs one.
            .env("TERM", "xterm-256color")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs (CI installs it)")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "ntv"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            assert!(self.run(&["send-keys", "-t", "ntv", k]).status.success());
        }
    }

    /// Wait (bounded) until the screen satisfies `ok`; the screen then.
    #[track_caller]
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        for _ in 0..600 {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the screen never showed {what}:\n{}", self.screen());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The p_final shown for candidate row 1 of the distribution pane.
fn first_p_final(screen: &str) -> String {
    let row = screen
        .lines()
        .find(|l| l.contains("│  1 ") || l.contains("│▶ 1 "))
        .unwrap_or_else(|| panic!("no candidate row 1:\n{screen}"));
    row.split_whitespace()
        .filter(|w| w.ends_with('%'))
        .nth(1)
        .unwrap_or_else(|| panic!("no p_final in {row:?}"))
        .to_string()
}

#[test]
fn the_binary_in_a_real_terminal() {
    let sb = crate::util::Sandbox::new();
    let exe = assert_cmd::cargo::cargo_bin("ntv");
    let tmux = Tmux {
        socket: sb.path().join("tmux.sock"),
    };
    let cmd = format!(
        "cd {} && env NTV_THREADS=1 {} tui -m {} -p {:?} --seed 7; sleep 30",
        sb.path().display(),
        exe.display(),
        crate::util::m(),
        PROMPT
    );
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "ntv",
        "-x",
        "100",
        "-y",
        "30",
        &cmd,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = tmux.wait("the first frame", |s| s.contains("next token · kept"));
    let before = first_p_final(&s);
    tmux.keys(&["T", "T", "T"]);
    let s = tmux.wait("T 1.00", |s| s.contains("T 1.00"));
    assert_ne!(first_p_final(&s), before, "p_final moves on screen:\n{s}");
    tmux.keys(&["g", "g", "g"]);
    tmux.wait("three tokens", |s| s.contains("25 + 3 tokens"));
    tmux.keys(&["Down", "Enter"]);
    tmux.wait("a forced fourth token", |s| s.contains("25 + 4 tokens"));
    tmux.keys(&["u"]);
    tmux.wait("the undo", |s| s.contains("25 + 3 tokens"));
    // Rewind: on token 1, another candidate makes a new branch.
    tmux.keys(&["Left", "Left", "Down", "Enter"]);
    let s = tmux.wait("a new branch", |s| s.contains("rewound onto new branch"));
    let branch = s
        .split("rewound onto new branch ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(s.contains("25 + 2 tokens"), "{s}");
    tmux.keys(&["q"]);
    tmux.wait("the end of ntv tui", |s| !s.contains("next token"));
    // The CLI sees what the screen showed: both branches, the new one active with 2 tokens.
    let list = sb.json(&["branch", "list", "--json"]);
    let names: Vec<&str> = list["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["main", branch.as_str()]);
    assert_eq!(list["active"], branch.as_str());
    let session = sb.session_json();
    assert_eq!(
        session["branches"][0]["completion_ids"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        session["branches"][1]["completion_ids"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!((session["params"]["temperature"].as_f64().unwrap() - 1.0).abs() < 1e-9);
}

#[test]
fn without_a_terminal_it_points_to_the_one_shot_commands() {
    let sb = crate::util::Sandbox::new();
    let e = sb.fails(&["tui", "-m", crate::util::m(), "-p", PROMPT], 2);
    assert!(
        e.contains("needs a terminal") && e.contains("ntv step"),
        "{e}"
    );
    assert!(sb.session_bytes().is_none(), "nothing written");
}
