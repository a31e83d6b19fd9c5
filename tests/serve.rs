//! `vibrant serve` on SmolLM2 (CPU), driven over plain HTTP: the OpenAI and Ollama routes,
//! usage counts against the tokenizer, concurrent greedy requests against each alone,
//! cancellation, every bad input, and the official `openai` Python client.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vibrant::chat::{ChatTemplate, Message};
use vibrant::gguf::GgufFile;
use vibrant::tokenizer::Tokenizer;

const MODEL: &str = "smollm2-135m";

fn model_path() -> std::path::PathBuf {
    let path = vibrant::catalog::models_dir().join(format!("{MODEL}.gguf"));
    assert!(
        path.is_file(),
        "{} is missing: run `python3 scripts/fetch_model.py {MODEL}` first",
        path.display()
    );
    path
}

/// A server on a port of its own, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let path = model_path();
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
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Self { child, port }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting");
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
        Reply::parse(&raw)
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
