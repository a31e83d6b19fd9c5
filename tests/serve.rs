//! `vibrant serve` on SmolLM2 (CPU), driven over plain HTTP: the OpenAI and Ollama routes,
//! usage counts against the tokenizer, concurrent greedy requests against each alone,
//! cancellation, every bad input, and the official `openai` Python client.

// Only the model helpers of common are used here.
#[allow(dead_code)]
mod common;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vibrant::chat::{ChatTemplate, Message, RenderOptions};
use vibrant::gguf::GgufFile;
use vibrant::tokenizer::Tokenizer;

const MODEL: &str = "smollm2-135m";

fn model_path() -> std::path::PathBuf {
    common::models::model_path(MODEL)
}

/// A server on a port of its own, killed when dropped.
struct Server {
    child: Child,
    port: u16,
    /// What it wrote to stderr after it started listening.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        Self::start_model(MODEL, extra)
    }

    fn start_model(model: &str, extra: &[&str]) -> Self {
        let path = common::models::model_path(model);
        let mut child = Command::new(env!("CARGO_BIN_EXE_vibrant"))
            .args(["serve", "-m"])
            .arg(&path)
            .args(["--port", "0", "-c", "512", "-b", "64"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting vibrant serve");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
        let mut line = String::new();
        let port = loop {
            line.clear();
            let n = stderr
                .read_line(&mut line)
                .expect("reading the server's stderr");
            assert!(n > 0, "the server exited before listening");
            if let Some(addr) = line
                .trim()
                .strip_prefix("vibrant serve: listening on http://")
            {
                break addr.rsplit(':').next().unwrap().parse().expect("a port");
            }
        };
        // Keep draining stderr so that the server never blocks on it.
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                kept.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Self { child, port, log }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap_or_else(|e| {
            panic!(
                "connecting: {e}; the server said: {}",
                self.log.lock().unwrap()
            )
        });
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s
    }

    /// Sends a request and returns it open, for reading the answer as it streams.
    fn send(&self, method: &str, path: &str, body: &[u8], headers: &[&str]) -> TcpStream {
        let mut s = self.connect();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        // A server may answer (413) before reading an oversized body, and close.
        let _ = s.write_all(body);
        s
    }

    fn request(&self, method: &str, path: &str, body: &[u8], headers: &[&str]) -> Reply {
        let mut raw = Vec::new();
        self.send(method, path, body, headers)
            .read_to_end(&mut raw)
            .expect("reading the answer");
        let reply = Reply::parse(&raw);
        if reply.status >= 500 && reply.status != 503 {
            eprintln!(
                "{method} {path}: {}; the server said: {}",
                reply.status,
                self.log.lock().unwrap()
            );
        }
        reply
    }

    fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, body.to_string().as_bytes(), &[])
    }

    fn get(&self, path: &str) -> Reply {
        self.request("GET", path, b"", &[])
    }

    fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").body;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("vibrant_{name} ")))
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
            .parse()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn parse(raw: &[u8]) -> Self {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
        {
            body = dechunk(&body);
        }
        Self {
            status,
            headers,
            body: String::from_utf8(body).expect("UTF-8 body"),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The JSON of each `data:` event, up to `[DONE]` (which must come last).
    fn events(&self) -> Vec<Value> {
        let data: Vec<&str> = self
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(data.last(), Some(&"[DONE]"), "{}", self.body);
        data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size");
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[eol + 4 + size..];
    }
}

/// The prompt tokens the server should count for `messages`: the template's text, tokenized
/// with BOS where the vocabulary wants one.
fn chat_prompt_tokens(messages: &[Message]) -> usize {
    let file = GgufFile::open(model_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let text = ChatTemplate::from_gguf(&file)
        .unwrap()
        .render(messages, true)
        .unwrap();
    let tokens = tokenizer.encode(&text, true).unwrap();
    let bos = tokenizer.add_bos() && tokenizer.bos_id() != tokens.first().copied();
    tokens.len() + usize::from(bos)
}

fn chat_body(question: &str, max_tokens: usize, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0, "max_tokens": max_tokens, "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

fn chat_text(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn openai_routes_answer_whole_and_streamed_with_the_tokenizers_counts() {
    let server = Server::start(&["--parallel", "2"]);
    let question = "What is the capital of France?";
    let whole = server.post("/v1/chat/completions", &chat_body(question, 12, false));
    let answer = chat_text(&whole);
    let v = whole.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let prompt_tokens = chat_prompt_tokens(&[Message::user(question)]);
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["usage"]["total_tokens"], prompt_tokens + 12);

    let streamed = server.post("/v1/chat/completions", &chat_body(question, 12, true));
    assert_eq!(streamed.header("content-type"), Some("text/event-stream"));
    let events = streamed.events();
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"].get(0)?["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, answer, "streamed and whole greedy answers differ");
    let finish = &events[events.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(events.last().unwrap()["usage"], v["usage"]);

    let prompt = "The capital of France is";
    let completion = json!({"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 6});
    let whole = server.post("/v1/completions", &completion);
    assert_eq!(whole.status, 200, "{}", whole.body);
    let v = whole.json();
    assert_eq!(v["object"], "text_completion");
    let file = GgufFile::open(model_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    assert_eq!(
        v["usage"]["prompt_tokens"],
        tokenizer.encode(prompt, true).unwrap().len()
    );
    let mut streamed = completion.clone();
    streamed["stream"] = json!(true);
    let events = server.post("/v1/completions", &streamed).events();
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, v["choices"][0]["text"].as_str().unwrap());

    let models = server.get("/v1/models").json();
    assert_eq!(models["data"][0]["id"], MODEL);
    let metrics = server.get("/metrics").body;
    for name in [
        "requests_total 4",
        "model_up 1",
        "queue_depth 0",
        "time_to_first_token_seconds_count 4",
    ] {
        assert!(
            metrics.contains(&format!("vibrant_{name}\n")),
            "{name}: {metrics}"
        );
    }
}

/// In the CPU's exact mode, where rows do not round differently in larger batches (see
/// tests/serve_model.rs), so that batching may change nothing.
#[test]
fn sixteen_concurrent_greedy_requests_each_get_the_answer_they_get_alone() {
    let server = Server::start(&["--parallel", "4", "--exact"]);
    let places = ["rivers", "forests", "deserts", "oceans"];
    let questions: Vec<String> = (0..16)
        .map(|i| format!("Name {} animals that live in {}.", i / 4 + 2, places[i % 4]))
        .collect();
    let ask =
        |q: &String| chat_text(&server.post("/v1/chat/completions", &chat_body(q, 10, false)));
    let alone: Vec<String> = questions.iter().map(ask).collect();
    let together: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = questions
            .iter()
            .map(|q| scope.spawn(move || ask(q)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (t, a)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(t, a, "question {i}: {}", questions[i]);
    }
    assert!(
        server.metric("batch_rows_total") > server.metric("steps_total") * 2.0,
        "the concurrent requests were not batched"
    );
}

/// Reads a streamed answer until `n` events have come.
fn read_events(stream: &mut TcpStream, n: usize) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(6).filter(|w| w == b"data: ").count() < n {
        let got = stream.read(&mut buf).expect("reading the stream");
        assert!(
            got > 0,
            "the stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..got]);
    }
}

/// A streamed completion of 400 tokens: the turn's end is banned, so that it cannot stop
/// early.
fn long_stream() -> Vec<u8> {
    let file = GgufFile::open(model_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let ban: serde_json::Map<String, Value> = tokenizer
        .stop_tokens()
        .iter()
        .map(|id| (id.to_string(), json!(-100)))
        .collect();
    let body = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 400,
        "stream": true, "temperature": 0, "logit_bias": ban});
    body.to_string().into_bytes()
}

#[test]
fn a_client_that_goes_away_frees_its_slot() {
    let server = Server::start(&["--parallel", "1"]);
    let mut stream = server.send("POST", "/v1/completions", &long_stream(), &[]);
    read_events(&mut stream, 3);
    drop(stream);
    let started = Instant::now();
    let body = json!({"model": MODEL, "prompt": "Hello", "max_tokens": 3});
    let reply = server.post("/v1/completions", &body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["usage"]["completion_tokens"], 3);
    // Had the first request gone on, it would have finished (400 tokens) before this one.
    assert_eq!(server.metric("requests_cancelled_total"), 1.0);
    assert_eq!(server.metric("requests_completed_total"), 1.0);
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// Checks an error answer: its status and an OpenAI error body with the code.
fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    let error = &reply.json()["error"];
    assert_eq!(error["code"], code, "{}", reply.body);
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(error.get("type").is_some() && error.get("param").is_some());
}

#[test]
fn bad_input_gets_a_4xx_and_the_server_stays_healthy() {
    let key = "Authorization: Bearer sesame";
    let server = Server::start(&[
        "--parallel",
        "1",
        "--queue",
        "1",
        "--api-key",
        "sesame",
        "--max-body",
        "65536",
    ]);
    let post = |path: &str, body: &[u8]| server.request("POST", path, body, &[key]);
    let chat = |body: Value| post("/v1/chat/completions", body.to_string().as_bytes());

    assert_error(&server.get("/v1/models"), 401, "invalid_api_key");
    let wrong = server.request("GET", "/v1/models", b"", &["Authorization: Bearer open"]);
    assert_error(&wrong, 401, "invalid_api_key");
    assert_eq!(server.get("/health").status, 200, "/health needs no key");
    assert_eq!(server.request("GET", "/v1/models", b"", &[key]).status, 200);

    assert_error(
        &post("/v1/chat/completions", b"{\"messages\": ["),
        400,
        "invalid_json",
    );
    assert_error(
        &post("/v1/chat/completions", b"[1, 2]"),
        400,
        "invalid_request",
    );
    assert_error(&chat(json!({"temperature": 0})), 400, "invalid_request");
    let user = json!([{"role": "user", "content": "Hi"}]);
    assert_error(
        &chat(json!({"messages": user, "temperature": "hot"})),
        400,
        "invalid_request",
    );
    assert_error(&chat(json!({"messages": "Hi"})), 400, "invalid_request");
    assert_error(
        &chat(json!({"messages": user, "max_tokens": -1})),
        400,
        "invalid_request",
    );
    let top_p = chat(json!({"messages": user, "top_p": 2}));
    assert_error(&top_p, 400, "invalid_value");
    assert_eq!(top_p.json()["error"]["param"], "top_p");
    assert_error(
        &chat(json!({"messages": user, "logit_bias": {"ten": 1}})),
        400,
        "invalid_logit_bias",
    );
    assert_error(
        &chat(json!({"messages": [], "max_tokens": 1})),
        400,
        "invalid_request",
    );
    assert_error(
        &chat(json!({"model": "gpt-4", "messages": user})),
        404,
        "model_not_found",
    );
    let weather = json!([{"type": "function", "function": {"name": "weather", "parameters": {}}}]);
    let tools = chat(json!({"messages": user, "tools": weather}));
    assert_error(&tools, 400, "unsupported_value");
    assert_eq!(tools.json()["error"]["param"], "tools");
    let long = "the cat sat on the mat ".repeat(200);
    let too_long = chat(json!({"messages": [{"role": "user", "content": long}]}));
    assert_error(&too_long, 400, "context_length_exceeded");
    let huge = json!({"prompt": "x".repeat(100_000)}).to_string();
    assert_error(
        &post("/v1/completions", huge.as_bytes()),
        413,
        "body_too_large",
    );
    assert_error(&post("/v1/nothing", b"{}"), 404, "not_found");
    // Ollama's routes refuse in Ollama's shape: `{"error": "<message>"}`.
    for (path, body) in [
        ("/api/show", &b"{\"model\": \"llama3\"}"[..]),
        ("/api/chat", b"{\"model\": "),
        ("/api/generate", b"{\"model\": \"m\", \"prompt\": 5}"),
        (
            "/api/chat",
            br#"{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}],
               "tools": [{"type": "function"}]}"#,
        ),
    ] {
        let reply = post(path, body);
        assert!((400..500).contains(&reply.status), "{path}: {}", reply.body);
        let message = reply.json()["error"].as_str().map(str::to_string);
        assert!(
            message.is_some_and(|m| !m.is_empty()),
            "{path}: {}",
            reply.body
        );
    }

    // One request runs, one waits in the queue of one: the next is turned away.
    let mut running = server.send("POST", "/v1/completions", &long_stream(), &[key]);
    read_events(&mut running, 1);
    let waiting = server.send("POST", "/v1/completions", &long_stream(), &[key]);
    std::thread::sleep(Duration::from_millis(300));
    let busy = post("/v1/completions", &long_stream());
    assert_error(&busy, 503, "overloaded");
    assert_eq!(busy.header("retry-after"), Some("1"));
    drop((running, waiting));

    assert_eq!(server.get("/health").status, 200);
    // The slot and the queue free up as soon as the server sees the clients gone: a client
    // told to retry is served.
    let hello = json!({"prompt": "Hello", "max_tokens": 2}).to_string();
    let mut reply = post("/v1/completions", hello.as_bytes());
    for _ in 0..40 {
        if reply.status != 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        reply = post("/v1/completions", hello.as_bytes());
    }
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn ollama_routes_answer_in_ollamas_shapes() {
    let server = Server::start(&["--parallel", "2"]);
    let tags = server.get("/api/tags").json();
    let model = &tags["models"][0];
    assert_eq!(model["name"], MODEL);
    assert!(model["size"].as_u64().unwrap() > 1 << 20);
    assert_eq!(model["details"]["format"], "gguf");
    assert_eq!(model["details"]["family"], "llama");
    let show = server.post("/api/show", &json!({"model": MODEL})).json();
    assert_eq!(show["details"]["family"], "llama");
    assert_eq!(show["model_info"]["general.architecture"], "llama");

    let messages = json!([{"role": "user", "content": "What is the capital of France?"}]);
    let options = json!({"temperature": 0, "num_predict": 8});
    let whole = server.post(
        "/api/chat",
        &json!({"model": MODEL, "messages": messages, "stream": false, "options": options}),
    );
    assert_eq!(whole.status, 200, "{}", whole.body);
    let whole = whole.json();
    assert_eq!(whole["done"], true);
    assert_eq!(whole["done_reason"], "length");
    assert_eq!(whole["message"]["role"], "assistant");
    assert_eq!(whole["eval_count"], 8);
    assert_eq!(
        whole["prompt_eval_count"],
        chat_prompt_tokens(&[Message::user("What is the capital of France?")])
    );
    for key in [
        "created_at",
        "total_duration",
        "eval_duration",
        "prompt_eval_duration",
    ] {
        assert!(whole.get(key).is_some(), "{key} missing: {whole}");
    }

    // Streaming is the default: a JSON object per line, the last one done.
    let streamed = server.post(
        "/api/chat",
        &json!({"model": MODEL, "messages": messages, "options": options}),
    );
    assert_eq!(
        streamed.header("content-type"),
        Some("application/x-ndjson")
    );
    let lines: Vec<Value> = streamed
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (last, pieces) = lines.split_last().unwrap();
    assert_eq!(last["done"], true);
    assert!(pieces.iter().all(|p| p["done"] == false));
    let text: String = pieces
        .iter()
        .map(|p| p["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, whole["message"]["content"].as_str().unwrap());

    let generate = json!({"model": MODEL, "prompt": "What is the capital of France?", "stream": false, "options": options});
    let generated = server.post("/api/generate", &generate).json();
    assert_eq!(
        generated["response"], whole["message"]["content"],
        "generate wraps the prompt in the template"
    );
    let unknown = server.post("/api/generate", &json!({"model": "llama3", "prompt": "Hi"}));
    assert_eq!(unknown.status, 404);
    let message = unknown.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("llama3"), "{}", unknown.body);
}

/// `n` answers to one request: each a choice of its own, sampled with the seed plus its index
/// (so each is the answer a request of one with that seed gets), whole and streamed, with the
/// prompt counted once in the usage.
#[test]
fn n_answers_come_as_choices_each_seeded_apart() {
    let server = Server::start(&["--parallel", "4", "--exact"]);
    let body = |n: u32, seed: u64, stream: bool| {
        json!({"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 8,
               "temperature": 1.0, "seed": seed, "n": n, "stream": stream,
               "stream_options": {"include_usage": true}})
    };
    let whole = server.post("/v1/chat/completions", &body(3, 7, false));
    assert_eq!(whole.status, 200, "{}", whole.body);
    let whole = whole.json();
    let texts: Vec<String> = (0..3)
        .map(|i| {
            let choice = &whole["choices"][i];
            assert_eq!(choice["index"], i);
            choice["message"]["content"].as_str().unwrap().to_string()
        })
        .collect();
    for (i, text) in texts.iter().enumerate() {
        let alone = server.post("/v1/chat/completions", &body(1, 7 + i as u64, false));
        assert_eq!(&chat_text(&alone), text, "choice {i}");
        assert_eq!(
            whole["usage"]["prompt_tokens"],
            alone.json()["usage"]["prompt_tokens"]
        );
    }
    assert_ne!(texts[0], texts[1], "the choices were sampled with one seed");
    assert_eq!(whole["usage"]["completion_tokens"], 24);

    let streamed = server.post("/v1/chat/completions", &body(3, 7, true));
    let mut pieces = vec![String::new(); 3];
    let mut finished = 0;
    let events = streamed.events();
    for event in &events {
        for choice in event["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            pieces[i].push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            finished += usize::from(!choice["finish_reason"].is_null());
        }
    }
    assert_eq!((pieces, finished), (texts, 3));
    assert_eq!(events.last().unwrap()["usage"]["completion_tokens"], 24);
    for n in [0, 17] {
        let refused = server.post("/v1/chat/completions", &body(n, 7, false));
        assert_error(&refused, 400, "invalid_value");
    }

    // Several prompts: choice i is answer i % n to prompt i / n, each prompt counted once.
    let prompts = ["The capital of France is", "Once upon a time"];
    let completion = |prompt: Value, n: u32| {
        let body =
            json!({"prompt": prompt, "max_tokens": 6, "temperature": 1.0, "seed": 3, "n": n});
        let reply = server.post("/v1/completions", &body);
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()
    };
    let both = completion(json!(prompts), 2);
    let mut prompt_tokens = 0;
    for (p, prompt) in prompts.iter().enumerate() {
        let alone = completion(json!(prompt), 2);
        for j in 0..2 {
            assert_eq!(both["choices"][2 * p + j]["index"], 2 * p + j);
            assert_eq!(
                both["choices"][2 * p + j]["text"],
                alone["choices"][j]["text"]
            );
        }
        prompt_tokens += alone["usage"]["prompt_tokens"].as_u64().unwrap();
    }
    assert_eq!(both["usage"]["prompt_tokens"], prompt_tokens);
    let too_many = json!({"prompt": prompts, "n": 9});
    assert_error(
        &server.post("/v1/completions", &too_many),
        400,
        "invalid_value",
    );
}

const TOOL_MODEL: &str = "qwen2.5-coder-0.5b";

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "The city"}}, "required": ["city"]}}}])
}

