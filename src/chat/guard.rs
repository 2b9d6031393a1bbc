//! Bounding what an untrusted chat template can do (issue 14): the template is compiled with
//! minijinja's own parser and code generator, then its instructions are rewritten so that
//! every operator that can grow a value (`+`, `*`, `~`) and every piece of text it writes —
//! to the output or into a captured block or macro result — goes through [`Budget`], which
//! counts bytes against [`Limits::max_bytes`]. minijinja's fuel bounds the instructions run
//! ([`Limits::fuel`]) and its recursion limit the nesting ([`Limits::recursion`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use minijinja::machinery::{CodeGenerator, Instruction, Instructions, WhitespaceConfig, parse};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::ValueKind;
use minijinja::{Environment, Error, ErrorKind, Value};

/// The documented bounds on one rendering of a chat template (README, "Limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// minijinja instructions one rendering may run.
    pub fuel: u64,
    /// Bytes a rendering may produce in all: text written (output, captured blocks and macro
    /// results) plus strings built by `+`, `~`, `*` and returned by filters, methods and
    /// functions.
    pub max_bytes: usize,
    /// Most items a list built by `+` or `*` may have.
    pub max_items: usize,
    /// Nesting depth (macro calls, loops, blocks).
    pub recursion: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 5_000_000,
            max_bytes: 64 << 20,
            max_items: 1_000_000,
            recursion: 100,
        }
    }
}

/// Bytes produced so far by one rendering, and which limit stopped it (if one did).
pub struct Budget {
    used: AtomicUsize,
    pub limits: Limits,
    pub exceeded: Mutex<Option<String>>,
}

impl Budget {
    pub fn new(limits: Limits) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limits,
            exceeded: Mutex::new(None),
        }
    }

    fn fail(&self, what: String) -> Error {
        let mut e = self.exceeded.lock().unwrap_or_else(|e| e.into_inner());
        if e.is_none() {
            *e = Some(what.clone());
        }
        Error::new(ErrorKind::InvalidOperation, what)
    }

    fn over(&self) -> Error {
        self.fail(format!(
            "the template produced more than {} bytes",
            self.limits.max_bytes
        ))
    }

    /// Count `n` more bytes.
    pub fn charge(&self, n: usize) -> Result<(), Error> {
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > self.limits.max_bytes {
            return Err(self.over());
        }
        Ok(())
    }

    /// Fail when a value being built (`len` bytes so far) would pass what is left.
    pub fn check_len(&self, len: usize) -> Result<(), Error> {
        if self.used.load(Ordering::Relaxed).saturating_add(len) > self.limits.max_bytes {
            return Err(self.over());
        }
        Ok(())
    }

    fn check_items(&self, n: Option<usize>) -> Result<(), Error> {
        match n {
            Some(n) if n <= self.limits.max_items => Ok(()),
            _ => Err(self.fail(format!(
                "the template built a list of more than {} items",
                self.limits.max_items
            ))),
        }
    }
}

/// The start of the error of a constant over the limits.
pub const CONST_LIMIT: &str = "template constant over ntv's limits";
const COUNT: &str = "__ntv_count";
const ADD: &str = "__ntv_add";
const MUL: &str = "__ntv_mul";
const CAT: &str = "__ntv_concat";

/// Compile `source` with Hugging Face's whitespace settings (`trim_blocks`, `lstrip_blocks`,
/// a single trailing newline dropped) and guard its instructions.
pub fn compile<'s>(
    name: &'s str,
    source: &'s str,
) -> Result<(Instructions<'s>, BTreeMap<&'s str, Instructions<'s>>), Error> {
    let ws = WhitespaceConfig {
        keep_trailing_newline: false,
        lstrip_blocks: true,
        trim_blocks: true,
    };
    let ast = parse(source, name, SyntaxConfig, ws)?;
    let mut g = CodeGenerator::new(name, source);
    g.compile_stmt(&ast);
    let (instructions, blocks) = g.finish();
    let mut guarded = BTreeMap::new();
    for (k, v) in &blocks {
        guarded.insert(*k, rewrite(v));
    }
    let instructions = rewrite(&instructions);
    for ins in std::iter::once(&instructions).chain(guarded.values()) {
        check_constants(ins)?;
    }
    Ok((instructions, guarded))
}

