//! Building the model input (chat.md): render the GGUF's Jinja chat template as Hugging Face's
//! `apply_chat_template` does, or tokenise the raw prompt.
//!
//! Rendering follows transformers' environment: `trim_blocks` and `lstrip_blocks` on, loop
//! controls (`break`, `continue`), HF's `tojson`, `raise_exception`, `strftime_now`,
//! Python's `str()` when values are printed, Python string/dict methods (minijinja-contrib's
//! pycompat) and `{% generation %}` blocks (rendered as their content). A template that uses
//! something ntv cannot render is an error naming it. Every rendering runs under [`Limits`]
//! (module `guard`): the template is untrusted code from the model file.

mod guard;
mod hf;

use std::sync::Arc;

use minijinja::{Environment, ErrorKind, Value, context};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use guard::Limits;
pub use hf::py_float;

/// One message of a conversation (`--messages FILE.json`, OpenAI style).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or any role the template knows.
    pub role: String,
    /// The message text.
    pub content: String,
}

/// The prompt as resolved for one call: user text and system prompt, or a whole conversation
/// (`messages`, which then replaces both), whether the model's chat template wraps it, and
/// whether special-token text in a raw prompt becomes special tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptSpec {
    pub prompt: String,
    pub system: String,
    /// `--messages`: the conversation; `prompt` and `system` are empty then.
    pub messages: Option<Vec<ChatMessage>>,
    pub chat_template: bool,
    /// Raw prompts (no chat template): parse special-token text such as `<|im_start|>` into
    /// special tokens, as Hugging Face's `tokenizer(text)` and llama.cpp do (default); false
    /// with `--no-parse-special`.
    pub parse_special: bool,
}

impl PromptSpec {
    /// A prompt with a system prompt, chat template on, special tokens parsed.
    pub fn text(prompt: impl Into<String>, system: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            system: system.into(),
            messages: None,
            chat_template: true,
            parse_special: true,
        }
    }

    /// A conversation, chat template on, special tokens parsed.
    pub fn conversation(messages: Vec<ChatMessage>) -> Self {
        Self {
            prompt: String::new(),
            system: String::new(),
            messages: Some(messages),
            chat_template: true,
            parse_special: true,
        }
    }

    /// The conversation the template renders: `messages`, else `[system?, user]`.
    pub fn conversation_messages(&self) -> Vec<ChatMessage> {
        if let Some(m) = &self.messages {
            return m.clone();
        }
        let mut out = Vec::new();
        if !self.system.is_empty() {
            out.push(ChatMessage {
                role: "system".into(),
                content: self.system.clone(),
            });
        }
        out.push(ChatMessage {
            role: "user".into(),
            content: self.prompt.clone(),
        });
        out
    }

    /// The text fed to the tokenizer without a chat template: the prompt, or the messages'
    /// contents joined by newlines (roles are not written: a raw prompt is what you give).
    pub fn raw_text(&self) -> String {
        match &self.messages {
            Some(m) => m
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            None => self.prompt.clone(),
        }
    }
}

/// The default system prompt of the original demo.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// A chat template that could not be rendered, or a conversation that is not one.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the model's chat template does not render: {0}")]
    Render(String),
    #[error("the model's chat template uses something ntv cannot render: {0}")]
    Unsupported(String),
    #[error("the model's chat template refused the conversation: {0}")]
    Raised(String),
    #[error("the model's chat template exceeded ntv's limits: {0}")]
    Limit(String),
    #[error(
        "the last message is the assistant's, to be continued, but the chat template does not write its content"
    )]
    FinalMessage,
    #[error("{0}")]
    Messages(String),
}

impl ChatError {
    /// How to fix it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::Limit(_) => format!(
                "the template is broken or hostile (ntv allows {} instructions and {} MiB of text per rendering); pass --no-chat-template to feed the prompt as plain text",
                Limits::default().fuel,
                Limits::default().max_bytes >> 20
            ),
            Self::Raised(_) => "the template's own check failed: change the conversation (roles, order) or pass --no-chat-template".into(),
            Self::FinalMessage => "end the conversation with a user message, or pass --no-chat-template".into(),
            Self::Messages(_) => "--messages takes a JSON list of {\"role\": ..., \"content\": ...} objects (a file, or - for stdin)".into(),
            _ => "pass --no-chat-template to feed the prompt as plain text".into(),
        })
    }

    /// Bad input (exit 2): the template comes with the user's model.
    pub fn is_input(&self) -> bool {
        true
    }
}

impl crate::error::Diagnose for ChatError {
    fn is_input(&self) -> bool {
        ChatError::is_input(self)
    }
    fn hint(&self) -> Option<String> {
        ChatError::hint(self)
    }
}