fn tool_request(question: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": TOOL_MODEL, "messages": [{"role": "user", "content": question}],
        "tools": weather_tools(), "temperature": 0, "max_tokens": 60,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

/// The one call of a whole answer: its function's name and its arguments, parsed.
fn only_call(reply: &Reply) -> (String, Value) {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let choice = &reply.json()["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{}", reply.body);
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{}", reply.body);
    assert_eq!(calls[0]["type"], "function");
    let function = &calls[0]["function"];
    let arguments = serde_json::from_str(function["arguments"].as_str().unwrap()).unwrap();
    (function["name"].as_str().unwrap().to_string(), arguments)
}

/// Tools on Qwen2.5-Coder-0.5B (greedy): the template shows them to the model, its call comes
/// back as `tool_calls` (whole and streamed, OpenAI and Ollama), a required call is held to
/// the tools, and a conversation carrying a call and its result reaches the template whole.
#[test]
fn tool_calls_come_back_in_openai_and_ollama_shapes() {
    let server = Server::start_model(TOOL_MODEL, &["--parallel", "2"]);
    let question = "What is the weather like in Paris today?";
    let whole = server.post("/v1/chat/completions", &tool_request(question, json!({})));
    let paris = json!({"city": "Paris"});
    assert_eq!(
        only_call(&whole),
        ("get_weather".to_string(), paris.clone())
    );
    assert!(whole.json()["choices"][0]["message"]["content"].is_null());

    let streamed = server.post(
        "/v1/chat/completions",
        &tool_request(question, json!({"stream": true})),
    );
    let events = streamed.events();
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "", "{}", streamed.body);
    let deltas: Vec<&Value> = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(deltas.len(), 1, "{}", streamed.body);
    assert_eq!(deltas[0][0]["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(deltas[0][0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, paris);
    let last = &events[events.len() - 1]["choices"][0];
    assert_eq!(last["finish_reason"], "tool_calls");

    let required = tool_request("Say hello.", json!({"tool_choice": "required"}));
    let (name, arguments) = only_call(&server.post("/v1/chat/completions", &required));
    assert_eq!(name, "get_weather");
    assert!(arguments.is_object(), "{arguments}");
    let named = json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
    let (_, arguments) =
        only_call(&server.post("/v1/chat/completions", &tool_request("Say hello.", named)));
    assert!(arguments["city"].is_string(), "{arguments}");
    let unknown = json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}});
    let refused = server.post("/v1/chat/completions", &tool_request(question, unknown));
    assert_error(&refused, 400, "invalid_value");

    let call = json!({"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}});
    let mut round = tool_request(question, json!({"max_tokens": 8}));
    round["messages"] = json!([
        {"role": "user", "content": question},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C and sunny"},
    ]);
    let answer = server.post("/v1/chat/completions", &round);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let template_call = json!({"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}}});
    let messages = [
        Message::user(question),
        Message::assistant("").with("tool_calls", json!([template_call])),
        Message::new("tool", "22 C and sunny").with("tool_call_id", json!("call_1")),
    ];
    let file = GgufFile::open(common::models::model_path(TOOL_MODEL)).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let options = RenderOptions::new(true).set("tools", &weather_tools());
    let text = ChatTemplate::from_gguf(&file)
        .unwrap()
        .render_with(&messages, &options)
        .unwrap();
    assert!(text.contains("<tool_response>\n22 C and sunny"), "{text}");
    assert_eq!(
        answer.json()["usage"]["prompt_tokens"],
        tokenizer.encode(&text, true).unwrap().len()
    );

    let ollama = json!({"model": TOOL_MODEL, "stream": false, "options": {"temperature": 0},
        "messages": [{"role": "user", "content": question}], "tools": weather_tools()});
    let reply = server.post("/api/chat", &ollama);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let calls = &reply.json()["message"]["tool_calls"];
    assert_eq!(calls[0]["function"]["arguments"], paris, "{}", reply.body);
    let mut streaming = ollama.clone();
    streaming["stream"] = json!(true);
    let lines = server.post("/api/chat", &streaming).body;
    let with_calls: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["message"].get("tool_calls").is_some())
        .collect();
    assert_eq!(with_calls.len(), 1, "{lines}");
    assert_eq!(
        with_calls[0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    let show = server
        .post("/api/show", &json!({"model": TOOL_MODEL}))
        .json();
    assert!(show["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("tools")));
    run_openai_check(&server, TOOL_MODEL, &["--tools"]);
}

/// scripts/serve_openai_check.py: the official `openai` Python package against the server.
fn run_openai_check(server: &Server, model: &str, extra: &[&str]) {
    let status = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/serve_openai_check.py"
        ))
        .arg(format!("http://127.0.0.1:{}/v1", server.port))
        .arg(model)
        .args(extra)
        .status()
        .expect("running python3");
    assert!(
        status.success(),
        "scripts/serve_openai_check.py failed (needs `pip install openai`)"
    );
}

/// The official `openai` Python package (`pip install openai`) against the server.
#[test]
fn the_official_openai_client_is_answered() {
    let server = Server::start(&["--parallel", "2"]);
    run_openai_check(&server, MODEL, &[]);
}

/// SIGTERM: the server stops taking connections, gives running requests the grace period,
/// then cuts them and exits cleanly.
#[cfg(unix)]
#[test]
fn sigterm_shuts_down_within_the_grace_period() {
    let mut server = Server::start(&["--parallel", "1", "--shutdown-grace", "1"]);
    let mut running = server.send("POST", "/v1/completions", &long_stream(), &[]);
    read_events(&mut running, 2);
    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still running 20 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    // The stream was cut, not left hanging.
    let mut rest = Vec::new();
    let _ = running.read_to_end(&mut rest);
    assert!(TcpStream::connect(("127.0.0.1", server.port)).is_err());
}

#[test]
fn logprobs_come_with_each_token_and_its_alternatives() {
    let server = Server::start(&["--parallel", "1"]);
    let mut body = chat_body("What is the capital of France?", 6, false);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(3);
    let reply = server.post("/v1/chat/completions", &body);
    let text = chat_text(&reply);
    let content = reply.json()["choices"][0]["logprobs"]["content"].clone();
    let entries = content.as_array().unwrap();
    assert_eq!(entries.len(), 6);
    let joined: String = entries
        .iter()
        .map(|e| e["token"].as_str().unwrap())
        .collect();
    assert_eq!(joined, text);
    for e in entries {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the token taken is the most likely one.
        assert_eq!(top[0]["token"], e["token"]);
        assert_eq!(top[0]["logprob"], e["logprob"]);
        let lp: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(lp[0] <= 0.0 && lp[0] >= lp[1] && lp[1] >= lp[2], "{lp:?}");
    }
    body["stream"] = json!(true);
    let events = server.post("/v1/chat/completions", &body).events();
    let streamed: Vec<Value> = events
        .iter()
        .filter_map(|e| {
            e["choices"].get(0)?["logprobs"]["content"]
                .as_array()
                .cloned()
        })
        .flatten()
        .collect();
    assert_eq!(&streamed, entries);

    let completion = json!({"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "logprobs": 2});
    let v = server.post("/v1/completions", &completion).json();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(lp["text_offset"][0], 0);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    let asked_without = chat_body("Hi", 2, false);
    let mut bad = asked_without.clone();
    bad["top_logprobs"] = json!(2);
    assert_error(
        &server.post("/v1/chat/completions", &bad),
        400,
        "invalid_value",
    );
    let plain = server.post("/v1/chat/completions", &asked_without).json();
    assert!(plain["choices"][0]["logprobs"].is_null());
}

#[test]
fn response_format_makes_the_answer_json_of_the_schema() {
    let server = Server::start(&["--parallel", "2"]);
    let question = "Give the name and age of a person named Ann who is 30 years old, as JSON.";
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": false,
    });
    let mut body = chat_body(question, 60, false);
    body["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "person", "schema": schema}});
    let reply = server.post("/v1/chat/completions", &body);
    let text = chat_text(&reply);
    assert_eq!(reply.json()["choices"][0]["finish_reason"], "stop");
    let person: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    // The grammar writes the properties in the schema's order, as llama.cpp's does.
    let keys: Vec<&String> = person.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["name", "age"], "{text}");
    assert!(
        person["name"].is_string() && person["age"].is_i64(),
        "{text}"
    );

    body["stream"] = json!(true);
    let streamed: String = server
        .post("/v1/chat/completions", &body)
        .events()
        .iter()
        .filter_map(|e| {
            e["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(streamed, text);

    let ollama = json!({"model": MODEL, "prompt": question, "stream": false, "format": schema,
        "options": {"temperature": 0, "num_predict": 60}});
    let generated = server.post("/api/generate", &ollama).json();
    let person: Value = serde_json::from_str(generated["response"].as_str().unwrap()).unwrap();
    assert!(
        person["name"].is_string() && person["age"].is_i64(),
        "{generated}"
    );

    body["response_format"] = json!({"type": "json_schema", "json_schema": {"schema": {"type": "string", "pattern": "a+"}}});
    assert_error(
        &server.post("/v1/chat/completions", &body),
        400,
        "invalid_schema",
    );
    body["response_format"] = json!({"type": "yaml"});
    assert_error(
        &server.post("/v1/chat/completions", &body),
        400,
        "invalid_request",
    );
}

/// One request of the load test: its route and body, and where the answer's text is.
fn load_request(kind: usize, prompt: &str) -> (&'static str, Value) {
    let options = json!({"temperature": 0, "num_predict": 8});
    match kind % 4 {
        0 => (
            "/v1/completions",
            json!({"prompt": prompt, "max_tokens": 8, "temperature": 0}),
        ),
        1 => (
            "/v1/completions",
            json!({"prompt": prompt, "max_tokens": 8, "temperature": 0, "stream": true}),
        ),
        2 => (
            "/api/generate",
            json!({"model": MODEL, "prompt": prompt, "raw": true, "stream": false, "options": options}),
        ),
        _ => (
            "/api/generate",
            json!({"model": MODEL, "prompt": prompt, "raw": true, "options": options}),
        ),
    }
}

/// The answer's text, whichever of [`load_request`]'s shapes it came in.
fn load_answer(kind: usize, reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{}", reply.body);
    match kind % 4 {
        0 => reply.json()["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string(),
        1 => reply
            .events()
            .iter()
            .filter_map(|e| e["choices"][0]["text"].as_str().map(str::to_string))
            .collect(),
        2 => reply.json()["response"].as_str().unwrap().to_string(),
        _ => {
            let lines: Vec<Value> = reply
                .body
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines.last().unwrap()["done"], true, "{}", reply.body);
            lines
                .iter()
                .filter_map(|l| l["response"].as_str().map(str::to_string))
                .collect()
        }
    }
}

/// Eight clients for 15 s (or `VIBRANT_LOAD_SECONDS`, for the minutes-long run BENCHMARKS.md
/// records) against four slots, through both APIs, whole and streamed, some leaving
/// mid-answer: every answer that is read is whole and the one its prompt gets alone (exact
/// mode, greedy), none lost, and the server is idle and healthy after.
#[test]
fn a_bounded_load_loses_and_mixes_up_nothing() {
    let seconds: u64 = std::env::var("VIBRANT_LOAD_SECONDS")
        .map(|s| s.parse().expect("VIBRANT_LOAD_SECONDS: whole seconds"))
        .unwrap_or(15);
    let server = Server::start(&["--parallel", "4", "--exact", "--queue", "64"]);
    let prompts: Vec<String> = (0..8)
        .map(|i| {
            format!(
                "Story {i}: once upon a time, a {} named",
                ["cat", "dog", "fox", "owl"][i % 4]
            )
        })
        .collect();
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| load_answer(0, &server.post("/v1/completions", &load_request(0, p).1)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (server, prompts, alone) = (&server, &prompts, &alone);
    let answered: usize = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|client| {
                scope.spawn(move || {
                    let mut n = 0;
                    for round in 0.. {
                        if Instant::now() > deadline {
                            break;
                        }
                        let (kind, p) = (client + round, (client * 3 + round) % prompts.len());
                        let (path, body) = load_request(kind, &prompts[p]);
                        if round % 5 == 4 {
                            // Leaves after the first piece.
                            let mut s = server.send("POST", path, body.to_string().as_bytes(), &[]);
                            let _ = s.read(&mut [0u8; 64]);
                            continue;
                        }
                        let text = load_answer(kind, &server.post(path, &body));
                        assert_eq!(
                            text, alone[p],
                            "client {client}, round {round}, prompt {p}, via {path}"
                        );
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).sum()
    });
    assert!(answered >= 8, "only {answered} answers in {seconds} s");
    eprintln!(
        "{answered} answers checked, {} requests in all, in {seconds} s",
        server.metric("requests_total")
    );
    let idle = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        server.metric("requests_active") == 0.0 && server.metric("queue_depth") == 0.0
    });
    assert!(idle, "requests still held after the load");
    let done =
        server.metric("requests_completed_total") + server.metric("requests_cancelled_total");
    assert_eq!(
        done,
        server.metric("requests_total"),
        "every request accepted ended"
    );
    assert_eq!(server.get("/health").status, 200);
}

/// The GPU path (lavapipe where there is no GPU): whole and streamed answers agree, and
/// requests sent together are batched, each answered as it is alone. The GPU's products of
/// several rows round otherwise than one row's (tiles; f16 where it has tensor cores), so a
/// batched greedy answer may part from the lone one at a near-tie: each must start as the
/// lone one does, which another request's answer (to another question) would not.
#[test]
fn the_gpu_serves_whole_streamed_and_batched_answers() {
    let server = Server::start(&["--device", "gpu", "--parallel", "4"]);
    let question = "What is the capital of France?";
    let whole = server.post("/v1/chat/completions", &chat_body(question, 8, false));
    let answer = chat_text(&whole);
    assert!(!answer.is_empty());
    let events = server
        .post("/v1/chat/completions", &chat_body(question, 8, true))
        .events();
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"].get(0)?["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, answer);
    assert_eq!(events.last().unwrap()["usage"], whole.json()["usage"]);

    let questions = [
        question,
        "Write a haiku about snow.",
        "List three prime numbers.",
        "Who wrote Hamlet?",
    ];
    let ask = |q: &&str| chat_text(&server.post("/v1/chat/completions", &chat_body(q, 8, false)));
    let alone: Vec<String> = questions.iter().map(ask).collect();
    let steps_before = server.metric("steps_total");
    let rows_before = server.metric("batch_rows_total");
    let together: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = questions
            .iter()
            .map(|q| scope.spawn(move || ask(q)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((t, a), q) in together.iter().zip(&alone).zip(questions) {
        let start: String = a.chars().take(12).collect();
        assert!(t.starts_with(&start), "{q}: batched {t:?}, alone {a:?}");
    }
    let steps = server.metric("steps_total") - steps_before;
    let rows = server.metric("batch_rows_total") - rows_before;
    assert!(
        rows > 2.0 * steps,
        "not batched: {rows} rows in {steps} steps"
    );
}
