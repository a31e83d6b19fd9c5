//! OpenAI's routes: `/v1/chat/completions`, `/v1/completions` (whole, or server-sent events)
//! and `/v1/models`.

use super::*;

pub(super) async fn models(State(s): State<AppState>) -> Response {
    let created = unix(s.0.started).as_secs();
    let body = json!({"object": "list", "data": [{
        "id": s.0.info.name, "object": "model", "created": created, "owned_by": "vibrant",
    }]});
    json_response(StatusCode::OK, &body)
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
    /// Where the request offered tools: the reader of the calls in the answer.
    calls: Option<CallReader>,
}

pub(super) async fn chat_completions(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let job = prepare(&s, body, |s, body| {
        let value = body_json(s, body, "/v1/chat/completions")?;
        let request: wire::ChatRequest = wire::parse(&value, "/v1/chat/completions")?;
        check_model(s, request.model.as_deref())?;
        let tools = tool_use(s, request.tools.as_deref(), request.tool_choice.as_ref())?;
        let params: wire::OpenAiParams = wire::parse(&value, "/v1/chat/completions")?;
        let mut settings = Settings {
            logprobs: wire::parse::<wire::ChatLogprobs>(&value, "/v1/chat/completions")?.top()?,
            ..params.settings(s.info.n_vocab, clock_seed())?
        };
        tool_grammar(&mut settings, tools.as_ref())?;
        Ok(OpenAiJob {
            kind: OpenAiKind::Chat,
            prompt: tokenize(s, &render_chat(s, &request.messages, tools.as_ref())?)?,
            settings,
            stream: request.stream,
            include_usage: request.stream_options.is_some_and(|o| o.include_usage),
            calls: tools.map(|t| t.reader()),
        })
    })
    .await;
    answer_openai(&s.0, job).await
}

pub(super) async fn completions(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
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
            calls: None,
        })
    })
    .await;
    answer_openai(&s.0, job).await
}

/// OpenAI's `tool_calls` of an answer, with ids unique to it.
fn openai_calls(id: &str, calls: &[ToolCall]) -> Vec<Value> {
    let call = |(i, c): (usize, &ToolCall)| {
        let mut v = c.openai(&format!("call_{id}_{i}"));
        v["index"] = json!(i);
        v
    };
    calls.iter().enumerate().map(call).collect()
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
    let mut calls = job.calls;
    if !job.stream {
        return match collect(events).await {
            Ok((text, tokens, finish)) => {
                let logprobs = logprobs.json(&tokens);
                let (text, made) = read_calls(calls, text);
                let reason = finish_reason(&finish, &made);
                let mut choice = kind.choice(Some(&text), Some(reason), false, logprobs);
                if !made.is_empty() {
                    let message = &mut choice["message"];
                    message["tool_calls"] = json!(openai_calls(&id, &made));
                    if text.is_empty() {
                        message["content"] = Value::Null;
                    }
                }
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
    let call_ids = id.clone();
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
            let t = match &mut calls {
                Some(reader) => reader.push(&t),
                None => t,
            };
            let logprobs = logprobs.json(&tokens);
            if t.is_empty() && logprobs.is_null() {
                return (Bytes::new(), false);
            }
            let choice = kind.choice(Some(&t), None, true, logprobs);
            (sse(&chunk(json!([choice]))), false)
        }
        Event::Done(finish) => {
            let mut out = Vec::new();
            let (rest, made) = calls.take().map_or((String::new(), vec![]), |r| r.finish());
            if !rest.is_empty() {
                let choice = kind.choice(Some(&rest), None, true, Value::Null);
                out.extend_from_slice(&sse(&chunk(json!([choice]))));
            }
            if !made.is_empty() {
                let delta = json!({"tool_calls": openai_calls(&call_ids, &made)});
                let choice =
                    json!({"index": 0, "logprobs": null, "finish_reason": null, "delta": delta});
                out.extend_from_slice(&sse(&chunk(json!([choice]))));
            }
            let reason = finish_reason(&finish, &made);
            let choice = kind.choice(None, Some(reason), true, Value::Null);
            out.extend_from_slice(&sse(&chunk(json!([choice]))));
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