/// Read a conversation: a JSON list of `{role, content}` objects.
pub fn parse_messages(text: &str, source: &str) -> Result<Vec<ChatMessage>, ChatError> {
    let messages: Vec<ChatMessage> = serde_json::from_str(text).map_err(|e| {
        ChatError::Messages(format!("{source} is not a list of chat messages: {e}"))
    })?;
    if messages.is_empty() {
        return Err(ChatError::Messages(format!("{source} holds no messages")));
    }
    if let Some(i) = messages.iter().position(|m| m.role.trim().is_empty()) {
        return Err(ChatError::Messages(format!(
            "{source}: message {i} has an empty role"
        )));
    }
    Ok(messages)
}

/// Inputs of a chat rendering.
pub struct ChatInput<'a> {
    pub template: &'a str,
    pub messages: &'a [ChatMessage],
    pub bos_token: &'a str,
    pub eos_token: &'a str,
    pub limits: Limits,
}

fn describe(err: &minijinja::Error) -> String {
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// `{% generation %}…{% endgeneration %}` (transformers' AssistantTracker extension) renders
/// as its content: the tags become an `if true` block with the same whitespace control.
fn generation_blocks(template: &str) -> std::borrow::Cow<'_, str> {
    static OPEN: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    static CLOSE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    if !template.contains("generation") {
        return template.into();
    }
    let open =
        OPEN.get_or_init(|| regex::Regex::new(r"\{%([-+]?)\s*generation\s*([-+]?)%\}").unwrap());
    let close = CLOSE
        .get_or_init(|| regex::Regex::new(r"\{%([-+]?)\s*endgeneration\s*([-+]?)%\}").unwrap());
    let t = open.replace_all(template, "{%$1 if true $2%}");
    close.replace_all(&t, "{%$1 endif $2%}").into_owned().into()
}

/// Render the conversation as Hugging Face's `apply_chat_template` does: with
/// `add_generation_prompt = true`, unless the last message is the assistant's — then, as
/// transformers' text-generation pipeline does (`continue_final_message`), the text ends right
/// after that message's content so the model continues it.
pub fn render(input: &ChatInput<'_>) -> Result<String, ChatError> {
    let source = generation_blocks(input.template);
    let budget = Arc::new(guard::Budget::new(input.limits));
    let raised: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let unknown: Arc<std::sync::Mutex<Option<String>>> = Arc::default();

    let mut env = Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_fuel(Some(input.limits.fuel));
    env.set_recursion_limit(input.limits.recursion);
    let u = unknown.clone();
    let b = budget.clone();
    env.set_unknown_method_callback(move |state, value, method, args| {
        guard::check_method(&b, value, method, args)?;
        if let (Some(s), "find" | "rfind") = (value.as_str(), method) {
            return hf::find(s, method == "rfind", args);
        }
        minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
            .inspect_err(|e| {
                if e.kind() == ErrorKind::UnknownMethod {
                    *u.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                        "the method .{method}() on a {} value",
                        value.kind()
                    ));
                }
            })
    });
    let r = raised.clone();
    env.add_function(
        "raise_exception",
        move |msg: String| -> Result<Value, minijinja::Error> {
            *r.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg.clone());
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |fmt: String| hf::strftime_now(&fmt));
    let b = budget.clone();
    env.add_filter(
        "tojson",
        move |v: Value, indent: Option<Value>, kwargs: minijinja::value::Kwargs| {
            hf::tojson(&v, indent, kwargs, &b)
        },
    );
    let b = budget.clone();
    env.add_filter(
        "string",
        move |v: Value| -> Result<Value, minijinja::Error> {
            let mut s = String::new();
            hf::py_str(&v, &mut s, &b)?;
            b.charge(s.len())?;
            Ok(Value::from(s))
        },
    );
    guard::install(&mut env, budget.clone());

    let messages = input.messages;
    let continue_final = messages.last().is_some_and(|m| m.role == "assistant");
    let root = context! {
        messages => messages.iter().map(|m| context! { role => m.role, content => m.content }).collect::<Vec<_>>(),
        add_generation_prompt => !continue_final,
        bos_token => input.bos_token,
        eos_token => input.eos_token,
        tools => (),
        documents => (),
    };

    let result = guard::compile("chat_template", &source).and_then(|(instructions, blocks)| {
        let mut out = String::new();
        minijinja::machinery::Vm::new(&env)
            .eval(
                &instructions,
                root,
                &blocks,
                &mut minijinja::machinery::make_string_output(&mut out),
                minijinja::AutoEscape::None,
            )
            .map(|_| out)
    });
    let rendered = match result {
        Ok(text) => text,
        Err(e) => {
            if let Some(msg) = raised.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return Err(ChatError::Raised(msg));
            }
            if let Some(what) = budget
                .exceeded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                return Err(ChatError::Limit(what));
            }
            return Err(match e.kind() {
                ErrorKind::InvalidOperation if e.to_string().contains(guard::CONST_LIMIT) => {
                    ChatError::Limit(describe(&e))
                }
                ErrorKind::OutOfFuel => ChatError::Limit(format!(
                    "it ran more than {} instructions",
                    input.limits.fuel
                )),
                ErrorKind::InvalidOperation if e.to_string().contains("recursion limit") => {
                    ChatError::Limit(format!(
                        "it nested deeper than {} levels",
                        input.limits.recursion
                    ))
                }
                ErrorKind::UnknownMethod => ChatError::Unsupported(
                    unknown
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take()
                        .unwrap_or_else(|| describe(&e)),
                ),
                ErrorKind::UnknownFilter
                | ErrorKind::UnknownTest
                | ErrorKind::UnknownFunction
                | ErrorKind::UnknownBlock => ChatError::Unsupported(describe(&e)),
                ErrorKind::SyntaxError if e.to_string().contains("unknown statement") => {
                    ChatError::Unsupported(describe(&e))
                }
                _ => ChatError::Render(describe(&e)),
            });
        }
    };
    if continue_final {
        let last = &messages[messages.len() - 1].content;
        return continue_final_message(&rendered, last);
    }
    Ok(rendered)
}

