//! Built-in templates for GGUF files that carry no `tokenizer.chat_template`, chosen by the
//! special tokens the vocabulary has and by the architecture.

use super::ChatError;
use crate::gguf::GgufFile;

/// A prompt format vibrant knows without the file telling it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltinFormat {
    /// `<|im_start|>role\n…<|im_end|>\n` (Qwen2, SmolLM and other ChatML models).
    ChatMl,
    /// `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>` (Llama 3.x).
    Llama3,
    /// `[INST] … [/INST]` with `<<SYS>>` system blocks (Llama 2, Mistral).
    Llama2,
}

impl BuiltinFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::ChatMl => "ChatML",
            Self::Llama3 => "Llama 3",
            Self::Llama2 => "Llama 2 [INST]",
        }
    }

    pub(super) fn source(self) -> &'static str {
        match self {
            Self::ChatMl => CHATML,
            Self::Llama3 => LLAMA3,
            Self::Llama2 => LLAMA2,
        }
    }

    /// The format for a file without a template: by the vocabulary's special tokens, then
    /// by `general.architecture`.
    pub(super) fn for_file(file: &GgufFile) -> Result<Self, ChatError> {
        let has_token = |token: &str| {
            file.get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .is_some_and(|tokens| tokens.iter().any(|t| t.as_str() == Some(token)))
        };
        if has_token("<|im_start|>") {
            return Ok(Self::ChatMl);
        }
        if has_token("<|start_header_id|>") {
            return Ok(Self::Llama3);
        }
        match file.str_opt("general.architecture") {
            Some("llama") => Ok(Self::Llama2),
            architecture => Err(ChatError::NoTemplate {
                path: file.path().to_path_buf(),
                architecture: architecture.unwrap_or("(none)").to_string(),
            }),
        }
    }
}

const CHATML: &str = "\
{%- for message in messages %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- endif %}";

const LLAMA3: &str = "\
{{- bos_token }}
{%- for message in messages %}
{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}";

// The system message goes inside the first user turn; the prompt already ends in
// `[/INST]`, where the answer starts, so there is no separate generation prompt.
const LLAMA2: &str = "\
{%- if messages and messages[0].role == 'system' %}
{%- set system_message = messages[0].content | trim %}
{%- set messages = messages[1:] %}
{%- endif %}
{%- for message in messages %}
{%- set content = message.content | trim %}
{%- if loop.first and system_message is defined %}
{%- set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + content %}
{%- endif %}
{%- if message.role == 'user' %}
{{- bos_token + '[INST] ' + content + ' [/INST]' }}
{%- elif message.role == 'assistant' %}
{{- ' ' + content + ' ' + eos_token }}
{%- endif %}
{%- endfor %}";
