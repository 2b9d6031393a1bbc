//! `ntv tui`: the demo's interactive view in the terminal — one [`Workbench`] held in memory,
//! so a knob change recomputes the distribution from the logits already decoded and a step
//! decodes one token. [`App`] is the state and the key handling, [`view`] draws it; both are
//! tested headlessly (ratatui's `TestBackend`). The terminal is restored on quit, on error and
//! on panic (ratatui's init installs the hook).

pub mod view;
mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::engine::Model;
use crate::error::Result;
use crate::record::{Dist, TokenPill};
use crate::sampling::{Preset, SamplingParams};
use crate::workbench::Workbench;

/// Every key the explorer knows, for the help overlay and the man page.
pub const KEYS: &[(&str, &str)] = &[
    ("s / space", "step: sample the next token"),
    ("g", "step: greedy"),
    ("p", "play / pause (a step every tick until a stop)"),
    ("+ / -", "play faster / slower"),
    ("↑ ↓ / k j", "highlight a candidate"),
    (
        "enter / f",
        "force the highlighted candidate (earlier: new branch)",
    ),
    (
        "← → / h l",
        "move over the completion (past the end: the next token)",
    ),
    ("u / backspace", "undo the last token"),
    ("t T", "temperature down / up"),
    ("o O", "top-p down / up"),
    ("[ ]", "top-k down / up (0 = off)"),
    ("m M", "min-p down / up"),
    ("r R", "repetition penalty down / up"),
    ("c", "cycle the presets"),
    ("F", "type text to force (enter appends it, esc cancels)"),
    ("e", "edit the prompt (enter re-prefills)"),
    ("C", "switch the constraint off / back on"),
    ("a", "why this token (under the cursor, or the candidate)"),
    ("A", "next attribution method (esc cancels a running one)"),
    ("b B", "next / previous branch"),
    ("?", "this help"),
    ("q / esc", "quit (the session is saved)"),
];

/// The explorer's state over one core.
pub struct App<'m> {
    pub(crate) wb: Workbench<'m>,
    /// The distribution shown: the next token's, or the one recorded for the token under the
    /// cursor.
    pub(crate) dist: Dist,
    /// Nothing decoded yet (the first frame).
    pub(crate) pending: bool,
    /// Completion index under the cursor; `None`: the next token.
    pub(crate) cursor: Option<usize>,
    /// Highlighted candidate row.
    pub(crate) row: usize,
    pub(crate) playing: bool,
    /// Milliseconds between two steps while playing.
    pub(crate) tick_ms: u64,
    pub(crate) help: bool,
    pub(crate) status: String,
    pub(crate) quit: bool,
    /// The attribution overlay, when shown.
    pub(crate) attribution: Option<crate::record::AttributionRecord>,
    pub(crate) method: crate::attribution::Method,
    /// The attribution thread (started on first use) and the job it runs.
    worker: Option<worker::Worker>,
    /// When the running attribution started, and what it explains.
    pub(crate) attributing: Option<(Instant, String)>,
    /// The model, shared with the attribution thread.
    model: Arc<Model>,
    /// Steps per second (a step: one decode and the distribution after it), smoothed.
    pub(crate) rate: Option<f64>,
    /// A line being typed (free text to force, or a new prompt).
    pub(crate) input: Option<(InputKind, String)>,
    /// The constraint switched off with `C`, to switch it back on.
    parked: Option<crate::constraint::ConstraintSpec>,
}

/// What a typed line is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Text appended as forced tokens.
    ForceText,
    /// A new user prompt (re-prefills; the old completion is kept aside on save).
    Prompt,
}

impl<'m> App<'m> {
    /// The explorer over an opened core, its distribution computed at once.
    pub fn new(wb: Workbench<'m>, model: Arc<Model>) -> Result<Self> {
        let mut app = Self::open(wb, model);
        app.ready()?;
        Ok(app)
    }