/// transformers' `continue_final_message`: cut the rendered text right after the final
/// message's content.
fn continue_final_message(rendered: &str, last: &str) -> Result<String, ChatError> {
    let stripped = last.trim();
    let Some(at) = rendered.rfind(stripped) else {
        return Err(ChatError::FinalMessage);
    };
    let lstripped = last.trim_start();
    let end = if rendered[at..].starts_with(lstripped) && lstripped == last {
        at + lstripped.len()
    } else {
        at + stripped.len()
    };
    Ok(rendered[..end].to_string())
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn render_spec(template: &str, spec: &PromptSpec) -> Result<String, ChatError> {
        render_limited(template, spec, Limits::default())
    }

    fn render_limited(
        template: &str,
        spec: &PromptSpec,
        limits: Limits,
    ) -> Result<String, ChatError> {
        render(&ChatInput {
            template,
            messages: &spec.conversation_messages(),
            bos_token: "<|im_start|>",
            eos_token: "<|im_end|>",
            limits,
        })
    }

    fn one(template: &str, system: &str) -> Result<String, ChatError> {
        render_spec(
            template,
            &PromptSpec::text("The capital of France is", system),
        )
    }

    fn user(template: &str, prompt: &str) -> Result<String, ChatError> {
        render_spec(template, &PromptSpec::text(prompt, ""))
    }

    #[test]
    fn chatml_known_answer() {
        let out = one(CHATML, DEFAULT_SYSTEM).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nThe capital of France is<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn empty_system_omits_the_message() {
        let out = one(CHATML, "").unwrap();
        assert!(out.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
    }

    #[test]
    fn python_string_methods_work() {
        let t = "{{ messages[0]['content'].strip().upper() }}{% if messages[0]['content'].startswith(' x') %}!{% endif %}";
        assert_eq!(user(t, " x y ").unwrap(), "X Y!");
    }

    #[test]
    fn block_whitespace_is_trimmed_as_in_hugging_face() {
        let t = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content }}]\n  {% endif %}\n{% endfor %}\n";
        assert_eq!(user(t, "hi").unwrap(), "[hi]\n");
    }

    #[test]
    fn loop_controls_tojson_and_python_printing() {
        let t = "{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% endfor %}|{{ {'b': 'é<>&', 'a': [1, 2.5, none, true]}|tojson }}|{{ {'b': 1, 'a': 2}|tojson(indent=2, sort_keys=true) }}|{{ none }} {{ true }} {{ 1.0 }} {{ [1, 'a', none] }}|{{ 'a' ~ none }}";
        assert_eq!(
            user(t, "x").unwrap(),
            "02|{\"b\": \"é<>&\", \"a\": [1, 2.5, null, true]}|{\n  \"a\": 2,\n  \"b\": 1\n}|None True 1.0 [1, 'a', None]|aNone"
        );
    }

    #[test]
    fn generation_blocks_render_their_content() {
        let t = "{% for m in messages %}{% generation %}<{{ m.content }}>{% endgeneration %}{% endfor %}";
        assert_eq!(user(t, "x").unwrap(), "<x>");
    }

    #[test]
    fn a_final_assistant_message_is_continued() {
        let spec = PromptSpec::conversation(vec![
            ChatMessage {
                role: "user".into(),
                content: "Hi".into(),
            },
            ChatMessage {
                role: "assistant".into(),
                content: "Hello".into(),
            },
        ]);
        assert_eq!(
            render_spec(CHATML, &spec).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello"
        );
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let err = user("{{ raise_exception('roles must alternate') }}", "x").unwrap_err();
        assert!(
            matches!(&err, ChatError::Raised(m) if m == "roles must alternate"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_features_are_named() {
        let err = user("{{ messages[0].content.zfill(5) }}", "x").unwrap_err();
        assert!(
            matches!(&err, ChatError::Unsupported(m) if m.contains(".zfill()")),
            "{err}"
        );
        let err = user("{{ 'x'|frobnicate }}", "x").unwrap_err();
        assert!(
            matches!(&err, ChatError::Unsupported(m) if m.contains("frobnicate")),
            "{err}"
        );
        let err = user("{% do messages.append(1) %}", "x").unwrap_err();
        assert!(matches!(&err, ChatError::Unsupported(_)), "{err}");
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = user("{% for %}", "x").unwrap_err();
        assert!(matches!(err, ChatError::Render(_)));
    }

    fn limit(t: &str) -> String {
        let started = std::time::Instant::now();
        let err = user(t, "x").unwrap_err();
        assert!(
            started.elapsed().as_secs() < 10,
            "{t}: {:?}",
            started.elapsed()
        );
        assert!(matches!(err, ChatError::Limit(_)), "{t}: {err}");
        err.to_string()
    }

    #[test]
    fn hostile_templates_stop_at_the_limits() {
        // Time: nested loops, exponential macro recursion, deep recursion.
        limit(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}x{% endfor %}{% endfor %}{% endfor %}",
        );
        limit(
            "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
        );
        limit("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
        // Memory: repetition, doubling by ~, + and captured output, lists.
        limit("{{ 'x' * 100000000 }}");
        limit(
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        );
        limit(
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
        );
        limit(
            "{% macro d(s, n) %}{% if n == 0 %}{{ s|length }}{% else %}{{ d(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ d('x', 40) }}",
        );
        limit(
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s %}{{ ns.s }}{{ ns.s }}{% endset %}{% endfor %}{{ ns.s|length }}",
        );
        limit("{{ ([1] * 1000000000)|length }}");
        limit("{% set n = 1000000000 %}{{ ([1] * n)|list|length }}");
        limit("{% set l = [1] * 1000 %}{{ (l * 1000 * 1000)|list|length }}");
        limit("{% set n = 1000000 %}{{ ([[1] * n] * n)|map('list')|list|length }}");
        // Growth through builtins: replace, join, indent, format, as filters and methods.
        limit(
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s|replace('x', 'xx') %}{% endfor %}{{ ns.s|length }}",
        );
        limit(
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s.replace('x', 'xx') %}{% endfor %}{{ ns.s|length }}",
        );
        limit(
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = [ns.s, ns.s]|join %}{% endfor %}{{ ns.s|length }}",
        );
        limit(
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ''.join([ns.s, ns.s]) %}{% endfor %}{{ ns.s|length }}",
        );
        limit("{{ 'x'|replace('x', 'y' * 10000000)|replace('y', 'z' * 1000)|length }}");
        limit("{{ 'x'|indent(1000000000000) }}");
        limit("{{ '%999999999999s'|format('x')|length }}");
        limit("{{ '{:>999999999999}'.format('x')|length }}");
    }

    #[test]
    fn the_documented_limits_are_the_limits() {
        use clap::CommandFactory;
        let help = crate::cli::Cli::command().render_long_help().to_string();
        let l = Limits::default();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for want in [
            format!("{} instructions and {} MiB", l.fuel, l.max_bytes >> 20),
            format!("at most {} items", l.max_items),
            format!("nesting {} deep", l.recursion),
        ] {
            assert!(help.contains(&want), "{want}: {help}");
        }
        let readme = include_str!("../../README.md");
        for n in ["5,000,000", "64 MiB", "1,000,000", "| 100 |"] {
            assert!(readme.contains(n), "README lacks {n}");
        }
    }

    #[test]
    fn strftime_now_with_a_bad_format_is_an_error_not_a_panic() {
        assert!(matches!(
            user("{{ strftime_now('%Q') }}", "x"),
            Err(ChatError::Render(_))
        ));
    }
}
