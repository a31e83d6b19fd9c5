//! The HTTP routes: each reads its body, checks it, and queues a job for the model thread;
//! answers stream as server-sent events (OpenAI) or NDJSON (Ollama), or come whole.

use super::metrics::Metrics;
use super::scheduler::{Event, Finish, Job, Limits, TokenLogprob};
use super::wire::{self, ApiError, Settings};
use super::{ModelInfo, ServeConfig};
use crate::chat::Message;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
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
    ApiError::status(401, "authentication_error", "invalid_api_key", message).into_response()
}

/// Compares without stopping at the first difference, so that timing tells nothing.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn not_found(request: Request) -> ApiError {
    ApiError::status(
        404,
        "invalid_request_error",
        "not_found",
        format!("no route {} {}", request.method(), request.uri().path()),
    )
}

async fn health() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut response = s.0.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

async fn models(State(s): State<AppState>) -> Response {
    let created = unix(s.0.started).as_secs();
    let body = json!({"object": "list", "data": [{
        "id": s.0.info.name, "object": "model", "created": created, "owned_by": "vibrant",
    }]});
    json_response(StatusCode::OK, &body)
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
        ApiError::status(status, "invalid_request_error", code, message)
    })?;
    wire::json_body(&bytes, what)
}

/// Checks that a request names the model served (or none, where the API allows).
fn check_model(s: &Shared, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != s.info.name => Err(ApiError::status(
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

/// Messages → prompt text through the model's chat template.
fn render_chat(s: &Shared, messages: &[wire::WireMessage]) -> Result<String, ApiError> {
    let Some(template) = &s.info.template else {
        return Err(ApiError::bad_request(
            "no_chat_template",
            format!(
                "model '{}' has no chat template: use /v1/completions",
                s.info.name
            ),
        ));
    };
    if messages.is_empty() {
        return Err(
            ApiError::bad_request("invalid_request", "messages is empty").with_param("messages"),
        );
    }
    let messages = messages
        .iter()
        .map(|m| {
            let content = m.content.as_ref().map(|c| c.text()).transpose()?;
            Ok(Message::new(&m.role, content.unwrap_or_default()))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    template.render(&messages, true).map_err(|e| {
        ApiError::bad_request("invalid_messages", e.to_string()).with_param("messages")
    })
}

/// Prompt text → tokens (BOS first where the vocabulary wants one), within one slot's context.
fn tokenize(s: &Shared, text: &str) -> Result<Vec<u32>, ApiError> {
    let tokenizer = &s.info.tokenizer;
    let mut tokens = tokenizer
        .encode(text, true)
        .map_err(|e| ApiError::bad_request("invalid_prompt", e.to_string()))?;
    if let (true, Some(bos)) = (tokenizer.add_bos(), tokenizer.bos_id()) {
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
            Err(ApiError::status(
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
            Err(ApiError::status(
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

fn model_error(message: String) -> ApiError {
    ApiError::status(500, "server_error", "model_error", message)
}

/// A streamed answer: each event becomes the bytes `frame` writes for it, until the end.
fn stream(
    events: UnboundedReceiver<Event>,
    first: Option<Bytes>,
    frame: impl FnMut(Event) -> (Bytes, bool) + Send + 'static,
    content_type: &'static str,
) -> Response {
    let head = futures_util::stream::iter(first.map(Ok::<_, std::convert::Infallible>));
    let body = futures_util::stream::unfold(Some((events, frame)), |state| async move {
        let (mut events, mut frame) = state?;
        let event = events
            .recv()
            .await
            .unwrap_or_else(|| Event::Failed("the model thread stopped".into()));
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

fn usage(f: &Finish) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn ndjson(value: &Value) -> Bytes {
    Bytes::from(format!("{value}\n"))
}

/// Which OpenAI route an answer is for: they differ in object names and where text goes.
#[derive(Clone, Copy)]
enum OpenAiKind {
    Chat,
    Completion,
}

impl OpenAiKind {
    fn object(self, stream: bool) -> &'static str {
        match (self, stream) {
            (Self::Chat, false) => "chat.completion",
            (Self::Chat, true) => "chat.completion.chunk",
            (Self::Completion, _) => "text_completion",
        }
    }

    fn choice(
        self,
        text: Option<&str>,
        finish: Option<&str>,
        stream: bool,
        logprobs: Value,
    ) -> Value {
        match (self, stream) {
            (Self::Chat, false) => {
                json!({"index": 0, "logprobs": logprobs, "finish_reason": finish,
                "message": {"role": "assistant", "content": text.unwrap_or("")}})
            }
            (Self::Chat, true) => {
                let delta = text.map_or(json!({}), |t| json!({"content": t}));
                json!({"index": 0, "logprobs": logprobs, "finish_reason": finish, "delta": delta})
            }
            (Self::Completion, _) => {
                json!({"index": 0, "logprobs": logprobs, "finish_reason": finish,
                "text": text.unwrap_or("")})
            }
        }
    }
}

/// Writes tokens' log-probabilities as each OpenAI route does: chat's `content` list of
/// entries, or completions' parallel lists with each token's offset in the answer.
struct LogprobWriter {
    kind: OpenAiKind,
    info: Arc<ModelInfo>,
    /// Whether the request asked: if not, `logprobs` is null.
    asked: bool,
    /// Bytes of answer text before the next token, for completions' `text_offset`.
    offset: usize,
}

impl LogprobWriter {
    fn token(&self, id: u32) -> (String, &[u8]) {
        let bytes = self.info.tokenizer.piece(id);
        (String::from_utf8_lossy(bytes).into_owned(), bytes)
    }

    fn json(&mut self, logprobs: &[TokenLogprob]) -> Value {
        if !self.asked {
            return Value::Null;
        }
        match self.kind {
            OpenAiKind::Chat => {
                let entry = |id: u32, logprob: f32| {
                    let (token, bytes) = self.token(id);
                    json!({"token": token, "logprob": logprob, "bytes": bytes})
                };
                let content: Vec<Value> = logprobs
                    .iter()
                    .map(|lp| {
                        let mut e = entry(lp.token, lp.logprob);
                        e["top_logprobs"] = lp.top.iter().map(|&(t, l)| entry(t, l)).collect();
                        e
                    })
                    .collect();
                json!({"content": content})
            }
            OpenAiKind::Completion => {
                let mut out = json!({"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []});
                for lp in logprobs {
                    let (token, bytes) = self.token(lp.token);
                    let top: serde_json::Map<String, Value> = lp
                        .top
                        .iter()
                        .map(|&(t, l)| (self.token(t).0, json!(l)))
                        .collect();
                    let offset = self.offset;
                    self.offset += bytes.len();
                    push(&mut out["tokens"], json!(token));
                    push(&mut out["token_logprobs"], json!(lp.logprob));
                    push(&mut out["top_logprobs"], Value::Object(top));
                    push(&mut out["text_offset"], json!(offset));
                }
                out
            }
        }
    }
}

fn push(list: &mut Value, item: Value) {
    if let Value::Array(items) = list {
        items.push(item);
    }
}

/// A request of either OpenAI route, checked and tokenized.
struct OpenAiJob {
    kind: OpenAiKind,
    prompt: Vec<u32>,
    settings: Settings,
    stream: bool,
    include_usage: bool,
}

async fn chat_completions(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let job = prepare(&s, body, |s, body| {
        let value = body_json(s, body, "/v1/chat/completions")?;
        let request: wire::ChatRequest = wire::parse(&value, "/v1/chat/completions")?;
        check_model(s, request.model.as_deref())?;
        let params: wire::OpenAiParams = wire::parse(&value, "/v1/chat/completions")?;
        Ok(OpenAiJob {
            kind: OpenAiKind::Chat,
            prompt: tokenize(s, &render_chat(s, &request.messages)?)?,
            settings: Settings {
                logprobs: wire::parse::<wire::ChatLogprobs>(&value, "/v1/chat/completions")?
                    .top()?,
                ..params.settings(s.info.n_vocab, clock_seed())?
            },
            stream: request.stream,
            include_usage: request.stream_options.is_some_and(|o| o.include_usage),
        })
    })
    .await;
    answer_openai(&s.0, job).await
}

async fn completions(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let job = prepare(&s, body, |s, body| {
        let value = body_json(s, body, "/v1/completions")?;
        let request: wire::CompletionRequest = wire::parse(&value, "/v1/completions")?;
        check_model(s, request.model.as_deref())?;
        let text = match request.prompt {
            wire::Prompt::One(p) => p,
            wire::Prompt::Many(mut p) if p.len() == 1 => p.remove(0),
            wire::Prompt::Many(_) => {
                return Err(
                    ApiError::bad_request("unsupported_value", "prompt: give one string")
                        .with_param("prompt"),
                )
            }
        };
        let params: wire::OpenAiParams = wire::parse(&value, "/v1/completions")?;
        Ok(OpenAiJob {
            kind: OpenAiKind::Completion,
            prompt: tokenize(s, &text)?,
            settings: Settings {
                logprobs: wire::parse::<wire::CompletionLogprobs>(&value, "/v1/completions")?
                    .top()?,
                ..params.settings(s.info.n_vocab, clock_seed())?
            },
            stream: request.stream,
            include_usage: request.stream_options.is_some_and(|o| o.include_usage),
        })
    })
    .await;
    answer_openai(&s.0, job).await
}

async fn answer_openai(s: &Shared, job: Result<OpenAiJob, ApiError>) -> Response {
    let job = match job {
        Ok(job) => job,
        Err(e) => return refuse(s, e),
    };
    let mut logprobs = LogprobWriter {
        kind: job.kind,
        info: s.info.clone(),
        asked: job.settings.logprobs.is_some(),
        offset: 0,
    };
    let events = match submit(s, job.prompt, job.settings) {
        Ok(events) => events,
        Err(e) => return busy(e),
    };
    let id = format!(
        "{}-{}",
        match job.kind {
            OpenAiKind::Chat => "chatcmpl",
            OpenAiKind::Completion => "cmpl",
        },
        s.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let (kind, created, model) = (
        job.kind,
        unix(SystemTime::now()).as_secs(),
        s.info.name.clone(),
    );
    if !job.stream {
        return match collect(events).await {
            Ok((text, tokens, finish)) => {
                let logprobs = logprobs.json(&tokens);
                let choice = kind.choice(Some(&text), Some(finish.reason.name()), false, logprobs);
                let body = json!({
                    "id": id, "object": kind.object(false), "created": created, "model": model,
                    "choices": [choice],
                    "usage": usage(&finish),
                });
                json_response(StatusCode::OK, &body)
            }
            Err(e) => e.into_response(),
        };
    }
    let chunk = move |choices: Value| json!({"id": id, "object": kind.object(true), "created": created, "model": model, "choices": choices});
    let first = match kind {
        // The assistant's role comes first, as OpenAI streams it.
        OpenAiKind::Chat => Some(sse(&chunk(
            json!([{"index": 0, "logprobs": null, "finish_reason": null,
            "delta": {"role": "assistant", "content": ""}}]),
        ))),
        OpenAiKind::Completion => None,
    };
    let include_usage = job.include_usage;
    let frame = move |event: Event| match event {
        Event::Text(t, tokens) => {
            let choice = kind.choice(Some(&t), None, true, logprobs.json(&tokens));
            (sse(&chunk(json!([choice]))), false)
        }
        Event::Done(finish) => {
            let choice = kind.choice(None, Some(finish.reason.name()), true, Value::Null);
            let mut out = sse(&chunk(json!([choice]))).to_vec();
            if include_usage {
                let mut last = chunk(json!([]));
                last["usage"] = usage(&finish);
                out.extend_from_slice(&sse(&last));
            }
            out.extend_from_slice(b"data: [DONE]\n\n");
            (Bytes::from(out), true)
        }
        Event::Failed(why) => {
            let mut out = sse(&model_error(why).body()).to_vec();
            out.extend_from_slice(b"data: [DONE]\n\n");
            (Bytes::from(out), true)
        }
    };
    stream(events, first, frame, "text/event-stream")
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

/// A request of either Ollama route, checked and tokenized.
struct OllamaJob {
    chat: bool,
    prompt: Vec<u32>,
    settings: Settings,
    stream: bool,
}

async fn ollama_chat(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let job = prepare(&s, body, |s, body| {
        let value = body_json(s, body, "/api/chat")?;
        let request: wire::OllamaChat = wire::parse(&value, "/api/chat")?;
        check_model(s, Some(&request.model))?;
        Ok(OllamaJob {
            chat: true,
            prompt: tokenize(s, &render_chat(s, &request.messages)?)?,
            settings: Settings {
                grammar: wire::ollama_format(request.format.as_ref())?,
                ..request.options.unwrap_or_default().settings(clock_seed())?
            },
            stream: request.stream.unwrap_or(true),
        })
    })
    .await;
    answer_ollama(&s.0, job).await
}

async fn ollama_generate(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let job = prepare(&s, body, |s, body| {
        let value = body_json(s, body, "/api/generate")?;
        let request: wire::OllamaGenerate = wire::parse(&value, "/api/generate")?;
        check_model(s, Some(&request.model))?;
        let text = match (&s.info.template, request.raw) {
            (Some(template), false) => {
                let mut messages: Vec<Message> =
                    request.system.iter().map(Message::system).collect();
                messages.push(Message::user(&request.prompt));
                template
                    .render(&messages, true)
                    .map_err(|e| ApiError::bad_request("invalid_prompt", e.to_string()))?
            }
            _ => request.prompt,
        };
        Ok(OllamaJob {
            chat: false,
            prompt: tokenize(s, &text)?,
            settings: Settings {
                grammar: wire::ollama_format(request.format.as_ref())?,
                ..request.options.unwrap_or_default().settings(clock_seed())?
            },
            stream: request.stream.unwrap_or(true),
        })
    })
    .await;
    answer_ollama(&s.0, job).await
}

/// Ollama's fields of an answer's piece: the text as `message` (chat) or `response`.
fn ollama_piece(model: &str, chat: bool, text: &str, done: bool) -> Value {
    let created_at = wire::rfc3339(unix(SystemTime::now()));
    let mut v = json!({"model": model, "created_at": created_at, "done": done});
    match chat {
        true => v["message"] = json!({"role": "assistant", "content": text}),
        false => v["response"] = json!(text),
    }
    v
}

/// Ollama's closing fields: why it stopped, counts and nanosecond durations.
fn ollama_done(model: &str, chat: bool, text: &str, f: &Finish) -> Value {
    let mut v = ollama_piece(model, chat, text, true);
    let ns = |d: std::time::Duration| d.as_nanos() as u64;
    v["done_reason"] = json!(f.reason.name());
    v["total_duration"] = json!(ns(f.prompt_time + f.gen_time));
    v["load_duration"] = json!(0);
    v["prompt_eval_count"] = json!(f.prompt_tokens);
    v["prompt_eval_duration"] = json!(ns(f.prompt_time));
    v["eval_count"] = json!(f.completion_tokens);
    v["eval_duration"] = json!(ns(f.gen_time));
    v
}

async fn answer_ollama(s: &Shared, job: Result<OllamaJob, ApiError>) -> Response {
    let job = match job {
        Ok(job) => job,
        Err(e) => return refuse(s, e),
    };
    let events = match submit(s, job.prompt, job.settings) {
        Ok(events) => events,
        Err(e) => return busy(e),
    };
    let (model, chat) = (s.info.name.clone(), job.chat);
    if !job.stream {
        return match collect(events).await {
            Ok((text, _, finish)) => {
                json_response(StatusCode::OK, &ollama_done(&model, chat, &text, &finish))
            }
            Err(e) => e.into_response(),
        };
    }
    let frame = move |event: Event| match event {
        Event::Text(t, _) => (ndjson(&ollama_piece(&model, chat, &t, false)), false),
        Event::Done(finish) => (ndjson(&ollama_done(&model, chat, "", &finish)), true),
        Event::Failed(why) => (ndjson(&json!({"error": why})), true),
    };
    stream(events, None, frame, "application/x-ndjson")
}

/// Ollama's description of the model, as /api/tags and /api/show give it.
fn ollama_details(info: &ModelInfo) -> Value {
    json!({
        "format": "gguf",
        "family": info.architecture,
        "families": [info.architecture],
        "parameter_size": "",
        "quantization_level": info.quantization,
    })
}

async fn ollama_tags(State(s): State<AppState>) -> Response {
    let info = &s.0.info;
    let body = json!({"models": [{
        "name": info.name,
        "model": info.name,
        "modified_at": wire::rfc3339(unix(s.0.started)),
        "size": info.file_bytes,
        "digest": "",
        "details": ollama_details(info),
    }]});
    json_response(StatusCode::OK, &body)
}

async fn ollama_show(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let s = &s.0;
    let shown = (|| {
        let value = body_json(s, body, "/api/show")?;
        let request: wire::OllamaShow = wire::parse(&value, "/api/show")?;
        check_model(s, Some(&request.model))
    })();
    if let Err(e) = shown {
        return refuse(s, e);
    }
    let info = &s.info;
    let arch = &info.architecture;
    let body = json!({
        "modelfile": "",
        "parameters": "",
        "template": info.template.as_ref().map_or("", |t| t.name()),
        "details": ollama_details(info),
        "model_info": {
            "general.architecture": arch,
            format!("{arch}.context_length"): info.n_ctx_train,
            "tokenizer.ggml.vocab_size": info.n_vocab,
        },
        "capabilities": if info.template.is_some() { json!(["completion", "chat"]) } else { json!(["completion"]) },
    });
    json_response(StatusCode::OK, &body)
}

fn clock_seed() -> u64 {
    unix(SystemTime::now()).as_nanos() as u64
}