/// minijinja folds constant expressions at compile time (`[1] * 1000000000` becomes one lazy
/// constant): the guarded operators never see those, so the constants are checked here.
fn check_constants(ins: &Instructions<'_>) -> Result<(), Error> {
    let limits = Limits::default();
    for idx in 0..ins.len() as u32 {
        if let Some(Instruction::LoadConst(v)) = ins.get(idx) {
            let too_big = match v.as_str() {
                Some(s) => s.len() > limits.max_bytes,
                None => is_list(v) && v.len().is_none_or(|n| n > limits.max_items),
            };
            if too_big {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "{CONST_LIMIT}: a constant of the template is larger than {} bytes or {} items",
                        limits.max_bytes, limits.max_items
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The guarded form of one instruction.
fn expand<'s>(i: &Instruction<'s>) -> Vec<Instruction<'s>> {
    match i {
        Instruction::Add => vec![Instruction::CallFunction(ADD, Some(2))],
        Instruction::Mul => vec![Instruction::CallFunction(MUL, Some(2))],
        Instruction::StringConcat => vec![Instruction::CallFunction(CAT, Some(2))],
        // Raw template text goes through the formatter like every other write, so it is
        // counted too (captured blocks and macro bodies included).
        Instruction::EmitRaw(s) => vec![Instruction::LoadConst(Value::from(*s)), Instruction::Emit],
        // What filters, methods and functions return is counted too (a builtin that grows a
        // string, looped, is caught once its results pass the budget).
        Instruction::ApplyFilter(..)
        | Instruction::CallMethod(..)
        | Instruction::CallFunction(..)
        | Instruction::CallObject(..) => {
            vec![i.clone(), Instruction::CallFunction(COUNT, Some(1))]
        }
        other => vec![other.clone()],
    }
}

/// Rewrite a compiled instruction list, keeping every jump pointing at the same instruction.
fn rewrite<'s>(old: &Instructions<'s>) -> Instructions<'s> {
    let n = old.len();
    let mut start = Vec::with_capacity(n + 1);
    let mut expanded = Vec::with_capacity(n);
    let mut next = 0u32;
    for idx in 0..n as u32 {
        let e = expand(old.get(idx).expect("index in range"));
        start.push(next);
        next += e.len() as u32;
        expanded.push(e);
    }
    start.push(next);
    let map = |t: &mut u32| *t = start.get(*t as usize).copied().unwrap_or(next);
    let mut out = Instructions::new(old.name(), old.source());
    for (idx, instrs) in expanded.into_iter().enumerate() {
        for mut ins in instrs {
            match &mut ins {
                Instruction::Jump(t)
                | Instruction::JumpIfFalse(t)
                | Instruction::JumpIfFalseOrPop(t)
                | Instruction::JumpIfTrueOrPop(t)
                | Instruction::Iterate(t)
                | Instruction::BuildMacro(_, t, _) => map(t),
                _ => {}
            }
            match old.get_span(idx as u32) {
                Some(span) => out.add_with_span(ins, span),
                None => match old.get_line(idx as u32) {
                    Some(line) => out.add_with_line(ins, line as u16),
                    None => out.add(ins),
                },
            };
        }
    }
    out
}

/// The plain environment the guarded operators delegate to (minijinja's own semantics).
fn ops_env() -> &'static Environment<'static> {
    static ENV: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(Environment::new)
}

fn eval_op(expr: &str, a: Value, b: Value) -> Result<Value, Error> {
    ops_env()
        .compile_expression(expr)?
        .eval(minijinja::context! { a => a, b => b })
}

