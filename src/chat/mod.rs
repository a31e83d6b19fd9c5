//! Chat templates: turning a conversation into the prompt text a model was trained on.
//!
//! Models ship a Jinja template in `tokenizer.chat_template`, written for Hugging Face
//! transformers' Jinja2 environment. [`ChatTemplate`] renders it with minijinja set up to
//! behave like that environment (block trimming, `tojson`, `raise_exception`,
//! `strftime_now`, Python string/dict methods, Python-style printing of values), and falls
//! back to a [`BuiltinFormat`] when the file has no template.

mod builtin;
mod env;
mod json;
mod python;
mod time;

#[cfg(test)]
mod tests;

pub use builtin::BuiltinFormat;

use crate::gguf::{GgufError, GgufFile};
use minijinja::value::Value;
use minijinja::{Environment, Error};
use std::fmt;
use std::path::PathBuf;

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant` (or whatever other role a template knows).
    pub role: String,
    pub content: String,
    /// Further keys templates read from a message, in order: an assistant turn's
    /// `tool_calls`, a tool result's `tool_call_id` or `name`.
    pub fields: Vec<(String, serde_json::Value)>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            fields: Vec::new(),
        }
    }

    /// The message with key `name` set to `value` as well.
    pub fn with(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
        self.fields.push((name.into(), value));
        self
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("chat template '{template}'{}: {message}", at_line(*.line))]
    Syntax {
        template: String,
        line: Option<usize>,
        message: String,
    },
    #[error("chat template '{template}' failed to render{}: {message}", at_line(*.line))]
    Render {
        template: String,
        line: Option<usize>,
        message: String,
    },
    /// The template called `raise_exception(message)`, typically to refuse a conversation
    /// it cannot format (say, roles that do not alternate).
    #[error("chat template '{template}' raised an exception{}: {message}", at_line(*.line))]
    Raised {
        template: String,
        line: Option<usize>,
        message: String,
    },
    #[error(
        "{path}: no tokenizer.chat_template, and no built-in chat format for architecture \
         '{architecture}'"
    )]
    NoTemplate { path: PathBuf, architecture: String },
    #[error(
        "{path}: metadata key '{key}' is token id {id}, but the vocabulary has {n_tokens} tokens"
    )]
    TokenId {
        path: PathBuf,
        key: String,
        id: u64,
        n_tokens: usize,
    },
    #[error("template variable '{name}': invalid JSON: {source}")]
    Json {
        name: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

/// What a template is given besides the messages.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// End the prompt with the opening of an assistant turn.
    pub add_generation_prompt: bool,
    /// Further template variables: `tools`, `documents`, Qwen3's `enable_thinking`...
    /// Variables not set are undefined in the template, as transformers leaves them.
    vars: Vec<(String, Value)>,
}

impl RenderOptions {
    pub fn new(add_generation_prompt: bool) -> Self {
        Self {
            add_generation_prompt,
            vars: Vec::new(),
        }
    }

    /// Sets the template variable `name` to the value written as JSON in `json`; objects
    /// keep their keys in the order written, since templates print them back out with
    /// `tojson`.
    pub fn set_json(mut self, name: &str, json: &str) -> Result<Self, ChatError> {
        let value = serde_json::from_str(json).map_err(|source| ChatError::Json {
            name: name.into(),
            source,
        })?;
        self.vars.push((name.into(), value));
        Ok(self)
    }

    /// Sets the template variable `name` to `value`.
    pub fn set(mut self, name: &str, value: &serde_json::Value) -> Self {
        self.vars.push((name.into(), Value::from_serialize(value)));
        self
    }
}

/// A compiled chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    name: String,
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    builtin: Option<BuiltinFormat>,
    source: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("builtin", &self.builtin)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The file's `tokenizer.chat_template`, or the [`BuiltinFormat`] its vocabulary and
    /// architecture call for; `bos_token`/`eos_token` are the file's special tokens.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ChatError> {
        let bos_token = special_token(file, "tokenizer.ggml.bos_token_id")?;
        let eos_token = special_token(file, "tokenizer.ggml.eos_token_id")?;
        let key = "tokenizer.chat_template";
        if file.get(key).is_some() {
            let name = format!("{}: {key}", file.path().display());
            return Self::from_named_source(name, file.str(key)?, bos_token, eos_token);
        }
        let format = BuiltinFormat::for_file(file)?;
        let name = format!("built-in {}", format.name());
        let mut template = Self::from_named_source(name, format.source(), bos_token, eos_token)?;
        template.builtin = Some(format);
        Ok(template)
    }

    /// Compiles `source`; errors call it "chat_template".
    pub fn from_source(
        source: &str,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, ChatError> {
        Self::from_named_source("chat_template", source, bos_token, eos_token)
    }

    /// Compiles `source`; `name` stands for the template in errors (a file name, say).
    pub fn from_named_source(
        name: impl Into<String>,
        source: &str,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, ChatError> {
        let name = name.into();
        let mut env = env::environment();
        env.add_template_owned(name.clone(), env::replace_generation_tags(source))
            .map_err(|err| ChatError::Syntax {
                template: name.clone(),
                line: err.line(),
                message: describe(&err),
            })?;
        Ok(Self {
            name,
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            builtin: None,
            source: source.to_string(),
        })
    }

    /// The name errors use for this template.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The built-in format in use when the file had no template of its own.
    pub fn builtin_format(&self) -> Option<BuiltinFormat> {
        self.builtin
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether this is one of vibrant's built-in formats rather than the file's template.
    pub fn is_builtin_fallback(&self) -> bool {
        self.builtin.is_some()
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// The prompt for `messages`, ending with an open assistant turn when
    /// `add_generation_prompt` is set.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.render_with(messages, &RenderOptions::new(add_generation_prompt))
    }

    pub fn render_with(
        &self,
        messages: &[Message],
        options: &RenderOptions,
    ) -> Result<String, ChatError> {
        let template = self
            .env
            .get_template(&self.name)
            .map_err(|err| self.render_error(&err))?;
        template
            .render(self.context(messages, options))
            .map_err(|err| self.render_error(&err))
    }

    fn context(&self, messages: &[Message], options: &RenderOptions) -> Value {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let fields = m
                    .fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), Value::from_serialize(v)));
                Value::from_iter(
                    [
                        ("role", Value::from(m.role.as_str())),
                        ("content", Value::from(m.content.as_str())),
                    ]
                    .into_iter()
                    .chain(fields),
                )
            })
            .collect();
        let mut vars: Vec<(String, Value)> = vec![
            ("messages".into(), Value::from(messages)),
            (
                "add_generation_prompt".into(),
                Value::from(options.add_generation_prompt),
            ),
            ("bos_token".into(), Value::from(self.bos_token.as_str())),
            ("eos_token".into(), Value::from(self.eos_token.as_str())),
        ];
        vars.extend(options.vars.iter().cloned());
        Value::from_iter(vars)
    }

    fn render_error(&self, err: &Error) -> ChatError {
        let template = self.name.clone();
        let line = err.line();
        match env::raised_message(err) {
            Some(message) => ChatError::Raised {
                template,
                line,
                message,
            },
            None => ChatError::Render {
                template,
                line,
                message: describe(err),
            },
        }
    }
}

/// The text of a special token named by its id under `key`; empty when the file names none.
fn special_token(file: &GgufFile, key: &str) -> Result<String, ChatError> {
    if file.get(key).is_none() {
        return Ok(String::new());
    }
    let id = file.u64(key)?;
    let tokens = file.array("tokenizer.ggml.tokens")?;
    let token = usize::try_from(id).ok().and_then(|i| tokens.get(i));
    let Some(token) = token else {
        return Err(ChatError::TokenId {
            path: file.path().to_path_buf(),
            key: key.into(),
            id,
            n_tokens: tokens.len(),
        });
    };
    Ok(token
        .as_str()
        .ok_or_else(|| GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: "tokenizer.ggml.tokens".into(),
            what: format!("should hold strings, found {token} at index {id}"),
        })?
        .to_string())
}

/// "kind: detail" of a minijinja error, with the errors it wraps, without its location
/// (the caller reports the line itself).
fn describe(err: &Error) -> String {
    let mut message = match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    };
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        message.push_str(&format!(" (caused by: {e})"));
        source = e.source();
    }
    message
}