    /// The explorer before anything is decoded: the first frame shows the context at once and
    /// says it is decoding; [`App::ready`] then computes the distribution. `model` is the one
    /// `wb` was opened on, shared with the attribution thread.
    pub fn open(wb: Workbench<'m>, model: Arc<Model>) -> Self {
        debug_assert!(std::ptr::eq(wb.model(), &*model), "the core's own model");
        let dist = Dist {
            top_k: wb.settings().display_k,
            tokens: Vec::new(),
            other_p_base: 0.0,
            other_p_final: 0.0,
            kept_token_count: 0,
            valid_token_count: None,
            constraint_active: false,
            constraint_type: None,
            entropy_base: 0.0,
            entropy_final: 0.0,
            params: wb.settings().params.clone(),
            chain: None,
        };
        Self {
            wb,
            dist,
            pending: true,
            cursor: None,
            row: 0,
            playing: false,
            tick_ms: 150,
            help: false,
            status: "ready".into(),
            quit: false,
            attribution: None,
            method: crate::attribution::Method::Attention,
            worker: None,
            attributing: None,
            model,
            rate: None,
            input: None,
            parked: None,
        }
    }

    /// Decode the context (when [`App::open`] left it) and show the distribution.
    pub fn ready(&mut self) -> Result<()> {
        if self.pending {
            self.refresh()?;
        }
        Ok(())
    }

