//! llama.cpp GBNF → llguidance Lark.
//!
//! GBNF (llama.cpp's `grammars/README.md`) is a character-level context-free grammar: rules
//! `name ::= expression`, the start rule `root`, alternatives `|`, sequences, groups `( )`,
//! repetition `*` `+` `?` `{m}` `{m,}` `{m,n}`, string literals with escapes, character classes
//! `[a-z]` / `[^"\\]`, `.` for any character, `# comments`, and token references `<...>`.
//!
//! llguidance's Lark dialect has a lexer, and its lexemes are greedy: a multi-character
//! terminal such as `"ab"` or `/[0-9]+/` would swallow input that GBNF would split
//! differently (GBNF `("a" | "ab") "bc"` accepts `abc`, a greedy `"ab"` lexeme would not). So the
//! translation keeps GBNF's meaning by making every terminal exactly one character: a string
//! literal becomes a sequence of one-character strings, a class a one-character regex, and all
//! repetition happens in grammar rules, never inside a lexeme.
//!
//! The reader is a small tokenizer plus a recursive-descent parser. It accepts everything
//! llama.cpp accepts and is lenient about layout: newlines are plain whitespace and a rule ends
//! where the next `name ::=` begins, so alternatives may start on a new line.

use std::collections::HashMap;
use std::fmt;

