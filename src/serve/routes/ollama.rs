//! Ollama's routes: `/api/chat`, `/api/generate` (whole, or NDJSON), `/api/tags`, `/api/show`.

use super::*;

/// A request of either Ollama route, checked and tokenized.
struct OllamaJob {
    chat: bool,
    prompt: Vec<u32>,
    settings: Settings,
    stream: bool,
}

pub(super) async fn ollama_chat(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let job = prepare(&s, body, |s, body| {
        let value = body_json(s, body, "/api/chat")?;
        let request: wire::OllamaChat = wire::parse(&value, "/api/chat")?;
        check_model(s, Some(&request.model))?;
        wire::refuse_tools(request.tools.as_deref(), None)?;
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
    let (model, chat) = (s.info.name.clone(), job.chat);
    if !job.stream {
        return match collect(events).await {
            Ok((text, _, finish)) => {
                json_response(StatusCode::OK, &ollama_done(&model, chat, &text, &finish))
            }
            Err(e) => ollama_error(s, e),
        };
    }
    let frame = move |event: Event| match event {
        Event::Text(t, _) => (ndjson(&ollama_piece(&model, chat, &t, false)), false),
        Event::Done(finish) => (ndjson(&ollama_done(&model, chat, "", &finish)), true),
        Event::Failed(why) => (ndjson(&json!({"error": why})), true),
    };
    stream(events, None, frame, "application/x-ndjson")
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
        "capabilities": if info.template.is_some() { json!(["completion", "chat"]) } else { json!(["completion"]) },
    });
    json_response(StatusCode::OK, &body)
}
