//! Drawing the explorer: parameter strip, context, distribution, status line; the help
//! overlay. Everything colour shows is also written out (status column, `▶`, brackets), so a
//! monochrome terminal and the headless snapshots read the same.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row, Table, Wrap};

pub use crate::render::palette::heat_colours;

use super::{App, KEYS};
use crate::render::text::display;
use crate::render::text::{bar, pct};

fn prob_colour(p: f64) -> Color {
    match p {
        p if p >= 0.5 => Color::Green,
        p if p >= 0.2 => Color::Yellow,
        p if p >= 0.05 => Color::LightRed,
        _ => Color::Red,
    }
}

fn params_line(app: &App<'_>) -> Line<'static> {
    let p = app.params();
    let s = app.wb.session();
    let off = |v: f64, none: f64| {
        if v == none {
            "off".to_string()
        } else {
            format!("{v:.2}")
        }
    };
    let mut spans = vec![
        Span::styled("T ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("{:.2}", p.temperature)),
        Span::raw(format!("  top-p {}", off(p.top_p, 1.0))),
        Span::raw(format!(
            "  top-k {}",
            if p.top_k == 0 {
                "off".into()
            } else {
                p.top_k.to_string()
            }
        )),
        Span::raw(format!("  min-p {}", off(p.min_p, 0.0))),
        Span::raw(format!("  repeat {}", off(p.repetition_penalty, 1.0))),
        Span::raw(format!(
            "  seed {}",
            s.active().seed.map_or("-".to_string(), |v| v.to_string())
        )),
    ];
    if let Some(c) = &s.constraint {
        spans.push(Span::styled(
            format!("  constraint {}", c.kind),
            Style::new().fg(Color::Magenta),
        ));
    }
    Line::from(spans)
}

/// The heatmap style of context token `index` under the attribution shown: its background
/// shaded by |score| as `ntv attribute` shades it (warm positive, cold negative); tokens after
/// the target's context dimmed; `max` is the largest |score|. `None` without an attribution.
fn heat(app: &App<'_>, max: f64, index: usize) -> Option<Style> {
    let r = app.attribution.as_ref()?;
    let Some(s) = r.scores.get(index) else {
        return Some(Style::new().add_modifier(Modifier::DIM));
    };
    let level = if max > 0.0 { s.score.abs() / max } else { 0.0 };
    let (bg, fg) = heat_colours(level, s.score < 0.0);
    Some(Style::new().bg(Color::Indexed(bg)).fg(Color::Indexed(fg)))
}

fn context(app: &App<'_>) -> Paragraph<'static> {
    let model = app.wb.model();
    let mut spans = Vec::new();
    let n_prompt = app.wb.prompt_ids().len();
    // The largest |score| once per frame, not once per token.
    let max = app
        .attribution
        .as_ref()
        .map_or(0.0, |r| crate::render::heatmap::max_abs(&r.scores));
    for (i, &id) in app.wb.prompt_ids().iter().enumerate() {
        let text = display(&model.piece(id));
        let style = heat(app, max, i).unwrap_or_else(|| {
            if model.is_special(id) {
                Style::new().fg(Color::Magenta)
            } else {
                Style::new().fg(Color::DarkGray)
            }
        });
        spans.push(Span::styled(text, style));
    }
    let pills = app.completion_pills();
    let branch = app.wb.session().active();
    for (i, p) in pills.iter().enumerate() {
        let p_final = branch
            .appended_meta
            .get(i)
            .map_or(1.0, |m| m.selected.p_final);
        let mut style =
            heat(app, max, n_prompt + i).unwrap_or_else(|| Style::new().fg(prob_colour(p_final)));
        let target = app.attribution.as_ref().and_then(|r| r.target.index) == Some(i);
        if target {
            style = style.add_modifier(Modifier::BOLD | Modifier::UNDERLINED);
        }
        let text = if app.cursor == Some(i) {
            style = style.add_modifier(Modifier::REVERSED);
            format!("[{}]", p.display)
        } else {
            p.display.clone()
        };
        spans.push(Span::styled(text, style));
    }
    if app.cursor.is_none() {
        spans.push(Span::styled(
            "[▁]",
            Style::new().add_modifier(Modifier::REVERSED),
        ));
    }
    Paragraph::new(Line::from(spans))
        .wrap(Wrap { trim: false })
        .block(Block::new().borders(Borders::ALL).title(format!(
            " context · branch {} · {} + {} tokens ",
            app.wb.session().active_branch,
            app.wb.prompt_ids().len(),
            pills.len()
        )))
}

fn distribution(app: &App<'_>, height: u16) -> Table<'static> {
    let d = &app.dist;
    let chosen = app
        .cursor
        .and_then(|i| app.wb.recorded(i))
        .map(|m| m.selected_id);
    let rows = d
        .tokens
        .iter()
        .enumerate()
        .take(height.saturating_sub(3) as usize)
        .map(|(i, c)| {
            let status = match (c.kept, c.cut_by) {
                (true, _) => "kept".to_string(),
                (false, Some(stage)) => format!(
                    "cut: {}",
                    serde_json::to_value(stage)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                ),
                (false, None) => "cut".into(),
            };
            let mark = if chosen == Some(c.id) { "▶" } else { " " };
            let style = if i == app.row {
                Style::new().add_modifier(Modifier::REVERSED)
            } else if !c.kept {
                Style::new().fg(Color::DarkGray)
            } else {
                Style::new()
            };
            Row::new(vec![
                mark.to_string(),
                c.rank.to_string(),
                display(&c.text),
                c.id.to_string(),
                format!("{} {:>6}", bar(c.p_base, 8), pct(c.p_base)),
                format!("{} {:>6}", bar(c.p_final, 8), pct(c.p_final)),
                status,
            ])
            .style(style)
        })
        .collect::<Vec<_>>();
    let title = match app.cursor {
        _ if app.pending => " decoding the context… ".to_string(),
        Some(i) => format!(" token {i} as recorded · kept {} ", d.kept_token_count),
        None => format!(
            " next token · kept {} · entropy {:.2} → {:.2} bits ",
            d.kept_token_count, d.entropy_base, d.entropy_final
        ),
    };
    Table::new(
        rows,
        [
            Constraint::Length(1),
            Constraint::Length(6),
            Constraint::Min(10),
            Constraint::Length(6),
            Constraint::Length(16),
            Constraint::Length(16),
            Constraint::Length(16),
        ],
    )
    .header(
        Row::new(vec!["", "#", "token", "id", "p_base", "p_final", "status"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(Block::new().borders(Borders::ALL).title(title))
}

/// Draw the whole screen.
pub fn draw(f: &mut Frame<'_>, app: &App<'_>) {
    let area = f.area();
    let [strip, ctx, dist, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Percentage(30),
        Constraint::Min(6),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(params_line(app)), strip);
    f.render_widget(context(app), ctx);
    f.render_widget(distribution(app, dist.height), dist);
    let play = if app.playing {
        format!("▶ playing ({} ms) · ", app.tick_ms)
    } else {
        String::new()
    };
    let progress = app.attribution_progress().map(|(done, total)| {
        let secs = app
            .attributing
            .as_ref()
            .map_or(0.0, |(t, _)| t.elapsed().as_secs_f64());
        let what = app.attributing.as_ref().map_or("", |(_, w)| w.as_str());
        if total == 0 {
            format!(
                "{}: why {what} · preparing the engine… {secs:.1} s · esc cancels",
                app.method.name()
            )
        } else {
            format!(
                "{}: why {what} · {done}/{total} ▕{}▏ {secs:.1} s · esc cancels",
                app.method.name(),
                bar(done as f64 / total as f64, 16)
            )
        }
    });
    match (&app.input, progress) {
        (_, Some(line)) => f.render_widget(
            Paragraph::new(line).style(Style::new().add_modifier(Modifier::BOLD)),
            status,
        ),
        (Some((kind, text)), None) => f.render_widget(
            Paragraph::new(format!(
                "{}: {text}▏  (enter: ok · esc: cancel)",
                match kind {
                    super::InputKind::ForceText => "force text",
                    super::InputKind::Prompt => "prompt",
                }
            ))
            .style(Style::new().add_modifier(Modifier::BOLD)),
            status,
        ),
        (None, None) => {
            let facts = facts(app);
            let [left, right] = Layout::horizontal([
                Constraint::Min(0),
                Constraint::Length(facts.chars().count() as u16),
            ])
            .areas(status);
            f.render_widget(
                Paragraph::new(format!("{play}{} · ? keys · q quit", app.status))
                    .style(Style::new().add_modifier(Modifier::DIM)),
                left,
            );
            f.render_widget(
                Paragraph::new(facts).style(Style::new().add_modifier(Modifier::DIM)),
                right,
            );
        }
    }
    if app.help {
        help(f, area);
    }
    if let Some(r) = &app.attribution {
        // Over the distribution, so the context's heatmap stays in view above.
        attribution(f, dist, r);
    }
}

/// The status line's right side: speed, the branch's stop reason, the session file.
fn facts(app: &App<'_>) -> String {
    let mut parts = Vec::new();
    if let Some(r) = app.rate {
        parts.push(format!("{r:>6.1} tok/s")); // fixed width: the line does not shift
    }
    if let Some(r) = &app.wb.session().active().stop_reason {
        parts.push(format!("stop: {r}"));
    }
    parts.push(match app.wb.session_path() {
        Some(p) => p
            .file_name()
            .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into()),
        None => "no session file".into(),
    });
    format!(" {}", parts.join(" · "))
}

/// The attribution overlay: the target, then the context's strongest contributors with bars.
fn attribution(f: &mut Frame<'_>, area: Rect, r: &crate::record::AttributionRecord) {
    let rect = area;
    let h = area.height;
    let mut top: Vec<&crate::record::ScoredToken> = r.scores.iter().collect();
    top.sort_by(|a, b| {
        b.score
            .abs()
            .total_cmp(&a.score.abs())
            .then(a.index.cmp(&b.index))
    });
    let max = top
        .first()
        .map_or(1.0, |t| t.score.abs().max(f64::MIN_POSITIVE));
    let rows = top.iter().take(h.saturating_sub(4) as usize).map(|t| {
        Row::new(vec![
            t.index.to_string(),
            t.display.clone(),
            if t.completion { "completion" } else { "prompt" }.to_string(),
            format!("{:.4}", t.score),
            bar(t.score.abs() / max, 12),
        ])
    });
    let title = format!(
        " why {:?} ({}, p {}) · {} · A: next method · any key closes ",
        r.target.display,
        match r.target.index {
            Some(i) => format!("completion token {i}"),
            None => "candidate".to_string(),
        },
        pct(r.target.prob),
        r.method.name()
    );
    f.render_widget(Clear, rect);
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(6),
                Constraint::Min(12),
                Constraint::Length(11),
                Constraint::Length(9),
                Constraint::Length(13),
            ],
        )
        .header(
            Row::new(vec!["index", "token", "where", "score", ""])
                .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(Block::new().borders(Borders::ALL).title(title)),
        rect,
    );
}

fn help(f: &mut Frame<'_>, area: Rect) {
    let w = area.width.saturating_sub(4).min(90);
    let h = (KEYS.len() as u16 + 2).min(area.height);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(
                    format!("{k:>14}  "),
                    Style::new().add_modifier(Modifier::BOLD),
                ),
                Span::raw(*what),
            ])
        })
        .collect();
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::new()
                .borders(Borders::ALL)
                .title(" keys (any key closes) "),
        ),
        r,
    );
}