fn is_list(v: &Value) -> bool {
    matches!(v.kind(), ValueKind::Seq | ValueKind::Iterable)
}

/// Items a (possibly lazy, possibly nested) list stands for, estimated from its length and
/// the first few items two levels down: `[[1] * 1000000] * 1000000` is 10^12, not 10^6.
fn weight(v: &Value, depth: usize) -> Option<usize> {
    if !is_list(v) {
        return Some(1);
    }
    let len = v.len()?;
    if depth == 0 || len == 0 {
        return Some(len.max(1));
    }
    let inner = v
        .try_iter()
        .ok()?
        .take(8)
        .map(|x| weight(&x, depth - 1))
        .try_fold(1usize, |m, w| w.map(|w| m.max(w)))?;
    len.checked_mul(inner)
}

/// Bytes of `v` printed (strings as they are, other values as Python prints them), failing
/// past the budget.
fn text_len(v: &Value, budget: &Budget) -> Result<usize, Error> {
    match v.as_str() {
        Some(s) => Ok(s.len()),
        None => {
            let mut s = String::new();
            super::hf::py_str(v, &mut s, budget)?;
            Ok(s.len())
        }
    }
}

/// Sum of the numbers written in a format string (widths and precisions such as `%9999s` or
/// `{:>9999}` pad to that many characters).
fn numbers_in(s: &str) -> usize {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<usize>().unwrap_or(usize::MAX))
        .fold(0usize, usize::saturating_add)
}

/// The most bytes a string builtin can produce from `s` and `args` (`replace`, `indent`,
/// `join`, `format`, as filters and as Python methods); checked before the builtin runs.
fn worst_case(name: &str, s: &Value, args: &[Value], budget: &Budget) -> Result<usize, Error> {
    let str_arg = |i: usize| args.get(i).and_then(|v| v.as_str()).unwrap_or_default();
    Ok(match name {
        "replace" => {
            let text = s.as_str().map_or_else(|| s.to_string(), str::to_string);
            let (from, to) = (str_arg(0), str_arg(1));
            let n = if from.is_empty() {
                text.chars().count() + 1
            } else {
                text.matches(from).count()
            };
            text.len().saturating_add(n.saturating_mul(to.len()))
        }
        "indent" => {
            let mut width = 4usize;
            for a in args {
                let values: Vec<Value> = if a.kind() == ValueKind::Map {
                    a.try_iter()
                        .map(|keys| keys.filter_map(|k| a.get_item(&k).ok()).collect())
                        .unwrap_or_default()
                } else {
                    vec![a.clone()]
                };
                for v in values {
                    let w = match v.as_str() {
                        Some(t) => t.len(),
                        None => v.as_usize().unwrap_or(0),
                    };
                    width = width.max(w);
                }
            }
            let text = text_len(s, budget)?;
            let lines = s.as_str().map_or(1, |t| t.lines().count() + 1);
            text.saturating_add(lines.saturating_mul(width))
        }
        // Filter: `items|join(sep)`; method: `sep.join(items)`.
        "join" | "join_method" => {
            let (items, sep) = if name == "join" {
                (s.clone(), str_arg(0).to_string())
            } else {
                (
                    args.first().cloned().unwrap_or(Value::UNDEFINED),
                    s.as_str().unwrap_or_default().to_string(),
                )
            };
            let mut total = 0usize;
            if items.as_str().is_none()
                && let Ok(iter) = items.try_iter()
            {
                for item in iter {
                    total = total
                        .saturating_add(text_len(&item, budget)?)
                        .saturating_add(sep.len());
                    budget.check_len(total)?;
                }
            } else {
                total = text_len(&items, budget)?.saturating_mul(sep.len().max(1) + 1);
            }
            total
        }
        "format" => {
            let fmt = s.as_str().unwrap_or_default();
            let mut total = fmt.len().saturating_add(numbers_in(fmt));
            for a in args {
                total = total.saturating_add(text_len(a, budget)?);
            }
            total
        }
        _ => 0,
    })
}

