//! The HTTP routes: each reads its body, checks it, and queues a job for the model thread;
//! answers stream as server-sent events (OpenAI) or NDJSON (Ollama), or come whole. What
//! both APIs share is here; each API's own shapes are in [`openai`] and [`ollama`].

mod ollama;
mod openai;

use super::metrics::Metrics;
use super::scheduler::{Event, Finish, Job, Limits, TokenLogprob};
use super::tools::{self, CallReader, ToolCall, ToolUse};
use super::wire::{self, ApiError, Settings};
use super::{ModelInfo, ServeConfig};
use crate::chat::{ChatTemplate, Message, RenderOptions};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ollama::{ollama_chat, ollama_generate, ollama_show, ollama_tags};
use openai::{chat_completions, completions, models};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    config: ServeConfig,
    info: Arc<ModelInfo>,
    limits: Limits,
    metrics: Arc<Metrics>,
    jobs: SyncSender<Job>,
    next_id: AtomicU64,
    started: SystemTime,
}

impl AppState {
    pub fn new(
        config: ServeConfig,
        info: Arc<ModelInfo>,
        limits: Limits,
        metrics: Arc<Metrics>,
        jobs: SyncSender<Job>,
    ) -> Self {
        Self(Arc::new(Shared {
            config,
            info,
            limits,
            metrics,
            jobs,
            next_id: AtomicU64::new(1),
            started: SystemTime::now(),
        }))
    }
}

pub fn router(state: AppState) -> Router {
    let max_body = state.0.config.max_body;
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/api/chat", post(ollama_chat))
        .route("/api/generate", post(ollama_generate))
        .route("/api/tags", get(ollama_tags))
        .route("/api/show", post(ollama_show))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        json_response(status, &self.body())
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Every route here but /health needs `Authorization: Bearer <--api-key>` when one is set.
async fn authorize(State(s): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = &s.0.config.api_key else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| same_secret(g.as_bytes(), key.as_bytes())) {
        return next.run(request).await;
    }
    Metrics::add(&s.0.metrics.invalid, 1);
    let message = "a valid API key is required: Authorization: Bearer <key>".to_string();
    ApiError::new(401, "authentication_error", "invalid_api_key", message).into_response()
}

/// Compares without stopping at the first difference, so that timing tells nothing.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        404,
        "invalid_request_error",
        "not_found",
        format!("no route {} {}", request.method(), request.uri().path()),
    )
}

/// 200 while the model's thread serves, else 503.
async fn health(State(s): State<AppState>) -> Response {
    match s.0.metrics.model_up.load(Ordering::Relaxed) {
        true => json_response(StatusCode::OK, &json!({"status": "ok"})),
        false => {
            let body = json!({"status": "error", "error": "the model's thread has stopped"});
            json_response(StatusCode::SERVICE_UNAVAILABLE, &body)
        }
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut response = s.0.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// The body as a JSON object; an oversized or unreadable body is refused with its status.
fn body_json(
    s: &Shared,
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<Value, ApiError> {
    let bytes = body.map_err(|r| {
        let status = r.status().as_u16();
        let code = match status {
            413 => "body_too_large",
            _ => "invalid_body",
        };
        let message = format!(
            "{what}: {} (the limit is {} bytes)",
            r.body_text(),
            s.config.max_body
        );
        ApiError::new(status, "invalid_request_error", code, message)
    })?;
    wire::json_body(&bytes, what)
}

/// Checks that a request names the model served (or none, where the API allows).
fn check_model(s: &Shared, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != s.info.name => Err(ApiError::new(
            404,
            "invalid_request_error",
            "model_not_found",
            format!(
                "model '{m}' is not served here (this server serves '{}')",
                s.info.name
            ),
        )
        .with_param("model")),
        _ => Ok(()),
    }
}

/// The model's chat template, which the chat routes need.
fn chat_template(s: &Shared) -> Result<&ChatTemplate, ApiError> {
    s.info.template.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "no_chat_template",
            format!(
                "model '{}' has no chat template: use /v1/completions",
                s.info.name
            ),
        )
    })
}

/// The tools a chat request offers, for this model's template.
fn tool_use(
    s: &Shared,
    tools: Option<&[Value]>,
    tool_choice: Option<&Value>,
) -> Result<Option<ToolUse>, ApiError> {
    match tools.is_some_and(|t| !t.is_empty()) {
        true => ToolUse::new(tools, tool_choice, chat_template(s)?.source()),
        false => Ok(None),
    }
}

