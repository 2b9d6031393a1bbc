//! Building the model input (chat.md): render the GGUF's Jinja chat template with minijinja
//! (plus Python-compatible string methods) or tokenise the raw prompt.

use minijinja::{Environment, ErrorKind, Value, context};

/// The prompt as resolved for one call: user text, system prompt, whether the model's chat
/// template wraps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptSpec {
    pub prompt: String,
    pub system: String,
    pub chat_template: bool,
}

/// The default system prompt of the original demo.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// A chat template that could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the model's chat template does not render: {0}")]
    Render(String),
}

impl ChatError {
    /// How to fix it.
    pub fn hint(&self) -> Option<String> {
        Some("pass --no-chat-template to feed the prompt as plain text".into())
    }

    /// Bad input (exit 2): the template comes with the user's model.
    pub fn is_input(&self) -> bool {
        true
    }
}

/// Inputs of a chat rendering.
pub struct ChatInput<'a> {
    pub template: &'a str,
    /// Empty = no system message.
    pub system: &'a str,
    pub prompt: &'a str,
    pub bos_token: &'a str,
    pub eos_token: &'a str,
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

/// Render the conversation `[system?, user]` with `add_generation_prompt = true`, as Hugging
/// Face's `apply_chat_template` does.
pub fn render(input: &ChatInput<'_>) -> Result<String, ChatError> {
    let mut env = Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |fmt: String| {
        chrono::Local::now().format(&fmt).to_string()
    });
    env.set_trim_blocks(false);
    env.set_lstrip_blocks(false);
    env.add_template("chat", input.template)
        .map_err(|e| ChatError::Render(describe(&e)))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| ChatError::Render(describe(&e)))?;
    let mut messages = Vec::new();
    if !input.system.is_empty() {
        messages.push(context! { role => "system", content => input.system });
    }
    messages.push(context! { role => "user", content => input.prompt });
    tmpl.render(context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => input.bos_token,
        eos_token => input.eos_token,
    })
    .map_err(|e| ChatError::Render(describe(&e)))
}

impl crate::error::Diagnose for ChatError {
    fn is_input(&self) -> bool {
        ChatError::is_input(self)
    }
    fn hint(&self) -> Option<String> {
        ChatError::hint(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn input<'a>(template: &'a str, system: &'a str) -> ChatInput<'a> {
        ChatInput {
            template,
            system,
            prompt: "The capital of France is",
            bos_token: "<|im_start|>",
            eos_token: "<|im_end|>",
        }
    }

    #[test]
    fn chatml_known_answer() {
        let out = render(&input(CHATML, DEFAULT_SYSTEM)).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nThe capital of France is<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn empty_system_omits_the_message() {
        let out = render(&input(CHATML, "")).unwrap();
        assert!(out.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
    }

    #[test]
    fn python_string_methods_work() {
        let t = "{{ messages[0]['content'].strip().upper() }}{% if messages[0]['content'].startswith(' x') %}!{% endif %}";
        let mut i = input(t, "");
        i.prompt = " x y ";
        assert_eq!(render(&i).unwrap(), "X Y!");
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let t = "{{ raise_exception('roles must alternate') }}";
        let err = render(&input(t, "")).unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = render(&input("{% for %}", "")).unwrap_err();
        assert!(matches!(err, ChatError::Render(_)));
    }
}
