//! Chat formatting with the model's own Jinja template (from GGUF metadata or
//! `tokenizer_config.json`), rendered with minijinja the way transformers'
//! `apply_chat_template` renders it with Jinja2.

use minijinja::value::Serde;
use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

use crate::error::{ModelError, Result};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A user turn.
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: "user".to_string(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the special-token strings templates may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source_name: String,
    bos_token: String,
    eos_token: String,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `template`; `source_name` names where it came from in errors. `bos_token` and
    /// `eos_token` are the strings templates see as `bos_token` and `eos_token`.
    pub fn new(
        template: &str,
        source_name: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate> {
        let error = |e: Error| ModelError::ChatTemplate {
            source_name: source_name.to_string(),
            message: describe(&e),
        };
        let mut env = Environment::new();
        // transformers compiles templates with trim_blocks and lstrip_blocks; without them the
        // newlines after `{% ... %}` tags would end up in the prompt.
        let syntax = env
            .syntax()
            .to_builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(error)?;
        env.set_syntax(syntax);
        // Templates are Python-flavoured: `.strip()`, `.items()`, `.startswith()`, ...
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, template.to_string())
            .map_err(error)?;
        Ok(ChatTemplate {
            env,
            source_name: source_name.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The conversation as prompt text, ending with the assistant's turn header when
    /// `add_generation_prompt` is set.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let error = |e: Error| ModelError::ChatTemplate {
            source_name: self.source_name.clone(),
            message: describe(&e),
        };
        let template = self.env.get_template(TEMPLATE_NAME).map_err(error)?;
        template
            .render(context! {
                messages => Serde(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(error)
    }

    /// A single user turn followed by the assistant's turn header: the prompt for one
    /// instruction.
    pub fn render_user_prompt(&self, prompt: &str) -> Result<String> {
        self.render(&[ChatMessage::user(prompt)], true)
    }
}

/// minijinja's message with the template line, when it knows it.
fn describe(error: &Error) -> String {
    match error.line() {
        Some(line) => format!("{error} (template line {line})"),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}\
        {% if loop.first and messages[0]['role'] != 'system' %}\
        {{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}\
        {{'<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n'}}\
        {% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_with_system_default_and_generation_prompt() {
        let template = ChatTemplate::new(CHATML, "test", "<s>", "</s>").unwrap();
        let text = template.render_user_prompt("  Hi there ").unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn block_tags_do_not_leave_newlines_and_exceptions_surface() {
        let template = "{{ bos_token }}\n{% for m in messages %}\n  {{ m.content }}\n{% endfor %}";
        let rendered = ChatTemplate::new(template, "test", "<s>", "</s>")
            .unwrap()
            .render(&[ChatMessage::user("a"), ChatMessage::user("b")], false)
            .unwrap();
        assert_eq!(rendered, "<s>\n  a\n  b\n");
        let raising = "{{ raise_exception('roles must alternate') }}";
        let err = ChatTemplate::new(raising, "tokenizer_config.json", "", "")
            .unwrap()
            .render_user_prompt("x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("roles must alternate") && err.contains("tokenizer_config.json"),
            "{err}"
        );
        let broken = ChatTemplate::new("{% for %}", "broken.gguf", "", "").unwrap_err();
        assert!(broken.to_string().contains("broken.gguf"), "{broken}");
    }
}