/// A GBNF syntax error, with the 1-based line and column of the offending character (none for
/// whole-grammar problems such as a missing `root`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GbnfError {
    /// 1-based line and column (in characters), when the error has a place.
    pub at: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for GbnfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, column)) => write!(f, "line {line}, column {column}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for GbnfError {}

type Result<T> = std::result::Result<T, GbnfError>;

fn err_at<T>(line: usize, column: usize, message: impl Into<String>) -> Result<T> {
    Err(GbnfError {
        at: Some((line, column)),
        message: message.into(),
    })
}

/// Translate a GBNF grammar into an equivalent llguidance Lark grammar (start rule `start`).
pub fn gbnf_to_lark(source: &str) -> Result<String> {
    let tokens = Lexer::new(source).run()?;
    let rules = Parser { tokens, pos: 0 }.grammar()?;
    check(&rules)?;
    let mut out = String::from("start: ");
    out.push_str(&rule_name("root"));
    out.push('\n');
    for rule in &rules {
        out.push_str(&rule_name(&rule.name));
        out.push_str(": ");
        emit(&rule.body, 0, &mut out);
        out.push('\n');
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Name(String),
    Define,
    Pipe,
    LParen,
    RParen,
    Star,
    Plus,
    Question,
    Repeat(u32, Option<u32>),
    Str(Vec<char>),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Dot,
    Special(String),
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Name(n) => format!("name '{n}'"),
            Tok::Define => "'::='".into(),
            Tok::Pipe => "'|'".into(),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Star => "'*'".into(),
            Tok::Plus => "'+'".into(),
            Tok::Question => "'?'".into(),
            Tok::Repeat(..) => "a '{m,n}' repetition".into(),
            Tok::Str(_) => "a string literal".into(),
            Tok::Class { .. } => "a character class".into(),
            Tok::Dot => "'.'".into(),
            Tok::Special(s) => format!("token {s}"),
            Tok::Eof => "the end of the grammar".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Spanned {
    tok: Tok,
    line: usize,
    column: usize,
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    column: usize,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

impl Lexer {
    fn new(source: &str) -> Self {
        Lexer {
            chars: source.chars().collect(),
            pos: 0,
            line: 1,
            column: 1,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, k: usize) -> Option<char> {
        self.chars.get(self.pos + k).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            if c == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.bump();
                }
            } else if c.is_whitespace() {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn run(mut self) -> Result<Vec<Spanned>> {
        let mut out = Vec::new();
        loop {
            self.skip_space();
            let (line, column) = (self.line, self.column);
            let Some(c) = self.peek() else {
                out.push(Spanned {
                    tok: Tok::Eof,
                    line,
                    column,
                });
                return Ok(out);
            };
            let tok = match c {
                '|' | '(' | ')' | '*' | '+' | '?' | '.' => {
                    self.bump();
                    match c {
                        '|' => Tok::Pipe,
                        '(' => Tok::LParen,
                        ')' => Tok::RParen,
                        '*' => Tok::Star,
                        '+' => Tok::Plus,
                        '?' => Tok::Question,
                        _ => Tok::Dot,
                    }
                }
                ':' => {
                    if self.peek_at(1) == Some(':') && self.peek_at(2) == Some('=') {
                        self.bump();
                        self.bump();
                        self.bump();
                        Tok::Define
                    } else {
                        return err_at(line, column, "expected '::='");
                    }
                }
                '{' => self.repeat()?,
                '"' => self.string()?,
                '[' => self.class()?,
                '<' => self.special()?,
                '!' => {
                    return err_at(
                        line,
                        column,
                        "negated token references (!<...>) are not supported",
                    );
                }
                c if is_name_char(c) => {
                    let mut name = String::new();
                    while let Some(c) = self.peek().filter(|&c| is_name_char(c)) {
                        name.push(c);
                        self.bump();
                    }
                    Tok::Name(name)
                }
                c => return err_at(line, column, format!("unexpected character {c:?}")),
            };
            out.push(Spanned { tok, line, column });
        }
    }

    fn number(&mut self) -> Result<Option<u32>> {
        let (line, column) = (self.line, self.column);
        let mut digits = String::new();
        while let Some(c) = self.peek().filter(char::is_ascii_digit) {
            digits.push(c);
            self.bump();
        }
        if digits.is_empty() {
            return Ok(None);
        }
        match digits.parse::<u32>() {
            Ok(n) if n <= 100_000 => Ok(Some(n)),
            _ => err_at(
                line,
                column,
                format!("repetition count {digits} is too large"),
            ),
        }
    }

    /// `{m}`, `{m,}`, `{m,n}` (and `{,n}` as `{0,n}`).
    fn repeat(&mut self) -> Result<Tok> {
        let (line, column) = (self.line, self.column);
        self.bump(); // {
        self.skip_space();
        let min = self.number()?;
        self.skip_space();
        let tok = if self.peek() == Some(',') {
            self.bump();
            self.skip_space();
            let max = self.number()?;
            self.skip_space();
            Tok::Repeat(min.unwrap_or(0), max)
        } else {
            match min {
                Some(m) => Tok::Repeat(m, Some(m)),
                None => return err_at(line, column, "expected a number after '{'"),
            }
        };
        if self.peek() != Some('}') {
            return err_at(
                self.line,
                self.column,
                "expected '}' to close the repetition",
            );
        }
        self.bump();
        if let Tok::Repeat(min, Some(max)) = tok
            && max < min
        {
            return err_at(
                line,
                column,
                format!("repetition {{{min},{max}}}: the maximum is below the minimum"),
            );
        }
        Ok(tok)
    }

    /// One character of a string or class, escapes decoded. `None` at the end of input.
    fn char_or_escape(&mut self) -> Result<Option<char>> {
        let (line, column) = (self.line, self.column);
        let Some(c) = self.bump() else {
            return Ok(None);
        };
        if c != '\\' {
            return Ok(Some(c));
        }
        let Some(e) = self.bump() else {
            return Ok(None);
        };
        let hex_len = match e {
            'x' => 2,
            'u' => 4,
            'U' => 8,
            't' => return Ok(Some('\t')),
            'n' => return Ok(Some('\n')),
            'r' => return Ok(Some('\r')),
            'f' => return Ok(Some('\x0c')),
            'v' => return Ok(Some('\x0b')),
            '0' => return Ok(Some('\0')),
            e if e.is_ascii_punctuation() => return Ok(Some(e)),
            e => return err_at(line, column, format!("unknown escape '\\{e}'")),
        };
        let mut value = 0u32;
        for _ in 0..hex_len {
            match self.peek().and_then(|c| c.to_digit(16)) {
                Some(d) => {
                    value = value * 16 + d;
                    self.bump();
                }
                None => {
                    return err_at(
                        line,
                        column,
                        format!("escape '\\{e}' needs {hex_len} hexadecimal digits"),
                    );
                }
            }
        }
        match char::from_u32(value) {
            Some(c) => Ok(Some(c)),
            None => err_at(
                line,
                column,
                format!("escape '\\{e}' gives U+{value:X}, which is not a Unicode scalar value"),
            ),
        }
    }

    fn string(&mut self) -> Result<Tok> {
        let (line, column) = (self.line, self.column);
        self.bump(); // "
        let mut chars = Vec::new();
        loop {
            if self.peek() == Some('"') {
                self.bump();
                return Ok(Tok::Str(chars));
            }
            match self.char_or_escape()? {
                Some(c) => chars.push(c),
                None => return err_at(line, column, "unterminated string literal"),
            }
        }
    }

    fn class(&mut self) -> Result<Tok> {
        let (line, column) = (self.line, self.column);
        self.bump(); // [
        let negated = if self.peek() == Some('^') {
            self.bump();
            true
        } else {
            false
        };
        let mut ranges = Vec::new();
        loop {
            if self.peek() == Some(']') {
                self.bump();
                break;
            }
            let (l, c) = (self.line, self.column);
            let Some(lo) = self.char_or_escape()? else {
                return err_at(line, column, "unterminated character class");
            };
            let hi = if self.peek() == Some('-') && self.peek_at(1).is_some_and(|n| n != ']') {
                self.bump();
                match self.char_or_escape()? {
                    Some(hi) => hi,
                    None => return err_at(line, column, "unterminated character class"),
                }
            } else {
                lo
            };
            if hi < lo {
                return err_at(
                    l,
                    c,
                    format!("character range {lo:?}-{hi:?} is out of order"),
                );
            }
            ranges.push((lo, hi));
        }
        if ranges.is_empty() && !negated {
            return err_at(line, column, "empty character class [] matches nothing");
        }
        Ok(Tok::Class { negated, ranges })
    }

    /// `<[123]>`, `<|name|>`, `<name>`: a token reference, passed to llguidance as is.
    fn special(&mut self) -> Result<Tok> {
        let (line, column) = (self.line, self.column);
        let mut text = String::new();
        while let Some(c) = self.bump() {
            text.push(c);
            if c == '>' {
                break;
            }
            if c.is_whitespace() || (c == '<' && text.len() > 1) {
                return err_at(line, column, "malformed token reference <...>");
            }
        }
        if !text.ends_with('>') || text.len() < 3 {
            return err_at(line, column, "malformed token reference <...>");
        }
        Ok(Tok::Special(text))
    }
}

// ---------------------------------------------------------------------------------------------
// Syntax tree and parser

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Empty,
    Char(char),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Any,
    Ref {
        name: String,
        line: usize,
        column: usize,
    },
    Special(String),
    Seq(Vec<Node>),
    Alt(Vec<Node>),
    Repeat(Box<Node>, u32, Option<u32>),
}

struct Rule {
    name: String,
    line: usize,
    column: usize,
    body: Node,
}

struct Parser {
    tokens: Vec<Spanned>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Spanned {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Spanned {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    /// A rule head `name ::=` starts here.
    fn at_rule_head(&self) -> bool {
        matches!(self.peek().tok, Tok::Name(_))
            && self
                .tokens
                .get(self.pos + 1)
                .is_some_and(|t| t.tok == Tok::Define)
    }

    fn grammar(&mut self) -> Result<Vec<Rule>> {
        let mut rules = Vec::new();
        loop {
            let head = self.next();
            let name = match head.tok {
                Tok::Eof => break,
                Tok::Name(name) => name,
                other => {
                    return err_at(
                        head.line,
                        head.column,
                        format!("expected a rule name, found {}", other.describe()),
                    );
                }
            };
            let def = self.next();
            if def.tok != Tok::Define {
                return err_at(
                    def.line,
                    def.column,
                    format!(
                        "expected '::=' after rule name '{name}', found {}",
                        def.tok.describe()
                    ),
                );
            }
            let body = self.alternates()?;
            let after = self.peek();
            match after.tok {
                Tok::Eof | Tok::Name(_) => {}
                Tok::RParen => return err_at(after.line, after.column, "unmatched ')'"),
                ref other => {
                    return err_at(
                        after.line,
                        after.column,
                        format!("unexpected {}", other.describe()),
                    );
                }
            }
            rules.push(Rule {
                name,
                line: head.line,
                column: head.column,
                body,
            });
        }
        Ok(rules)
    }

    fn alternates(&mut self) -> Result<Node> {
        let mut alts = vec![self.sequence()?];
        while self.peek().tok == Tok::Pipe {
            self.next();
            alts.push(self.sequence()?);
        }
        Ok(if alts.len() == 1 {
            alts.pop().unwrap_or(Node::Empty)
        } else {
            Node::Alt(alts)
        })
    }

    fn sequence(&mut self) -> Result<Node> {
        let mut items = Vec::new();
        loop {
            match self.peek().tok {
                Tok::Pipe | Tok::RParen | Tok::Eof => break,
                Tok::Name(_) if self.at_rule_head() => break,
                _ => {}
            }
            let item = self.postfix()?;
            match item {
                Node::Empty => {}
                Node::Seq(inner) => items.extend(inner),
                other => items.push(other),
            }
        }
        Ok(match items.len() {
            0 => Node::Empty,
            1 => items.pop().unwrap_or(Node::Empty),
            _ => Node::Seq(items),
        })
    }

    fn postfix(&mut self) -> Result<Node> {
        let mut node = self.atom()?;
        loop {
            let (min, max) = match self.peek().tok {
                Tok::Star => (0, None),
                Tok::Plus => (1, None),
                Tok::Question => (0, Some(1)),
                Tok::Repeat(min, max) => (min, max),
                _ => return Ok(node),
            };
            self.next();
            node = repeat(node, min, max);
        }
    }

    fn atom(&mut self) -> Result<Node> {
        let t = self.next();
        Ok(match t.tok {
            Tok::Str(chars) => match chars.len() {
                0 => Node::Empty,
                1 => Node::Char(chars[0]),
                _ => Node::Seq(chars.into_iter().map(Node::Char).collect()),
            },
            Tok::Class { negated, ranges } => Node::Class { negated, ranges },
            Tok::Dot => Node::Any,
            Tok::Special(s) => Node::Special(s),
            Tok::Name(name) => Node::Ref {
                name,
                line: t.line,
                column: t.column,
            },
            Tok::LParen => {
                let inner = self.alternates()?;
                let close = self.next();
                if close.tok != Tok::RParen {
                    return err_at(
                        close.line,
                        close.column,
                        format!(
                            "expected ')' to close the group opened at line {}, column {}, found {}",
                            t.line,
                            t.column,
                            close.tok.describe()
                        ),
                    );
                }
                inner
            }
            Tok::Star | Tok::Plus | Tok::Question | Tok::Repeat(..) => {
                return err_at(
                    t.line,
                    t.column,
                    format!("{} has no expression before it to repeat", t.tok.describe()),
                );
            }
            other => {
                return err_at(
                    t.line,
                    t.column,
                    format!("expected an expression, found {}", other.describe()),
                );
            }
        })
    }
}

fn repeat(node: Node, min: u32, max: Option<u32>) -> Node {
    match (min, max) {
        (_, Some(0)) => Node::Empty,
        (1, Some(1)) => node,
        _ if node == Node::Empty => Node::Empty,
        _ => Node::Repeat(Box::new(node), min, max),
    }
}

/// Every referenced rule exists, no rule is defined twice, and `root` is there.
fn check(rules: &[Rule]) -> Result<()> {
    let mut defined: HashMap<&str, (usize, usize)> = HashMap::new();
    for r in rules {
        if let Some(&(line, column)) = defined.get(r.name.as_str()) {
            return err_at(
                r.line,
                r.column,
                format!(
                    "rule '{}' is defined twice (first at line {line}, column {column})",
                    r.name
                ),
            );
        }
        defined.insert(&r.name, (r.line, r.column));
    }
    for r in rules {
        check_refs(&r.body, &defined)?;
    }
    if !defined.contains_key("root") {
        return Err(GbnfError {
            at: None,
            message: "the grammar has no 'root' rule (GBNF starts from `root ::= ...`)".into(),
        });
    }
    Ok(())
}

fn check_refs(node: &Node, defined: &HashMap<&str, (usize, usize)>) -> Result<()> {
    match node {
        Node::Ref { name, line, column } if !defined.contains_key(name.as_str()) => {
            err_at(*line, *column, format!("undefined rule '{name}'"))
        }
        Node::Seq(items) | Node::Alt(items) => {
            items.iter().try_for_each(|n| check_refs(n, defined))
        }
        Node::Repeat(inner, ..) => check_refs(inner, defined),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Lark output

/// A GBNF name as a Lark rule name: `g_` then the name, lower case kept, `_X` for upper-case X,
/// `__` for `_` (one-to-one, and always a valid lower-case Lark rule).
fn rule_name(name: &str) -> String {
    let mut out = String::from("g_");
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else if c == '_' {
            out.push_str("__");
        } else {
            out.push(c);
        }
    }
    out
}

/// A Lark (JSON-syntax) string literal for `s`.
pub(crate) fn lark_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn class_char(c: char, out: &mut String) {
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else {
        out.push_str(&format!("\\x{{{:X}}}", c as u32));
    }
}

/// One character, whatever it is (`.` and `[^]`).
const ANY_CHAR: &str = "/[\\x{0}-\\x{10FFFF}]/";

/// Precedence of the place a node is written in: 0 = anywhere (alternatives allowed),
/// 1 = an alternative (a sequence is fine), 2 = a sequence item (a repetition is fine),
/// 3 = the operand of a repetition (atoms only).
fn emit(node: &Node, level: u8, out: &mut String) {
    let wrap = |needs: bool, out: &mut String, f: &dyn Fn(&mut String)| {
        if needs {
            out.push('(');
            f(out);
            out.push(')');
        } else {
            f(out);
        }
    };
    match node {
        Node::Empty => out.push_str("\"\""),
        Node::Char(c) => out.push_str(&lark_string(&c.to_string())),
        // `[^]` (negated, nothing listed) is any character, as `.` is.
        Node::Any => out.push_str(ANY_CHAR),
        Node::Class { ranges, .. } if ranges.is_empty() => out.push_str(ANY_CHAR),
        Node::Class { negated, ranges } => {
            out.push_str("/[");
            if *negated {
                out.push('^');
            }
            for &(lo, hi) in ranges {
                class_char(lo, out);
                if hi != lo {
                    out.push('-');
                    class_char(hi, out);
                }
            }
            out.push_str("]/");
        }
        Node::Ref { name, .. } => out.push_str(&rule_name(name)),
        Node::Special(s) => out.push_str(s),
        Node::Seq(items) => wrap(level >= 2, out, &|out| {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                emit(item, 2, out);
            }
        }),
        Node::Alt(items) => wrap(level >= 1, out, &|out| {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(" | ");
                }
                emit(item, 1, out);
            }
        }),
        Node::Repeat(inner, min, max) => wrap(level >= 3, out, &|out| {
            emit(inner, 3, out);
            match (*min, *max) {
                (0, None) => out.push('*'),
                (1, None) => out.push('+'),
                (0, Some(1)) => out.push('?'),
                (m, None) => out.push_str(&format!("{{{m},}}")),
                (m, Some(n)) if m == n => out.push_str(&format!("{{{m}}}")),
                (m, Some(n)) => out.push_str(&format!("{{{m},{n}}}")),
            }
        }),
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary text, and text made of GBNF's own pieces, converts to Lark or fails with an
        /// error (never a panic or a hang), the same way every time.
        #[test]
        fn fuzz_any_text_converts_or_fails_cleanly(
            source in prop_oneof![
                ".{0,60}",
                prop::collection::vec(
                    prop_oneof![
                        Just("root"), Just(" ::= "),
                        Just("\n"), Just("\"a\""),
                        Just("[a-z]"), Just("[^\\n]"),
                        Just("("), Just(")"),
                        Just("|"), Just("*"),
                        Just("+"), Just("?"),
                        Just("{2,3}"), Just("x"),
                        Just("# c\n"), Just("\\\\"),
                    ],
                    0..24,
                )
                .prop_map(|parts| parts.concat()),
            ]
        ) {
            let a = gbnf_to_lark(&source).map_err(|e| e.to_string());
            let b = gbnf_to_lark(&source).map_err(|e| e.to_string());
            prop_assert_eq!(a, b);
        }
    }
}