/// Wrap a builtin string filter: its worst case is checked against the budget first.
fn guarded_filter(
    env: &mut Environment<'_>,
    name: &'static str,
    original: Value,
    budget: std::sync::Arc<Budget>,
) {
    env.add_filter(
        name,
        move |state: &minijinja::State, value: Value, args: minijinja::value::Rest<Value>| {
            budget.check_len(worst_case(name, &value, &args.0, &budget)?)?;
            let mut all = vec![value];
            all.extend(args.0);
            original.call(state, &all)
        },
    );
}

/// Check a Python string method (`replace`, `join`, `format`) before pycompat runs it.
pub fn check_method(
    budget: &Budget,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<(), Error> {
    let name = match method {
        "join" => "join_method",
        "replace" | "format" => method,
        _ => return Ok(()),
    };
    if value.as_str().is_some() {
        budget.check_len(worst_case(name, value, args, budget)?)?;
    }
    Ok(())
}

/// Register the guarded operators and the counting formatter on `env`.
pub fn install(env: &mut Environment<'_>, budget: std::sync::Arc<Budget>) {
    use minijinja::filters;
    guarded_filter(
        env,
        "replace",
        Value::from_function(filters::replace),
        budget.clone(),
    );
    guarded_filter(
        env,
        "indent",
        Value::from_function(filters::indent),
        budget.clone(),
    );
    guarded_filter(
        env,
        "join",
        Value::from_function(filters::join),
        budget.clone(),
    );
    guarded_filter(
        env,
        "format",
        Value::from_function(filters::format),
        budget.clone(),
    );
    let b = budget.clone();
    env.add_function(COUNT, move |v: Value| -> Result<Value, Error> {
        if let Some(s) = v.as_str() {
            b.charge(s.len())?;
        } else if v.kind() == ValueKind::Seq {
            b.charge(v.len().unwrap_or(0).saturating_mul(8))?;
        }
        Ok(v)
    });
    let b = budget.clone();
    env.add_function(ADD, move |a: Value, c: Value| -> Result<Value, Error> {
        if let (Some(x), Some(y)) = (a.as_str(), c.as_str()) {
            b.charge(x.len() + y.len())?;
        } else if is_list(&a) && is_list(&c) {
            b.check_items(
                weight(&a, 2)
                    .zip(weight(&c, 2))
                    .and_then(|(x, y)| x.checked_add(y)),
            )?;
        }
        eval_op("a + b", a, c)
    });
    let b = budget.clone();
    env.add_function(MUL, move |a: Value, c: Value| -> Result<Value, Error> {
        let (thing, n) = if a.kind() == ValueKind::Number {
            (&c, &a)
        } else {
            (&a, &c)
        };
        if let Some(n) = n.as_i64().filter(|_| n.is_integer()) {
            let n = usize::try_from(n).unwrap_or(0);
            if let Some(s) = thing.as_str() {
                let len = s.len().saturating_mul(n);
                b.charge(len)?;
            } else if is_list(thing) {
                b.check_items(weight(thing, 2).and_then(|l| l.checked_mul(n)))?;
            }
        }
        eval_op("a * b", a, c)
    });
    let b = budget.clone();
    env.add_function(CAT, move |a: Value, c: Value| -> Result<Value, Error> {
        let mut s = String::new();
        for v in [&a, &c] {
            super::hf::py_str(v, &mut s, &b).map(|_| ())?;
        }
        b.charge(s.len())?;
        Ok(Value::from(s))
    });
    let b = budget;
    env.set_formatter(move |out, _state, value| {
        let mut s = String::new();
        super::hf::py_str(value, &mut s, &b)?;
        b.charge(s.len())?;
        out.write_str(&s)
            .map_err(|_| Error::new(ErrorKind::WriteFailure, "cannot write the output"))
    });
}
