//! The JSON of the OpenAI and Ollama APIs: requests as serde reads them (a field of the wrong
//! type is a 400 naming it), the generation settings they share, and error bodies.

use super::grammar::Schema;
use crate::sampling::{SamplerConfig, Setting};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// An error answered to a client: its HTTP status and an OpenAI-style body
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: &'static str,
    pub param: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            kind: "invalid_request_error",
            code,
            param: None,
            message: message.into(),
        }
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn new(status: u16, kind: &'static str, code: &'static str, message: String) -> Self {
        Self {
            status,
            kind,
            code,
            param: None,
            message,
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// `messages[i].content`: a string, or OpenAI's list of parts of which the text ones count.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    pub fn text(&self) -> Result<String, ApiError> {
        match self {
            Self::Text(t) => Ok(t.clone()),
            Self::Parts(parts) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.as_str()),
                    (kind, _) => Err(ApiError::bad_request(
                        "unsupported_content",
                        format!("content parts of type '{kind}' are not supported (only text)"),
                    )
                    .with_param("messages")),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct WireMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant turn's calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<Value>>,
    /// A tool result's call (OpenAI) and function (`name`, or Ollama's `tool_name`).
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default, alias = "tool_name")]
    pub name: Option<String>,
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<WireMessage>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// `prompt` of `/v1/completions`: a string, or a list of one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// The generation settings of OpenAI's requests, read from the same body.
#[derive(Debug, Default, Deserialize)]
pub struct OpenAiParams {
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub n: Option<u32>,
    pub response_format: Option<ResponseFormat>,
}

/// `response_format`: free text, any JSON object, or a value of a JSON schema.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Deserialize)]
pub struct JsonSchemaFormat {
    #[serde(default)]
    pub schema: Option<Value>,
}

impl ResponseFormat {
    fn schema(&self) -> Result<Option<Arc<Schema>>, ApiError> {
        match self {
            Self::Text => Ok(None),
            Self::JsonObject => Ok(Some(Schema::any_object())),
            Self::JsonSchema { json_schema } => match &json_schema.schema {
                Some(schema) => compile(schema, "response_format").map(Some),
                None => Ok(Some(Schema::any_object())),
            },
        }
    }
}

fn compile(schema: &Value, param: &str) -> Result<Arc<Schema>, ApiError> {
    Schema::compile(schema)
        .map_err(|e| ApiError::bad_request("invalid_schema", e.to_string()).with_param(param))
}

/// Ollama's `format`: `"json"` for any JSON object, or a JSON schema.
pub fn ollama_format(format: Option<&Value>) -> Result<Option<Arc<Schema>>, ApiError> {
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(Schema::any_object())),
        Some(schema @ Value::Object(_)) => compile(schema, "format").map(Some),
        Some(other) => Err(ApiError::bad_request(
            "invalid_value",
            format!("format must be \"json\" or a JSON schema, not {other}"),
        )
        .with_param("format")),
    }
}

/// Most answers one request may ask for (`n`): each takes a slot.
pub const MAX_CHOICES: u32 = 16;

/// Most alternatives a request may ask for at each token, as OpenAI allows.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// `logprobs` of `/v1/chat/completions`: whether to return them, and how many alternatives.
#[derive(Debug, Default, Deserialize)]
pub struct ChatLogprobs {
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<usize>,
}

impl ChatLogprobs {
    pub fn top(&self) -> Result<Option<usize>, ApiError> {
        match (self.logprobs, self.top_logprobs) {
            (_, Some(n)) if n > MAX_TOP_LOGPROBS => Err(ApiError::bad_request(
                "invalid_value",
                format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {n}"),
            )
            .with_param("top_logprobs")),
            (false, Some(_)) => Err(ApiError::bad_request(
                "invalid_value",
                "top_logprobs needs logprobs: true",
            )
            .with_param("top_logprobs")),
            (true, n) => Ok(Some(n.unwrap_or(0))),
            (false, None) => Ok(None),
        }
    }
}

/// `logprobs` of `/v1/completions`: how many alternatives (up to 5) beside each token.
#[derive(Debug, Default, Deserialize)]
pub struct CompletionLogprobs {
    pub logprobs: Option<usize>,
}

