//! Ollama's routes: `/api/chat`, `/api/generate` (whole, or NDJSON), `/api/tags`, `/api/show`.

use super::*;

/// A request of either Ollama route, checked and tokenized.
struct OllamaJob {
    chat: bool,
    prompt: Vec<u32>,
    settings: Settings,
    stream: bool,
    /// Where the request offered tools: the reader of the calls in the answer.
    calls: Option<CallReader>,
}

pub(super) async fn ollama_chat(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let job = prepare(&s, body, |s, body| {
        let value = body_json(s, body, "/api/chat")?;
        let request: wire::OllamaChat = wire::parse(&value, "/api/chat")?;
        check_model(s, Some(&request.model))?;
        let tools = tool_use(s, request.tools.as_deref(), None)?;
        Ok(OllamaJob {
            chat: true,
            prompt: tokenize(s, &render_chat(s, &request.messages, tools.as_ref())?)?,
            settings: Settings {
                grammar: wire::ollama_format(request.format.as_ref())?,
                show_special: tools.as_ref().is_some_and(ToolUse::shows_control_tokens),
                ..request.options.unwrap_or_default().settings(clock_seed())?
            },
            stream: request.stream.unwrap_or(true),
            calls: tools.map(|t| t.reader()),
        })
    })
    .await;
    answer_ollama(&s.0, job).await
}

pub(super) async fn ollama_generate(
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
            calls: None,
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
        Err(e) => return ollama_error(s, e),
    };
    let events = match submit(s, job.prompt, job.settings) {
        Ok(events) => events,
        Err(e) => return ollama_error(s, e),
    };
    let (model, chat, mut calls) = (s.info.name.clone(), job.chat, job.calls);
    if !job.stream {
        return match collect(events).await {
            Ok((text, _, finish)) => {
                let (text, made) = read_calls(calls, text);
                let mut done = ollama_done(&model, chat, &text, &finish);
                add_ollama_calls(&mut done, &made);
                json_response(StatusCode::OK, &done)
            }
            Err(e) => ollama_error(s, e),
        };
    }
    let frame = move |(_, event): (usize, Event)| match event {
        Event::Text(t, _) => {
            let t = match &mut calls {
                Some(reader) => reader.push(&t),
                None => t,
            };
            match t.is_empty() {
                true => (Bytes::new(), false),
                false => (ndjson(&ollama_piece(&model, chat, &t, false)), false),
            }
        }
        Event::Done(finish) => {
            let mut out = Vec::new();
            let (rest, made) = calls.take().map_or((String::new(), vec![]), |r| r.finish());
            if !rest.is_empty() || !made.is_empty() {
                let mut piece = ollama_piece(&model, chat, &rest, false);
                add_ollama_calls(&mut piece, &made);
                out.extend_from_slice(&ndjson(&piece));
            }
            out.extend_from_slice(&ndjson(&ollama_done(&model, chat, "", &finish)));
            (Bytes::from(out), true)
        }
        Event::Failed(why) => (ndjson(&json!({"error": why})), true),
    };
    stream(merge(vec![events]), None, frame, "application/x-ndjson")
}

/// A chat answer's calls in Ollama's shape, on its `message`.
fn add_ollama_calls(piece: &mut Value, calls: &[ToolCall]) {
    if !calls.is_empty() {
        piece["message"]["tool_calls"] = calls.iter().map(ToolCall::ollama).collect();
    }
}

/// A refusal in Ollama's shape, `{"error": "<message>"}`, with the status and headers the
/// OpenAI routes give it.
fn ollama_error(s: &Shared, e: ApiError) -> Response {
    let body = Body::from(json!({ "error": e.message }).to_string());
    let response = match e.status {
        503 => busy(e),
        _ => refuse(s, e),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, body)
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

pub(super) async fn ollama_tags(State(s): State<AppState>) -> Response {
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

/// Ollama's `capabilities`: chat where there is a template, tools where it calls them so
/// that vibrant can read the calls.
fn capabilities(info: &ModelInfo) -> Value {
    let mut caps = vec!["completion"];
    if let Some(template) = &info.template {
        caps.push("chat");
        if tools::reads_calls(template.source()) {
            caps.push("tools");
        }
    }
    json!(caps)
}

pub(super) async fn ollama_show(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let s = &s.0;
    let shown = (|| {
        let value = body_json(s, body, "/api/show")?;
        let request: wire::OllamaShow = wire::parse(&value, "/api/show")?;
        check_model(s, Some(&request.model))
    })();
    if let Err(e) = shown {
        return ollama_error(s, e);
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
        "capabilities": capabilities(info),
    });
    json_response(StatusCode::OK, &body)
}
