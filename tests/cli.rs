//! The `vibrant` command as a user meets it: answers, and clean errors (a message and a
//! non-zero exit, never a panic or a hang) for bad input.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn vibrant(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vibrant"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vibrant");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("write stdin");
    drop(input);
    // Every case here finishes in seconds; a hang fails the test instead of stalling CI.
    let started = std::time::Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > Duration::from_secs(300) {
            child.kill().ok();
            panic!("vibrant {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A clean failure: non-zero exit, an `error:` line, and no panic or backtrace.
fn assert_clean_error(out: &Output, expected: &str) {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "should fail; stderr: {err}");
    assert!(err.contains("error:"), "no error line: {err}");
    assert!(err.contains(expected), "expected {expected:?} in: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "panic: {err}"
    );
}

fn smollm2() -> String {
    let path = vibrant::catalog::models_dir().join("smollm2-135m.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run `python3 scripts/fetch_model.py smollm2-135m`",
        path.display()
    );
    path.display().to_string()
}

#[test]
fn ask_answers_the_reference_question() {
    let model = smollm2();
    // The raw ChatML prompt of the reference answer: SmolLM2's own template adds a system
    // message, and the 135M model's answer to that is not reliably right.
    let prompt =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let out = vibrant(&["-m", &model, "--temp", "0", "ask", "--raw", prompt], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "The capital of France is Paris.");
}

/// The reference answer with keys and values in a q8_0 cache, spelled as llama.cpp spells it,
/// on the CPU; --verbose reports the cache.
#[test]
fn ask_answers_with_a_q8_0_kv_cache() {
    let model = smollm2();
    let prompt =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let args = [
        "-m",
        &model,
        "--temp",
        "0",
        "ask",
        "--raw",
        "-ctk",
        "q8_0",
        "-ctv",
        "q8_0",
        "-c",
        "512",
        "--verbose",
        prompt,
    ];
    let out = vibrant(&args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "The capital of France is Paris.");
    // 30 layers of 512 positions of 192 keys and 192 values, 34 bytes per 32.
    let cache = format!(
        "KV cache: 512 tokens, K q8_0, V q8_0, {:.2} MiB",
        30.0 * 512.0 * 2.0 * 192.0 * 34.0 / 32.0 / 1048576.0
    );
    assert!(text(&out.stderr).contains(&cache), "{}", text(&out.stderr));
}

#[test]
fn an_unknown_cache_type_is_refused_by_flag() {
    for (flag, named) in [
        ("--cache-type-k", "--cache-type-k"),
        ("-ctk", "--cache-type-k"),
        ("-ctv", "--cache-type-v"),
    ] {
        let out = vibrant(
            &["ask", "-m", "/nonexistent.gguf", flag, "q4_9", "hi"],
            None,
        );
        assert_clean_error(&out, &format!("invalid value 'q4_9' for '{named}"));
        assert!(
            text(&out.stderr).contains("f16, q8_0"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn chat_reads_turns_from_a_pipe_and_resets() {
    let model = smollm2();
    // After /reset the same question starts from scratch: greedy decoding repeats the answer.
    let turns = "What is the capital of France?\n/reset\nWhat is the capital of France?\n/exit\nnever read\n";
    let out = vibrant(
        &["-m", &model, "--temp", "0", "-n", "24", "chat"],
        Some(turns),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answers: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[0], answers[1]);
    assert!(!answers[0].trim().is_empty(), "{answers:?}");
}

#[test]
fn a_missing_model_is_a_clean_error() {
    let out = vibrant(&["-m", "/nonexistent/model.gguf", "ask", "hi"], None);
    assert_clean_error(&out, "does not exist");
    let out = vibrant(&["-m", "no-such-model-name", "ask", "hi"], None);
    assert_clean_error(&out, "no model named 'no-such-model-name'");
}

#[test]
fn a_corrupt_or_foreign_file_is_a_clean_error() {
    let dir = std::env::temp_dir().join(format!("vibrant-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let foreign = dir.join("notes.gguf");
    std::fs::write(&foreign, b"these are not the weights you are looking for").unwrap();
    let out = vibrant(&["-m", foreign.to_str().unwrap(), "ask", "hi"], None);
    assert_clean_error(&out, "not a GGUF file");

    let real = std::fs::read(smollm2()).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &real[..real.len() / 2]).unwrap();
    let out = vibrant(&["-m", cut.to_str().unwrap(), "info"], None);
    assert_clean_error(&out, "past the end of the file");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_unsupported_tensor_type_is_named() {
    use vibrant::gguf::{GgufWriter, Value};
    use vibrant::quant::GgmlType;
    let dir = std::env::temp_dir().join(format!("vibrant-cli-type-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("iq.gguf");
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.add_tensor("token_embd.weight", &[32], GgmlType::Q8_0, vec![0; 34]);
    let mut bytes = Vec::new();
    w.write(&mut bytes).unwrap();
    // Retype the tensor as IQ2_XXS (ggml type 16): the type id sits right before its offset.
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 8;
    bytes[at..at + 4].copy_from_slice(&16u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let out = vibrant(&["-m", path.to_str().unwrap(), "info"], None);
    assert_clean_error(&out, "IQ2_XXS");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_prompt_longer_than_the_context_is_a_clean_error() {
    let model = smollm2();
    let long = "word ".repeat(200);
    let out = vibrant(&["-m", &model, "--ctx-size", "64", "ask", &long], None);
    assert_clean_error(&out, "context");
}

#[test]
fn a_gpu_api_this_machine_lacks_is_named() {
    let model = smollm2();
    let api = if cfg!(target_os = "macos") {
        "dx12"
    } else {
        "metal"
    };
    let out = vibrant(
        &[
            "-m",
            &model,
            "--device",
            "gpu",
            "--backend",
            api,
            "ask",
            "hi",
        ],
        None,
    );
    assert_clean_error(&out, "no such adapter");
}

/// `--backend` alone picks the GPU (an unknown API is refused, not ignored for the CPU), and
/// it contradicts `--device cpu`.
#[test]
fn a_gpu_api_without_a_gpu_device_is_not_ignored() {
    let model = smollm2();
    let out = vibrant(&["-m", &model, "--backend", "nosuch", "ask", "hi"], None);
    assert_clean_error(&out, "unknown GPU backend 'nosuch'");
    let out = vibrant(
        &[
            "-m",
            &model,
            "--device",
            "cpu",
            "--backend",
            "vulkan",
            "ask",
            "hi",
        ],
        None,
    );
    assert_clean_error(&out, "do not go with --device cpu");
}

#[test]
fn a_gpu_wait_longer_than_the_timeout_ends_in_seconds() {
    let model = smollm2();
    let started = std::time::Instant::now();
    let out = vibrant(
        &[
            "-m",
            &model,
            "--device",
            "gpu",
            "--gpu-timeout",
            "0.000001",
            "ask",
            "--raw",
            "hello",
        ],
        None,
    );
    assert_clean_error(&out, "timed out");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn info_describes_a_model() {
    let out = vibrant(&["info", &smollm2()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info = text(&out.stdout);
    for want in [
        "architecture:   llama",
        "layers:         30",
        "Q4_1",
        "chat template:  from file",
        "context length: 8192",
        "blocks:         llama: pre-norm attention and feed-forward",
    ] {
        assert!(info.contains(want), "{want:?} missing from:\n{info}");
    }
}

/// Gemma 3 270M: its blocks described, and, a base model without a chat template, its
/// prompt completed as it is (llama.cpp's greedy text starts the same).
#[test]
fn a_base_model_without_a_chat_template_completes_plain_prompts() {
    let out = vibrant(&["info", "gemma3-270m"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info = text(&out.stdout);
    for want in [
        "chat template:  none (a base model",
        "blocks:         gemma3: per-head QK-norm, post-norms, sliding window 512 on 15 of 18 \
         layers (RoPE base 10000 there), embeddings scaled by 25.30",
    ] {
        assert!(info.contains(want), "{want:?} missing from:\n{info}");
    }
    let prompt = "The capital of France is";
    let args = ["ask", "-m", "gemma3-270m", "--temp", "0", "-n", "8", prompt];
    let out = vibrant(&args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer = text(&out.stdout);
    assert!(
        answer.starts_with(" the capital of the country of France"),
        "{answer:?}"
    );
    let out = vibrant(&["chat", "-m", "gemma3-270m"], Some("hello\n"));
    assert_clean_error(&out, "no tokenizer.chat_template");
}

/// The options a `--help` lists, each spelling once per line (`-p`, `--n-prompt`).
fn listed_options(help: &str) -> Vec<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .flat_map(|l| {
            let names = l.split("  ").next().unwrap_or("");
            names
                .split(", ")
                .map(|n| n.split(' ').next().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn help_of(subcommand: &str) -> Vec<String> {
    let out = vibrant(&[subcommand, "--help"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    listed_options(&text(&out.stdout))
}

#[test]
fn each_subcommand_lists_only_the_options_it_takes_each_once() {
    let subcommands = [
        "ask", "chat", "info", "models", "devices", "bench", "verify", "synth",
    ];
    for sub in subcommands {
        let options = help_of(sub);
        let mut seen = std::collections::HashSet::new();
        for o in &options {
            assert!(seen.insert(o), "`vibrant {sub} --help` lists {o} twice");
        }
    }
    let has = |sub: &str, wanted: &[&str], unwanted: &[&str]| {
        let options = help_of(sub);
        for w in wanted {
            assert!(
                options.iter().any(|o| o == w),
                "{sub} lacks {w}: {options:?}"
            );
        }
        for u in unwanted {
            assert!(!options.iter().any(|o| o == u), "{sub} lists {u}");
        }
    };
    let sampling = [
        "--temp",
        "--top-k",
        "--top-p",
        "--min-p",
        "--repeat-penalty",
        "--seed",
    ];
    let model_and_device = ["--model", "--device", "--backend", "--adapter", "--threads"];
    let context = [
        "--ctx-size",
        "--batch-size",
        "--cache-type-k",
        "--cache-type-v",
    ];
    for sub in ["ask", "chat"] {
        has(sub, &sampling, &[]);
        has(sub, &model_and_device, &[]);
        has(sub, &context, &["--n-gen"]);
        has(
            sub,
            &["--max-tokens", "--system", "--stop", "--gpu-timeout"],
            &[],
        );
    }
    for sub in ["synth", "models"] {
        has(sub, &[], &sampling[..5]); // synth's own --seed seeds its weights

        has(sub, &[], &model_and_device);
        has(sub, &[], &context);
        has(sub, &[], &["--max-tokens", "--gpu-timeout", "--verbose"]);
    }
    has("info", &model_and_device, &sampling);
    has("info", &context, &["--max-tokens"]);
    has(
        "devices",
        &["--backend"],
        &["--model", "--temp", "--device"],
    );
    has("verify", &["--model", "--backend", "--adapter"], &sampling);
    has("verify", &["--threads"], &["--device", "--ctx-size"]);
    has("verify", &context[2..], &[]);
    let bench = [
        "-p",
        "--n-prompt",
        "-n",
        "--n-gen",
        "-d",
        "--n-depth",
        "-b",
        "--batch-size",
        "--ubatch-size",
        "-r",
        "--repetitions",
        "-o",
        "--output",
        "--sampling",
        "--profile",
        "--model",
        "--device",
        "--threads",
        "--cache-type-k",
        "--cache-type-v",
    ];
    has("bench", &bench, &sampling);
    has("bench", &[], &["--max-tokens", "--ctx-size"]);
}

#[test]
fn options_work_before_and_after_the_subcommand() {
    let model = smollm2();
    let prompt =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let before = vibrant(
        &[
            "--device", "cpu", "-m", &model, "--temp", "0", "-n", "8", "ask", "--raw", prompt,
        ],
        None,
    );
    let after = vibrant(
        &[
            "ask", "--raw", "-m", &model, "--device", "cpu", "--temp=0", "-n8", prompt,
        ],
        None,
    );
    assert!(before.status.success(), "{}", text(&before.stderr));
    assert!(after.status.success(), "{}", text(&after.stderr));
    assert_eq!(text(&before.stdout), text(&after.stdout));
    assert!(
        text(&after.stdout).contains("Paris"),
        "{}",
        text(&after.stdout)
    );
    // An option a subcommand does not take is refused by name, wherever it is written.
    let out = vibrant(
        &[
            "--temp",
            "0",
            "synth",
            "--preset",
            "qwen2.5-0.5b",
            "-o",
            "/dev/null",
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("'--temp'"),
        "{}",
        text(&out.stderr)
    );
    let out = vibrant(&["models", "-m", &model], None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("'-m'"), "{}", text(&out.stderr));
}

#[test]
fn out_of_range_sampling_values_are_refused_by_flag() {
    let cases = [
        ("--temp", "-0.5"),
        ("--temp", "nan"),
        ("--temp", "inf"),
        ("--top-p", "1.5"),
        ("--top-p", "-0.1"),
        ("--min-p", "2"),
        ("--min-p", "NaN"),
        ("--repeat-penalty", "0"),
        ("--repeat-penalty", "-1"),
        ("--repeat-penalty", "inf"),
    ];
    for (flag, value) in cases {
        for sub in [&["ask", "hi"][..], &["chat"]] {
            // Refused before the model is looked for: the missing file is never reached.
            let mut args = vec!["-m", "/nonexistent.gguf", flag, value];
            args.extend_from_slice(sub);
            let out = vibrant(&args, None);
            assert_clean_error(&out, &format!("{flag} must be"));
        }
    }
    // The edges of each range are accepted (the run then fails on the missing model).
    let out = vibrant(
        &[
            "ask",
            "-m",
            "/nonexistent.gguf",
            "--temp",
            "0",
            "--top-p",
            "1",
            "--min-p",
            "0",
            "hi",
        ],
        None,
    );
    assert_clean_error(&out, "does not exist");
}

fn bench_json(args: &[&str]) -> Vec<serde_json::Value> {
    let model = smollm2();
    let mut all = vec!["bench", "-m", &model, "-t", "2", "-o", "json"];
    all.extend_from_slice(args);
    let out = vibrant(&all, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    json.as_array().expect("an array of rows").clone()
}

#[test]
fn bench_runs_every_combination_of_its_lists() {
    let rows = bench_json(&[
        "-p",
        "8,16",
        "-n",
        "2",
        "-d",
        "0,4",
        "-b",
        "4",
        "-ub",
        "2,8",
        "-r",
        "2",
        "--sampling",
    ]);
    let got: Vec<(u64, u64, u64, u64, String)> = rows
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
            let test = r["test"].as_str().unwrap().to_string();
            (n("n_ubatch"), n("n_prompt"), n("n_gen"), n("n_depth"), test)
        })
        .collect();
    let mut want = Vec::new();
    for ub in [2, 8] {
        for (d, at) in [(0, ""), (4, " @ d4")] {
            want.push((ub, 8, 0, d, format!("pp8{at}")));
            want.push((ub, 16, 0, d, format!("pp16{at}")));
            want.push((ub, 0, 2, d, format!("tg2{at}")));
        }
    }
    assert_eq!(got, want);
    for r in &rows {
        // llama-bench's field names, with the values they have there.
        for key in [
            "model_filename",
            "model_type",
            "model_size",
            "model_n_params",
            "n_batch",
            "n_ubatch",
            "n_threads",
            "n_prompt",
            "n_gen",
            "n_depth",
            "test_time",
            "avg_ns",
            "stddev_ns",
            "avg_ts",
            "stddev_ts",
            "samples_ns",
            "samples_ts",
            "backends",
        ] {
            assert!(r.get(key).is_some(), "{key} missing from {r}");
        }
        assert_eq!(r["n_batch"], 4);
        assert_eq!(r["n_threads"], 2);
        assert_eq!(r["backends"], "CPU");
        assert_eq!(r["sampling"], true);
        assert!(r["model_filename"]
            .as_str()
            .unwrap()
            .ends_with("smollm2-135m.gguf"));
        assert!(
            r["model_type"].as_str().unwrap().starts_with("llama 135M"),
            "{r}"
        );
        assert!(r["model_n_params"].as_u64().unwrap() > 100_000_000);
        let samples_ns = r["samples_ns"].as_array().unwrap();
        let samples_ts = r["samples_ts"].as_array().unwrap();
        assert_eq!((samples_ns.len(), samples_ts.len()), (2, 2));
        let tokens = r["n_prompt"].as_f64().unwrap() + r["n_gen"].as_f64().unwrap();
        for (ns, ts) in samples_ns.iter().zip(samples_ts) {
            let (ns, ts) = (ns.as_f64().unwrap(), ts.as_f64().unwrap());
            assert!((ts - tokens * 1e9 / ns).abs() < 1e-6 * ts, "{r}");
        }
        let avg_ts = r["avg_ts"].as_f64().unwrap();
        assert!(avg_ts > 0.0 && avg_ts.is_finite(), "{r}");
        let time = r["test_time"].as_str().unwrap();
        assert!(time.len() == 20 && time.ends_with('Z'), "{time}");
    }
}

/// llama-bench's -ctk and -ctv lists: every combination, named in the rows as llama-bench names
/// them.
#[test]
fn bench_runs_each_cache_type() {
    let rows = bench_json(&[
        "-p", "8", "-n", "2", "-r", "1", "-ctk", "f16,q8_0", "-ctv", "q8_0",
    ]);
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            let s = |k: &str| {
                r[k].as_str()
                    .unwrap_or_else(|| panic!("{k} in {r}"))
                    .to_string()
            };
            (s("type_k"), s("type_v"), s("test"))
        })
        .collect();
    let row = |k: &str, test: &str| (k.to_string(), "q8_0".to_string(), test.to_string());
    let want = [
        row("f16", "pp8"),
        row("f16", "tg2"),
        row("q8_0", "pp8"),
        row("q8_0", "tg2"),
    ];
    assert_eq!(got, want);
}

#[test]
fn bench_prints_one_markdown_row_per_test() {
    let model = smollm2();
    let out = vibrant(
        &[
            "--device", "cpu", "-m", &model, "-t", "2", "bench", "-p", "8", "-n", "2", "-d", "0,4",
            "-r", "1",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let header = "| model | size | params | backend | threads | test | t/s |";
    assert!(table.contains(header), "{table}");
    let tests: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| llama"))
        .map(|l| l.split(" | ").nth(5).unwrap())
        .collect();
    assert_eq!(tests, ["pp8", "tg2", "pp8 @ d4", "tg2 @ d4"], "{table}");
}

/// `--profile` times a prompt step where the first prompt is not empty, and a generated
/// token always, whatever the lists ask (a 0-token prompt once panicked, and 2 generated
/// tokens left no room for the host timing's 16).
#[test]
fn bench_profiles_whatever_the_lists() {
    let model = smollm2();
    for (lists, prompt_step) in [
        (["-p", "0", "-n", "2"], false),
        (["-p", "8", "-n", "0"], true),
    ] {
        let mut args = vec![
            "--device",
            "gpu",
            "-m",
            &model,
            "bench",
            "-r",
            "1",
            "--profile",
        ];
        args.extend(lists);
        let out = vibrant(&args, None);
        assert!(out.status.success(), "{lists:?}: {}", text(&out.stderr));
        let report = text(&out.stdout);
        assert_eq!(
            report.contains("profile of one prompt step"),
            prompt_step,
            "{report}"
        );
        assert!(
            report.contains("profile of one generated token"),
            "{report}"
        );
    }
}

#[test]
fn bench_refuses_lists_it_cannot_run() {
    let model = smollm2();
    let cases: [(&[&str], &str); 5] = [
        (&["-p", "0", "-n", "0"], "nothing to run"),
        (&["-r", "0"], "-r must be at least 1"),
        (&["-ub", "0"], "-b and -ub must be at least 1"),
        (&["-p", "8-1x"], "not a token count"),
        (&["--profile", "-o", "json"], "--profile"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["bench", "-m", &model];
        all.extend_from_slice(args);
        let out = vibrant(&all, None);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = text(&out.stderr);
        assert!(
            err.contains("error:") && err.contains(expected),
            "{args:?}: {err}"
        );
    }
}

/// A readable GGUF of an architecture vibrant cannot run: mamba's keys, two small tensors.
fn write_mamba(path: &std::path::Path) {
    use vibrant::gguf::{GgufWriter, Value};
    use vibrant::quant::GgmlType;
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("mamba".into()));
    w.set("general.name", Value::String("tiny mamba".into()));
    w.set("mamba.block_count", Value::U32(2));
    w.set("mamba.embedding_length", Value::U32(32));
    w.add_tensor(
        "token_embd.weight",
        &[32, 4],
        GgmlType::Q8_0,
        vec![0; 4 * 34],
    );
    w.add_tensor("output_norm.weight", &[32], GgmlType::F32, vec![0; 32 * 4]);
    w.write_file(path).unwrap();
}

#[test]
fn info_describes_a_file_whose_architecture_vibrant_cannot_run() {
    let dir = std::env::temp_dir().join(format!("vibrant-cli-arch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mamba.gguf");
    write_mamba(&path);
    let out = vibrant(&["info", path.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info = text(&out.stdout);
    for want in [
        "name:           tiny mamba",
        "architecture:   mamba",
        "(2 tensors)",
        "runs in vibrant: no: architecture 'mamba' is not supported",
        "Q8_0",
        "F32",
        "metadata (4 keys):",
        "mamba.block_count = 2",
    ] {
        assert!(info.contains(want), "{want:?} missing from:\n{info}");
    }
    assert!(
        !info.contains("layers:"),
        "no runnable config to describe:\n{info}"
    );
    // Running it is an error that names the architecture.
    let out = vibrant(&["bench", "-m", path.to_str().unwrap(), "-r", "1"], None);
    assert_clean_error(&out, "architecture 'mamba' is not supported");
    std::fs::remove_dir_all(&dir).ok();
}

/// Every family's tiny preset through every command on both backends (issue 12): `ask` on
/// the CPU and the GPU, `chat` through its template, `bench`, `perplexity` and `verify` (the
/// GPU's logits against the CPU reference's). The logits themselves are checked against
/// llama.cpp's in tests/families.rs.
#[test]
fn every_family_runs_every_command() {
    let dir = std::env::temp_dir().join(format!("vibrant-cli-families-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text_file = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/perplexity.txt");
    for preset in vibrant::synth::TINY_PRESETS {
        let model = dir.join(format!("{preset}.gguf"));
        let model = model.to_str().unwrap();
        let ok = |args: &[&str], stdin: Option<&str>| {
            let out = vibrant(args, stdin);
            assert!(
                out.status.success(),
                "{preset}: vibrant {args:?}: {}",
                text(&out.stderr)
            );
            text(&out.stdout)
        };
        ok(
            &["synth", "--preset", preset, "--mix", "q8_0", "-o", model],
            None,
        );
        for device in ["cpu", "gpu"] {
            let answer = ok(
                &[
                    "ask",
                    "--device",
                    device,
                    "-m",
                    model,
                    "--temp",
                    "0",
                    "-n",
                    "4",
                    "--raw",
                    "The quick",
                ],
                None,
            );
            assert!(
                !answer.trim().is_empty(),
                "{preset} on the {device}: no answer"
            );
            ok(
                &["chat", "--device", device, "-m", model, "-n", "4"],
                Some("Hello\n/exit\n"),
            );
            ok(
                &[
                    "bench", "--device", device, "-m", model, "-p", "16", "-n", "4", "-r", "1",
                ],
                None,
            );
            let ppl = ok(
                &[
                    "perplexity",
                    "--device",
                    device,
                    "-m",
                    model,
                    "-f",
                    text_file,
                    "-c",
                    "64",
                    "--chunks",
                    "1",
                ],
                None,
            );
            assert!(ppl.contains("Final estimate: PPL"), "{preset}: {ppl}");
        }
        ok(&["verify", "-m", model, "--steps", "4"], None);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `--backend cuda` in a build without the CUDA backend says how to get it, from every command
/// that runs a model (verify included, which compares the GPU `--device gpu` picks).
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_in_a_build_without_it_is_a_clear_error() {
    let model = smollm2();
    for command in [
        &["ask", "-m", &model, "--backend", "cuda", "Hi"][..],
        &["verify", "-m", &model, "--backend", "cuda"],
        &[
            "bench",
            "-m",
            &model,
            "--backend",
            "cuda",
            "-p",
            "8",
            "-n",
            "0",
        ],
    ] {
        let out = vibrant(command, None);
        assert_clean_error(&out, "built without the CUDA backend");
    }
}