/// Messages (and tools) → prompt text through the model's chat template.
fn render_chat(
    s: &Shared,
    messages: &[wire::WireMessage],
    tools: Option<&ToolUse>,
) -> Result<String, ApiError> {
    let template = chat_template(s)?;
    if messages.is_empty() {
        return Err(
            ApiError::bad_request("invalid_request", "messages is empty").with_param("messages"),
        );
    }
    let messages = messages
        .iter()
        .map(|m| {
            let content = m.content.as_ref().map(|c| c.text()).transpose()?;
            let mut message = Message::new(&m.role, content.unwrap_or_default());
            if let Some(calls) = &m.tool_calls {
                message = message.with("tool_calls", tools::template_calls(calls));
            }
            if let Some(id) = &m.tool_call_id {
                message = message.with("tool_call_id", json!(id));
            }
            if let Some(name) = &m.name {
                message = message.with("name", json!(name));
            }
            Ok(message)
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut options = RenderOptions::new(true);
    if let Some(t) = tools {
        options = options.set("tools", &t.tools);
    }
    let prompt = template.render_with(&messages, &options).map_err(|e| {
        ApiError::bad_request("invalid_messages", e.to_string()).with_param("messages")
    })?;
    Ok(prompt + tools.map_or("", |t| &t.prompt_suffix))
}

/// A required tool call holds the answer to the call's JSON, which leaves no room for a
/// `response_format` of the request's own.
fn tool_grammar(settings: &mut Settings, tools: Option<&ToolUse>) -> Result<(), ApiError> {
    let Some(grammar) = tools.and_then(|t| t.grammar.clone()) else {
        return Ok(());
    };
    if settings.grammar.is_some() {
        return Err(ApiError::bad_request(
            "unsupported_value",
            "a required tool call cannot be combined with a JSON response format",
        )
        .with_param("response_format"));
    }
    settings.grammar = Some(grammar);
    Ok(())
}

/// Prompt text → tokens (BOS first where the vocabulary wants one), within one slot's context.
fn tokenize(s: &Shared, text: &str) -> Result<Vec<u32>, ApiError> {
    let tokenizer = &s.info.tokenizer;
    let mut tokens = tokenizer
        .encode(text, true)
        .map_err(|e| ApiError::bad_request("invalid_prompt", e.to_string()))?;
    if let Some(bos) = tokenizer.prompt_bos() {
        if tokens.first() != Some(&bos) {
            tokens.insert(0, bos);
        }
    }
    if tokens.is_empty() {
        return Err(
            ApiError::bad_request("invalid_prompt", "the prompt is empty").with_param("prompt"),
        );
    }
    let n_ctx = s.limits.n_ctx;
    if tokens.len() >= n_ctx {
        return Err(ApiError::bad_request(
            "context_length_exceeded",
            format!("the prompt has {} tokens; a request's context holds {n_ctx} (--ctx-size), with room for the answer", tokens.len()),
        ));
    }
    Ok(tokens)
}

/// Queues `n` answers to each prompt, answer j sampled with the seed plus j; if the queue
/// cannot take them all, none is kept (the receivers dropped cancel those queued).
fn submit_choices(
    s: &Shared,
    prompts: &[Vec<u32>],
    settings: &Settings,
    n: usize,
) -> Result<Vec<UnboundedReceiver<Event>>, ApiError> {
    let answers = prompts.iter().flat_map(|p| (0..n).map(move |j| (p, j)));
    answers
        .map(|(prompt, j)| {
            let mut settings = settings.clone();
            settings.sampler.seed = settings.sampler.seed.wrapping_add(j as u64);
            submit(s, prompt.clone(), settings)
        })
        .collect()
}

/// The events of several answers as one stream of (answer, event); each answer's events end
/// at its last, and all end as soon as the stream's reader goes (a client that went away).
fn merge(answers: Vec<UnboundedReceiver<Event>>) -> UnboundedReceiver<(usize, Event)> {
    let (merged, receiver) = unbounded_channel();
    for (index, mut events) in answers.into_iter().enumerate() {
        let merged = merged.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    () = merged.closed() => return,
                };
                let event =
                    event.unwrap_or_else(|| Event::Failed("the model thread stopped".into()));
                let last = !matches!(event, Event::Text(..));
                if merged.send((index, event)).is_err() || last {
                    return;
                }
            }
        });
    }
    receiver
}

