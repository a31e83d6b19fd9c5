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
    ] {
        assert!(info.contains(want), "{want:?} missing from:\n{info}");
    }
}
