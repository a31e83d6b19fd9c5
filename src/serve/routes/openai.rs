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
        index: usize,
        text: Option<&str>,
        finish: Option<&str>,
        stream: bool,
        logprobs: Value,
    ) -> Value {
        match (self, stream) {
            (Self::Chat, false) => {
                json!({"index": index, "logprobs": logprobs, "finish_reason": finish,
                "message": {"role": "assistant", "content": text.unwrap_or("")}})
            }
            (Self::Chat, true) => {
                let delta = text.map_or(json!({}), |t| json!({"content": t}));
                json!({"index": index, "logprobs": logprobs, "finish_reason": finish, "delta": delta})
            }
            (Self::Completion, _) => {
                json!({"index": index, "logprobs": logprobs, "finish_reason": finish,
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
    /// The prompts, each answered `n` times: choice i is answer i % n to prompt i / n.
    prompts: Vec<Vec<u32>>,
    settings: Settings,
    stream: bool,
    include_usage: bool,
    /// The tools the request offered, whose calls each choice's answer is read for.
    tools: Option<ToolUse>,
    /// Answers to write (`n`), each in a slot of its own.
    n: usize,
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
        let n = params.choices()?;
        let mut settings = Settings {
            logprobs: wire::parse::<wire::ChatLogprobs>(&value, "/v1/chat/completions")?.top()?,
            ..params.settings(s.info.n_vocab, clock_seed())?
        };
        tool_grammar(&mut settings, tools.as_ref())?;
        settings.show_special = tools.as_ref().is_some_and(ToolUse::shows_control_tokens);
        Ok(OpenAiJob {
            kind: OpenAiKind::Chat,
            prompts: vec![tokenize(
                s,
                &render_chat(s, &request.messages, tools.as_ref())?,
            )?],
            settings,
            stream: request.stream,
            include_usage: request.stream_options.is_some_and(|o| o.include_usage),
            tools,
            n,
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
        let texts = match request.prompt {
            wire::Prompt::One(p) => vec![p],
            wire::Prompt::Many(p) => p,
        };
        let params: wire::OpenAiParams = wire::parse(&value, "/v1/completions")?;
        let n = params.choices()?;
        if texts.is_empty() || texts.len() * n > wire::MAX_CHOICES as usize {
            return Err(ApiError::bad_request(
                "invalid_value",
                format!(
                    "prompt: give 1 to {} prompts, n answers each ({} here)",
                    wire::MAX_CHOICES,
                    texts.len() * n
                ),
            )
            .with_param("prompt"));
        }
        Ok(OpenAiJob {
            kind: OpenAiKind::Completion,
            prompts: texts
                .iter()
                .map(|t| tokenize(s, t))
                .collect::<Result<_, _>>()?,
            settings: Settings {
                logprobs: wire::parse::<wire::CompletionLogprobs>(&value, "/v1/completions")?
                    .top()?,
                ..params.settings(s.info.n_vocab, clock_seed())?
            },
            stream: request.stream,
            include_usage: request.stream_options.is_some_and(|o| o.include_usage),
            tools: None,
            n,
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

/// The usage of all of a request's choices: each prompt once, every choice's tokens.
#[derive(Default)]
struct Usage {
    prompt: usize,
    completion: usize,
}

impl Usage {
    /// Adds choice `index` of a request of `n` answers per prompt.
    fn add(&mut self, f: &Finish, index: usize, n: usize) {
        if index.is_multiple_of(n) {
            self.prompt += f.prompt_tokens;
        }
        self.completion += f.completion_tokens;
    }

    fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        })
    }
}

/// What each choice of an answer keeps while it is written.
struct ChoiceState {
    logprobs: LogprobWriter,
    calls: Option<CallReader>,
}

async fn answer_openai(s: &Shared, job: Result<OpenAiJob, ApiError>) -> Response {
    let job = match job {
        Ok(job) => job,
        Err(e) => return refuse(s, e),
    };
    let (n, choices) = (job.n, job.prompts.len() * job.n);
    let states: Vec<ChoiceState> = (0..choices)
        .map(|_| ChoiceState {
            logprobs: LogprobWriter {
                kind: job.kind,
                info: s.info.clone(),
                asked: job.settings.logprobs.is_some(),
                offset: 0,
            },
            calls: job.tools.as_ref().map(ToolUse::reader),
        })
        .collect();
    let answers = match submit_choices(s, &job.prompts, &job.settings, n) {
        Ok(answers) => answers,
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
        let collected = futures_util::future::join_all(answers.into_iter().map(collect)).await;
        let mut usage = Usage::default();
        let mut written = Vec::with_capacity(collected.len());
        for (index, (answer, state)) in collected.into_iter().zip(states).enumerate() {
            let (text, tokens, finish) = match answer {
                Ok(answer) => answer,
                Err(e) => return e.into_response(),
            };
            let mut logprobs = state.logprobs;
            let logprobs = logprobs.json(&tokens);
            let (text, made) = read_calls(state.calls, text);
            let reason = finish_reason(&finish, &made);
            let mut choice = kind.choice(index, Some(&text), Some(reason), false, logprobs);
            if !made.is_empty() {
                let message = &mut choice["message"];
                message["tool_calls"] = json!(openai_calls(&format!("{id}_{index}"), &made));
                if text.is_empty() {
                    message["content"] = Value::Null;
                }
            }
            usage.add(&finish, index, n);
            written.push(choice);
        }
        let body = json!({
            "id": id, "object": kind.object(false), "created": created, "model": model,
            "choices": written, "usage": usage.json(),
        });
        return json_response(StatusCode::OK, &body);
    }
    let call_ids = id.clone();
    let chunk = move |choices: Value| json!({"id": id, "object": kind.object(true), "created": created, "model": model, "choices": choices});
    let first = match kind {
        // The assistant's role comes first, as OpenAI streams it.
        OpenAiKind::Chat => Some(Bytes::from(
            (0..choices)
                .flat_map(|index| {
                    sse(&chunk(
                        json!([{"index": index, "logprobs": null, "finish_reason": null,
                        "delta": {"role": "assistant", "content": ""}}]),
                    ))
                })
                .collect::<Vec<u8>>(),
        )),
        OpenAiKind::Completion => None,
    };
    let (include_usage, mut states, mut usage, mut running) =
        (job.include_usage, states, Usage::default(), choices);
    let frame = move |(index, event): (usize, Event)| match event {
        Event::Text(t, tokens) => {
            let state = &mut states[index];
            let t = match &mut state.calls {
                Some(reader) => reader.push(&t),
                None => t,
            };
            let logprobs = state.logprobs.json(&tokens);
            if t.is_empty() && logprobs.is_null() {
                return (Bytes::new(), false);
            }
            let choice = kind.choice(index, Some(&t), None, true, logprobs);
            (sse(&chunk(json!([choice]))), false)
        }
        Event::Done(finish) => {
            let mut out = Vec::new();
            let calls = states[index].calls.take();
            let (rest, made) = calls.map_or((String::new(), vec![]), |r| r.finish());
            if !rest.is_empty() {
                let choice = kind.choice(index, Some(&rest), None, true, Value::Null);
                out.extend_from_slice(&sse(&chunk(json!([choice]))));
            }
            if !made.is_empty() {
                let calls = openai_calls(&format!("{call_ids}_{index}"), &made);
                let choice = json!({"index": index, "logprobs": null, "finish_reason": null,
                    "delta": {"tool_calls": calls}});
                out.extend_from_slice(&sse(&chunk(json!([choice]))));
            }
            let reason = finish_reason(&finish, &made);
            let choice = kind.choice(index, None, Some(reason), true, Value::Null);
            out.extend_from_slice(&sse(&chunk(json!([choice]))));
            usage.add(&finish, index, n);
            running -= 1;
            if running > 0 {
                return (Bytes::from(out), false);
            }
            if include_usage {
                let mut last = chunk(json!([]));
                last["usage"] = usage.json();
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
    stream(merge(answers), first, frame, "text/event-stream")
}