impl CompletionLogprobs {
    pub fn top(&self) -> Result<Option<usize>, ApiError> {
        match self.logprobs {
            Some(n) if n > 5 => Err(ApiError::bad_request(
                "invalid_value",
                format!("logprobs must be at most 5, got {n}"),
            )
            .with_param("logprobs")),
            n => Ok(n),
        }
    }
}

/// `options` of Ollama's requests.
#[derive(Debug, Default, Deserialize)]
pub struct OllamaOptions {
    pub num_predict: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Vec<String>>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<usize>,
}

/// `POST /api/chat`.
#[derive(Debug, Deserialize)]
pub struct OllamaChat {
    pub model: String,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub format: Option<Value>,
    #[serde(default)]
    pub messages: Vec<WireMessage>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Option<OllamaOptions>,
}

/// `POST /api/generate`.
#[derive(Debug, Deserialize)]
pub struct OllamaGenerate {
    pub model: String,
    #[serde(default)]
    pub format: Option<Value>,
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub raw: bool,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Option<OllamaOptions>,
}

/// `POST /api/show`.
#[derive(Debug, Deserialize)]
pub struct OllamaShow {
    #[serde(alias = "name")]
    pub model: String,
}

/// What a request asks of the generation, whichever API it came through.
#[derive(Clone, Debug)]
pub struct Settings {
    pub sampler: SamplerConfig,
    /// None: until the context is full.
    pub max_tokens: Option<usize>,
    pub stops: Vec<String>,
    /// The log-probability of each token, with this many alternatives; None: not asked.
    pub logprobs: Option<usize>,
    /// The schema the answer must be a JSON value of.
    pub grammar: Option<Arc<Schema>>,
    /// Control tokens come out as their text (Mistral's tool calls are made of them).
    pub show_special: bool,
}

impl OpenAiParams {
    /// How many answers (`n`) the request asks for.
    pub fn choices(&self) -> Result<usize, ApiError> {
        match self.n {
            None => Ok(1),
            Some(n @ 1..=MAX_CHOICES) => Ok(n as usize),
            Some(n) => Err(ApiError::bad_request(
                "invalid_value",
                format!("n must be from 1 to {MAX_CHOICES}, got {n}"),
            )
            .with_param("n")),
        }
    }

    pub fn settings(self, n_vocab: usize, seed: u64) -> Result<Settings, ApiError> {
        let mut sampler = base_sampler(seed);
        set(&mut sampler.temperature, self.temperature);
        set(&mut sampler.top_p, self.top_p);
        set(&mut sampler.top_k, self.top_k.map(|k| k as usize));
        set(&mut sampler.min_p, self.min_p);
        set(&mut sampler.seed, self.seed);
        set(&mut sampler.presence_penalty, self.presence_penalty);
        set(&mut sampler.frequency_penalty, self.frequency_penalty);
        set(&mut sampler.repeat_penalty, self.repeat_penalty);
        sampler.logit_bias = logit_bias(self.logit_bias.unwrap_or_default(), n_vocab)?;
        validate(&sampler)?;
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if max_tokens == Some(0) {
            return Err(
                ApiError::bad_request("invalid_value", "max_tokens must be at least 1")
                    .with_param("max_tokens"),
            );
        }
        let grammar = match &self.response_format {
            Some(format) => format.schema()?,
            None => None,
        };
        Ok(Settings {
            sampler,
            max_tokens: max_tokens.map(|n| n as usize),
            stops: self.stop.map(Stop::into_vec).unwrap_or_default(),
            logprobs: None,
            grammar,
            show_special: false,
        })
    }
}