/// Queues the job; a full queue is a 503 with Retry-After.
fn submit(
    s: &Shared,
    prompt: Vec<u32>,
    settings: Settings,
) -> Result<UnboundedReceiver<Event>, ApiError> {
    let (events, receiver) = unbounded_channel();
    let job = Job {
        prompt,
        settings,
        events,
        arrived: Instant::now(),
    };
    // Counted before sending, so that the model thread never takes it below zero.
    s.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
    match s.jobs.try_send(job) {
        Ok(()) => {
            Metrics::add(&s.metrics.requests, 1);
            Ok(receiver)
        }
        Err(e) => {
            s.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            Metrics::add(&s.metrics.rejected, 1);
            let message = match e {
                TrySendError::Full(_) => "the server is busy: the queue is full, retry later",
                TrySendError::Disconnected(_) => "the server is shutting down",
            };
            Err(ApiError::new(
                503,
                "server_error",
                "overloaded",
                message.into(),
            ))
        }
    }
}

/// Runs `f` (parsing, templating and tokenizing, work that grows with the body) on a thread
/// of its own, not on the async workers.
async fn prepare<T: Send + 'static>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    f: fn(&Shared, Result<Bytes, BytesRejection>) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state.0, body))
        .await
        .unwrap_or_else(|e| {
            Err(ApiError::new(
                500,
                "server_error",
                "internal_error",
                e.to_string(),
            ))
        })
}

/// A whole answer: its text, its tokens' log-probabilities where asked, and how it ended.
async fn collect(
    mut events: UnboundedReceiver<Event>,
) -> Result<(String, Vec<TokenLogprob>, Finish), ApiError> {
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(t, lp) => {
                text.push_str(&t);
                logprobs.extend(lp);
            }
            Event::Done(finish) => return Ok((text, logprobs, finish)),
            Event::Failed(why) => return Err(model_error(why)),
        }
    }
    Err(model_error("the model thread stopped".into()))
}

/// The answer's content and calls, where the request offered tools.
fn read_calls(reader: Option<CallReader>, text: String) -> (String, Vec<ToolCall>) {
    let Some(mut reader) = reader else {
        return (text, Vec::new());
    };
    let mut content = reader.push(&text);
    let (rest, calls) = reader.finish();
    content.push_str(&rest);
    match calls.is_empty() {
        true => (content, calls),
        false => (content.trim().to_string(), calls),
    }
}

/// "tool_calls" where the answer made calls, else why the generation stopped.
fn finish_reason(finish: &Finish, calls: &[ToolCall]) -> &'static str {
    match calls.is_empty() {
        true => finish.reason.name(),
        false => "tool_calls",
    }
}

fn model_error(message: String) -> ApiError {
    ApiError::new(500, "server_error", "model_error", message)
}

/// A streamed answer: each event of each choice ([`merge`]) becomes the bytes `frame` writes
/// for it, until the end.
fn stream(
    events: UnboundedReceiver<(usize, Event)>,
    first: Option<Bytes>,
    frame: impl FnMut((usize, Event)) -> (Bytes, bool) + Send + 'static,
    content_type: &'static str,
) -> Response {
    let head = futures_util::stream::iter(first.map(Ok::<_, std::convert::Infallible>));
    let body = futures_util::stream::unfold(Some((events, frame)), |state| async move {
        let (mut events, mut frame) = state?;
        let event = events.recv().await.unwrap_or_else(|| {
            let lost = Event::Failed("the model thread stopped".into());
            (0, lost)
        });
        let (bytes, last) = frame(event);
        let next = (!last).then_some((events, frame));
        Some((Ok(bytes), next))
    });
    use futures_util::StreamExt;
    let mut response = Body::from_stream(head.chain(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn unix(t: SystemTime) -> std::time::Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn ndjson(value: &Value) -> Bytes {
    Bytes::from(format!("{value}\n"))
}

/// A 4xx for a request that could not be queued, counted.
fn refuse(s: &Shared, e: ApiError) -> Response {
    if (400..500).contains(&e.status) {
        Metrics::add(&s.metrics.invalid, 1);
    }
    e.into_response()
}

/// A 503 that tells the client when to come back.
fn busy(e: ApiError) -> Response {
    let mut response = e.into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn clock_seed() -> u64 {
    unix(SystemTime::now()).as_nanos() as u64
}