    /// The core.
    pub fn workbench(&self) -> &Workbench<'m> {
        &self.wb
    }

    /// Whether `q` was pressed.
    pub fn quitting(&self) -> bool {
        self.quit
    }

    /// The attribution overlay on screen, if any.
    pub fn attribution_shown(&self) -> Option<&crate::record::AttributionRecord> {
        self.attribution.as_ref()
    }

    /// The distribution on screen.
    pub fn dist(&self) -> &Dist {
        &self.dist
    }

    /// Completion tokens as pills, from their records.
    pub(crate) fn completion_pills(&self) -> Vec<TokenPill> {
        crate::workbench::recorded_pills(self.wb.session().active())
    }

    fn refresh(&mut self) -> Result<()> {
        self.dist = match self.cursor {
            Some(i) => match self.wb.recorded(i) {
                Some(m) => m.dist.clone(),
                None => {
                    self.cursor = None;
                    self.wb.preview()?
                }
            },
            None => self.wb.preview()?,
        };
        self.row = self.row.min(self.dist.tokens.len().saturating_sub(1));
        self.pending = false;
        Ok(())
    }

    fn step(&mut self, greedy: bool) -> Result<()> {
        self.cursor = None;
        let plan = if greedy {
            crate::workbench::Plan::Choose {
                choice: crate::driver::Choice::Greedy,
                n: Some(1),
            }
        } else {
            self.wb.choose(Some(1))
        };
        let mut appended = String::new();
        let t = Instant::now();
        let run = self.wb.step(&plan, None, false, &mut |r| {
            appended = format!(
                "appended {} · p_final {}",
                r.selected.display,
                crate::render::text::pct(r.selected.p_final)
            );
            Ok(())
        })?;
        if !appended.is_empty() {
            // Smoothed over the last steps (play mode), the first step taken as it is.
            let rate = 1.0 / t.elapsed().as_secs_f64().max(1e-6);
            self.rate = Some(self.rate.map_or(rate, |r| 0.7 * r + 0.3 * rate));
        }
        self.status = match run.outcome.stop_reason {
            Some(r) => {
                self.playing = false;
                format!("{appended} · stopped: {r}")
            }
            None if appended.is_empty() => "nothing appended".into(),
            None => appended,
        };
        self.refresh()
    }

    fn force_highlighted(&mut self) -> Result<()> {
        let Some(c) = self.dist.tokens.get(self.row) else {
            return Ok(());
        };
        let id = c.id;
        if let Some(i) = self.cursor {
            if self.wb.completion().get(i) == Some(&id) {
                self.status = "that token is already there".into();
                return Ok(());
            }
            let name = self.wb.rewind(i)?;
            self.status = format!("rewound onto new branch {name}");
        }
        self.cursor = None;
        let plan = self.wb.force_token(i64::from(id))?;
        self.wb.step(&plan, None, false, &mut |_| Ok(()))?;
        self.refresh()
    }

    /// Attribute the token under the cursor, or the highlighted candidate at the end, on the
    /// attribution thread; [`App::poll`] shows the result when it arrives.
    fn attribute(&mut self) -> Result<()> {
        use crate::attribution::request::TargetSel;
        let (sel, what) = match self.cursor {
            Some(i) => (TargetSel::Index(i as i64), format!("completion token {i}")),
            None => match self.dist.tokens.get(self.row) {
                Some(c) => (
                    TargetSel::Token(i64::from(c.id)),
                    format!("{:?}", c.display),
                ),
                None => return Ok(()),
            },
        };
        let opts = crate::attribution::Options {
            method: self.method,
            watch: crate::attribution::Watch::new(),
            ..Default::default()
        };
        let job = self.wb.attribution_job(sel, opts);
        if !self.worker.as_ref().is_some_and(|w| w.alive()) {
            self.worker = Some(worker::Worker::spawn(
                Arc::clone(&self.model),
                self.wb.settings().context.clone(),
            )?);
        }
        self.worker.as_mut().expect("started above").start(job)?;
        self.playing = false;
        self.attributing = Some((Instant::now(), what));
        self.status = format!("{}: why {}…", self.method.name(), self.attributing_what());
        Ok(())
    }

    fn attributing_what(&self) -> &str {
        self.attributing.as_ref().map_or("", |(_, w)| w.as_str())
    }

    /// The running attribution's (done, total) units, when one runs.
    pub fn attribution_progress(&self) -> Option<(u64, u64)> {
        self.worker.as_ref()?.running().map(|w| w.progress())
    }

    /// Take the attribution thread's result when it has arrived; true when the screen changed.
    pub fn poll(&mut self) -> bool {
        let Some(reply) = self.worker.as_mut().and_then(|w| w.try_reply()) else {
            return false;
        };
        self.finish(reply);
        true
    }

    /// Wait for the running attribution (if any) and show its result.
    pub fn wait_attribution(&mut self) {
        if let Some(reply) = self.worker.as_mut().and_then(|w| w.wait()) {
            self.finish(reply);
        }
    }

    /// Ask the running attribution to stop; its reply (cancelled) arrives through `poll`.
    fn cancel_attribution(&mut self) {
        if let Some(w) = self.worker.as_ref().and_then(|w| w.running()) {
            w.cancel();
            self.status = "cancelling the attribution…".into();
        }
    }

    fn finish(&mut self, reply: worker::Reply) {
        let started = self.attributing.take();
        let secs = started.map_or(0.0, |(t, _)| t.elapsed().as_secs_f64());
        match reply {
            Ok(mut records) => {
                self.attribution = records.pop();
                self.status = format!("{} in {secs:.1} s", self.method.name());
            }
            Err(e)
                if matches!(
                    e.find::<crate::attribution::AttributionError>(),
                    Some(crate::attribution::AttributionError::Cancelled)
                ) =>
            {
                self.status = format!("{} cancelled after {secs:.1} s", self.method.name());
            }
            // An attribution that fails (a refused target, an architecture the gradient
            // methods do not support, memory) is reported and the explorer goes on.
            Err(e) => self.status = e.message(),
        }
    }

    fn submit(&mut self, kind: InputKind, text: &str) -> Result<()> {
        match kind {
            InputKind::ForceText => {
                self.cursor = None;
                let plan = self.wb.force_text(text)?;
                self.wb.step(&plan, None, false, &mut |_| Ok(()))?;
                self.status = format!("forced {text:?}");
            }
            InputKind::Prompt => {
                let mut p = self.wb.settings().prompt.clone().unwrap_or_else(|| {
                    crate::settings::PromptSpec::text("", crate::chat::DEFAULT_SYSTEM)
                });
                p.prompt = text.to_string();
                p.messages = None;
                self.wb.set_prompt(p)?;
                self.cursor = None;
                self.status = "new prompt".into();
            }
        }
        self.refresh()
    }

    fn toggle_constraint(&mut self) -> Result<()> {
        let now = self.wb.settings().constraint.clone();
        match (now, self.parked.take()) {
            (Some(c), _) => {
                self.wb.set_constraint(None)?;
                self.status = format!("constraint {} off (C: back on)", c.kind);
                self.parked = Some(c);
            }
            (None, Some(c)) => {
                if let Err(e) = self.wb.set_constraint(Some(c.clone())) {
                    self.parked = Some(c);
                    return Err(e);
                }
                self.status = format!("constraint {} on", c.kind);
            }
            (None, None) => {
                self.status =
                    "no constraint (give one with --regex, --choice, … when starting)".into();
            }
        }
        self.refresh()
    }

    fn next_method(&mut self) -> Result<()> {
        use crate::attribution::Method;
        const ORDER: [Method; 5] = [
            Method::Attention,
            Method::Occlusion,
            Method::Saliency,
            Method::InputXGradient,
            Method::IntegratedGradients,
        ];
        let at = ORDER.iter().position(|m| *m == self.method).unwrap_or(0);
        self.method = ORDER[(at + 1) % ORDER.len()];
        self.status = format!("attribution method {}", self.method.name());
        if self.attribution.is_some() {
            self.attribute()?;
        }
        Ok(())
    }

    fn nudge(&mut self, f: impl FnOnce(&mut SamplingParams)) -> Result<()> {
        let mut p = self.wb.settings().params.clone();
        f(&mut p);
        match self.wb.set_params(p, self.wb.settings().display_k) {
            Ok(()) => self.refresh(),
            Err(e) => {
                self.status = e.message();
                Ok(())
            }
        }
    }

    fn cycle_preset(&mut self) -> Result<()> {
        const ORDER: [Preset; 4] = [
            Preset::Balanced,
            Preset::Greedy,
            Preset::Reliable,
            Preset::Creative,
        ];
        let now = self.wb.settings().params.clone();
        let at = ORDER.iter().position(|p| p.params() == now);
        let next = ORDER[at.map_or(0, |i| (i + 1) % ORDER.len())];
        self.status = format!("preset {next:?}").to_lowercase();
        self.nudge(|p| *p = next.params())
    }

    fn switch_branch(&mut self, by: isize) -> Result<()> {
        let s = self.wb.session();
        let n = s.branches.len() as isize;
        let at = s
            .branches
            .iter()
            .position(|b| b.name == s.active_branch)
            .unwrap_or(0) as isize;
        let name = s.branches[((at + by).rem_euclid(n)) as usize].name.clone();
        self.wb.switch_branch(&name)?;
        self.cursor = None;
        self.status = format!("branch {name}");
        self.refresh()
    }

    /// Apply one key. Errors of an action (a refused value, a full context) go to the status
    /// line; only a failure of the core itself is returned.
    pub fn key(&mut self, key: KeyEvent) -> Result<()> {
        if key.kind != KeyEventKind::Press {
            return Ok(());
        }
        if self.help {
            self.help = false;
            return Ok(());
        }
        if self.attribution_progress().is_some() {
            // While the attribution thread works: esc cancels it, q cancels and quits; the
            // other keys wait (the core is not changed under a running job).
            match key.code {
                KeyCode::Esc => self.cancel_attribution(),
                KeyCode::Char('q') => {
                    self.cancel_attribution();
                    self.quit = true;
                }
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    self.cancel_attribution();
                    self.quit = true;
                }
                KeyCode::Char('?') => self.help = true,
                _ => {
                    self.status = format!(
                        "{}: why {}… (esc cancels)",
                        self.method.name(),
                        self.attributing_what()
                    )
                }
            }
            return Ok(());
        }
        if let Some((kind, text)) = &mut self.input {
            match key.code {
                KeyCode::Esc => self.input = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) => text.push(c),
                KeyCode::Enter => {
                    let (kind, text) = (*kind, std::mem::take(text));
                    self.input = None;
                    if let Err(e) = self.submit(kind, &text) {
                        if !e.is_input() {
                            return Err(e);
                        }
                        self.status = e.message();
                    }
                }
                _ => {}
            }
            return Ok(());
        }
        if self.attribution.is_some() && !matches!(key.code, KeyCode::Char('A')) {
            // Any key but the method switch closes the overlay.
            self.attribution = None;
            return Ok(());
        }
        let n = self.wb.completion().len();
        let result = match key.code {
            KeyCode::Char('q') | KeyCode::Esc => {
                self.quit = true;
                Ok(())
            }
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                self.quit = true;
                Ok(())
            }
            KeyCode::Char('?') => {
                self.help = true;
                Ok(())
            }
            KeyCode::Char('s') | KeyCode::Char(' ') => self.step(false),
            KeyCode::Char('g') => self.step(true),
            KeyCode::Char('p') => {
                self.playing = !self.playing;
                self.status = if self.playing { "playing" } else { "paused" }.into();
                Ok(())
            }
            KeyCode::Char('+') => {
                self.tick_ms = (self.tick_ms / 2).max(10);
                Ok(())
            }
            KeyCode::Char('-') => {
                self.tick_ms = (self.tick_ms * 2).min(2000);
                Ok(())
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.row = self.row.saturating_sub(1);
                Ok(())
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.row = (self.row + 1).min(self.dist.tokens.len().saturating_sub(1));
                Ok(())
            }
            KeyCode::Left | KeyCode::Char('h') => {
                self.cursor = match self.cursor {
                    None if n > 0 => Some(n - 1),
                    Some(i) => Some(i.saturating_sub(1)),
                    None => None,
                };
                self.refresh()
            }
            KeyCode::Right | KeyCode::Char('l') => {
                self.cursor = self.cursor.and_then(|i| (i + 1 < n).then_some(i + 1));
                self.refresh()
            }
            KeyCode::Enter | KeyCode::Char('f') => self.force_highlighted(),
            KeyCode::Backspace | KeyCode::Char('u') => {
                self.cursor = None;
                match self.wb.undo(1) {
                    Ok(_) => self.refresh(),
                    Err(e) => {
                        self.status = e.message();
                        Ok(())
                    }
                }
            }
            KeyCode::Char('t') => self.nudge(|p| p.temperature = (p.temperature - 0.1).max(0.0)),
            KeyCode::Char('T') => self.nudge(|p| p.temperature += 0.1),
            KeyCode::Char('o') => self.nudge(|p| p.top_p = (p.top_p - 0.05).max(0.05)),
            KeyCode::Char('O') => self.nudge(|p| p.top_p = (p.top_p + 0.05).min(1.0)),
            KeyCode::Char('[') => self.nudge(|p| p.top_k = p.top_k.saturating_sub(1)),
            KeyCode::Char(']') => self.nudge(|p| p.top_k += 1),
            KeyCode::Char('m') => self.nudge(|p| p.min_p = (p.min_p - 0.01).max(0.0)),
            KeyCode::Char('M') => self.nudge(|p| p.min_p = (p.min_p + 0.01).min(1.0)),
            KeyCode::Char('r') => {
                self.nudge(|p| p.repetition_penalty = (p.repetition_penalty - 0.05).max(1.0))
            }
            KeyCode::Char('R') => self.nudge(|p| p.repetition_penalty += 0.05),
            KeyCode::Char('c') => self.cycle_preset(),
            KeyCode::Char('a') => self.attribute(),
            KeyCode::Char('F') => {
                self.input = Some((InputKind::ForceText, String::new()));
                Ok(())
            }
            KeyCode::Char('e') => {
                let now = self.wb.settings().prompt.as_ref().map(|p| p.prompt.clone());
                self.input = Some((InputKind::Prompt, now.unwrap_or_default()));
                Ok(())
            }
            KeyCode::Char('C') => self.toggle_constraint(),
            KeyCode::Char('A') => self.next_method(),
            KeyCode::Char('b') => self.switch_branch(1),
            KeyCode::Char('B') => self.switch_branch(-1),
            _ => Ok(()),
        };
        if let Err(e) = result {
            if !e.is_input() {
                return Err(e);
            }
            self.playing = false;
            self.status = e.message();
        }
        Ok(())
    }

    /// One tick of play mode: a sampled step.
    pub fn tick(&mut self) -> Result<()> {
        if self.playing
            && let Err(e) = self.step(false)
        {
            self.playing = false;
            if !e.is_input() {
                return Err(e);
            }
            self.status = e.message();
        }
        Ok(())
    }

    /// Save the session (and the prefix cache); returns the notes for stderr.
    pub fn save(&mut self) -> Result<Vec<String>> {
        self.wb.save()?;
        Ok(self.wb.take_notices())
    }

    /// The attribution method `a` uses.
    pub fn method(&self) -> crate::attribution::Method {
        self.method
    }

    /// The status line's message.
    pub fn status(&self) -> &str {
        &self.status
    }

    /// The parameters in use.
    pub(crate) fn params(&self) -> &SamplingParams {
        &self.wb.settings().params
    }
}

/// Run the explorer on the real terminal until `q`; saves the session when it ends.
pub fn run(app: &mut App<'_>) -> Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, app);
    ratatui::restore();
    result
}

fn event_loop(terminal: &mut ratatui::DefaultTerminal, app: &mut App<'_>) -> Result<()> {
    // The first frame before the prefill: the context shows at once.
    terminal.draw(|f| view::draw(f, app))?;
    app.ready()?;
    while !app.quitting() {
        terminal.draw(|f| view::draw(f, app))?;
        // Idle: block on the next key (no busy loop); playing: wake up every tick; an
        // attribution running: wake up to redraw its progress and take its result.
        let wait = if app.attribution_progress().is_some() {
            Some(Duration::from_millis(100))
        } else if app.playing {
            Some(Duration::from_millis(app.tick_ms))
        } else {
            None
        };
        let ready = match wait {
            Some(d) => event::poll(d)?,
            None => true,
        };
        if ready {
            if let Event::Key(k) = event::read()? {
                app.key(k)?;
            }
        } else {
            app.tick()?;
        }
        app.poll();
    }
    Ok(())
}