impl OllamaOptions {
    pub fn settings(self, seed: u64) -> Result<Settings, ApiError> {
        let mut sampler = base_sampler(seed);
        set(&mut sampler.temperature, self.temperature);
        set(&mut sampler.top_p, self.top_p);
        set(&mut sampler.top_k, self.top_k.map(|k| k as usize));
        set(&mut sampler.min_p, self.min_p);
        set(&mut sampler.seed, self.seed);
        set(&mut sampler.presence_penalty, self.presence_penalty);
        set(&mut sampler.frequency_penalty, self.frequency_penalty);
        set(&mut sampler.repeat_penalty, self.repeat_penalty);
        set(&mut sampler.repeat_last_n, self.repeat_last_n);
        validate(&sampler)?;
        if self.num_predict == Some(0) {
            return Err(
                ApiError::bad_request("invalid_value", "num_predict must not be 0")
                    .with_param("num_predict"),
            );
        }
        Ok(Settings {
            sampler,
            // Ollama: -1 (or any negative) generates until the context is full.
            max_tokens: self.num_predict.and_then(|n| usize::try_from(n).ok()),
            stops: self.stop.unwrap_or_default(),
            logprobs: None,
            grammar: None,
            show_special: false,
        })
    }
}

/// llama-server's defaults for what a request leaves out.
fn base_sampler(seed: u64) -> SamplerConfig {
    SamplerConfig {
        seed,
        ..SamplerConfig::default()
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// `{"token id": bias}` as the sampler takes it; an id outside the vocabulary is an error.
fn logit_bias(map: HashMap<String, f32>, n_vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let mut biases: Vec<(u32, f32)> = map
        .into_iter()
        .map(|(id, bias)| match id.parse::<u32>() {
            Ok(t) if (t as usize) < n_vocab && !bias.is_nan() => Ok((t, bias)),
            _ => Err(ApiError::bad_request(
                "invalid_logit_bias",
                format!("logit_bias: '{id}' is not a token id below {n_vocab} with a number"),
            )
            .with_param("logit_bias")),
        })
        .collect::<Result<_, _>>()?;
    biases.sort_by_key(|b| b.0);
    Ok(biases)
}

fn validate(sampler: &SamplerConfig) -> Result<(), ApiError> {
    sampler.validate().map_err(|e| {
        let param = match e.setting {
            Setting::Temperature => "temperature",
            Setting::TopP => "top_p",
            Setting::MinP => "min_p",
            Setting::RepeatPenalty => "repeat_penalty",
            Setting::FrequencyPenalty => "frequency_penalty",
            Setting::PresencePenalty => "presence_penalty",
            Setting::LogitBias => "logit_bias",
        };
        ApiError::bad_request(
            "invalid_value",
            format!("{param} must be {}, got {}", e.expected, e.value),
        )
        .with_param(param)
    })
}

/// A request body as `T`; malformed JSON or a field of the wrong type is a 400 saying where.
pub fn parse<T: serde::de::DeserializeOwned>(value: &Value, what: &str) -> Result<T, ApiError> {
    T::deserialize(value)
        .map_err(|e| ApiError::bad_request("invalid_request", format!("{what}: {e}")))
}

/// The body as JSON, which every route here takes as an object.
pub fn json_body(bytes: &[u8], what: &str) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("{what}: the body is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("{what}: the body must be a JSON object"),
        ));
    }
    Ok(value)
}

/// A time in seconds since 1970 as RFC 3339 in UTC, as Ollama writes `created_at`.
pub fn rfc3339(unix: std::time::Duration) -> String {
    let secs = unix.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        unix.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_writes_utc_dates() {
        let t = std::time::Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(
            rfc3339(std::time::Duration::ZERO),
            "1970-01-01T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339(std::time::Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn a_wrong_type_or_range_is_a_400_naming_the_field() {
        let body = json!({"temperature": "hot"});
        let err = parse::<OpenAiParams>(&body, "chat").unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.message.contains("invalid type"), "{}", err.message);
        let params: OpenAiParams = parse(&json!({"top_p": 2.0}), "chat").unwrap();
        let err = params.settings(100, 0).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("top_p"));
        let params: OpenAiParams = parse(&json!({"logit_bias": {"100": 1.0}}), "chat").unwrap();
        assert_eq!(
            params.settings(100, 0).unwrap_err().param.as_deref(),
            Some("logit_bias")
        );
        let params: OpenAiParams = parse(
            &json!({"logit_bias": {"7": -5}, "stop": "x", "max_tokens": 3}),
            "chat",
        )
        .unwrap();
        let s = params.settings(100, 0).unwrap();
        assert_eq!(s.sampler.logit_bias, [(7, -5.0)]);
        assert_eq!((s.stops, s.max_tokens), (vec!["x".to_string()], Some(3)));
    }
}
