//! The tokenizer against llama.cpp's reference vectors (shared/testdata/vocab) and the
//! real models' vocabularies.

mod testdata;

use std::path::{Path, PathBuf};
use std::time::Instant;
use testdata::testdata;
use vibrant::gguf::GgufFile;
use vibrant::tokenizer::{DecodeOptions, Tokenizer, TokenizerError};

/// The vocabularies the streaming test runs on: one SentencePiece, byte-level ones, and
/// Gemma 4's byte-fallback BPE.
const STREAM_VOCABS: [&str; 5] = ["llama-spm", "llama-bpe", "qwen2", "gpt-2", "gemma-4"];
const CHATML: &str =
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn load(path: &Path) -> Tokenizer {
    let file = GgufFile::open(path).unwrap_or_else(|e| panic!("{e}"));
    Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{e}"))
}

fn vocab_dir() -> PathBuf {
    testdata().join("vocab")
}

/// Every `ggml-vocab-*.gguf` of the vocabulary folder, sorted; a missing or empty folder
/// fails the test.
fn vocab_files() -> Vec<PathBuf> {
    let dir = vocab_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("ggml-vocab-") && name.ends_with(".gguf")
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "{}: no ggml-vocab-*.gguf reference vocabularies",
        dir.display()
    );
    files
}

/// `ggml-vocab-NAME.gguf` → NAME.
fn vocab_name(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
    name.trim_start_matches("ggml-vocab-")
        .trim_end_matches(".gguf")
        .to_string()
}

/// One input and its expected ids.
struct Case {
    input: String,
    expected: Vec<u32>,
}

/// Reads NAME.gguf.inp / .out the way llama.cpp's test-tokenizer-0 does: inputs are
/// separated by "\n__ggml_vocab_test__\n" (so each input loses the newline before the
/// separator; the last one may or may not be followed by one), and line i of the .out
/// file holds the ids of input i.
fn read_cases(base: &Path) -> Vec<Case> {
    let vocab = base.display();
    let read = |ext: &str| {
        let path = base.with_extension(format!("gguf.{ext}"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let inputs = read("inp");
    let outputs = read("out");
    let separator = "\n__ggml_vocab_test__\n";
    let inputs: Vec<&str> = inputs
        .strip_suffix(separator)
        .unwrap_or(&inputs)
        .split(separator)
        .collect();
    let outputs: Vec<&str> = outputs.lines().collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{vocab}: inputs and outputs differ in count"
    );
    assert!(!inputs.is_empty(), "{vocab}: no test cases");
    inputs
        .iter()
        .zip(outputs)
        .map(|(input, ids)| Case {
            input: input.to_string(),
            expected: ids
                .split_whitespace()
                .map(|id| id.parse().unwrap())
                .collect(),
        })
        .collect()
}

/// Each id with its text, for failure messages.
fn describe(tok: &Tokenizer, ids: &[u32]) -> String {
    let parts: Vec<String> = ids
        .iter()
        .map(|&id| format!("{id} {:?}", tok.token_text(id).unwrap_or("?")))
        .collect();
    format!("[{}]", parts.join(", "))
}

fn stream_decode(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut decoder = tok.stream_decoder();
    let mut text = String::new();
    for &id in ids {
        text.push_str(&decoder.push(id));
    }
    text.push_str(&decoder.finish());
    text
}

#[test]
fn reference_vectors_encode_and_decode() {
    let mut failures = Vec::new();
    let mut checked = Vec::new();
    for path in vocab_files() {
        let vocab = vocab_name(&path);
        let opened = GgufFile::open(&path).map_err(TokenizerError::from);
        let tok = match opened.and_then(|file| Tokenizer::from_gguf(&file)) {
            Ok(tok) => tok,
            Err(e) => {
                failures.push(format!("{vocab}: {e}"));
                continue;
            }
        };
        let cases = read_cases(&path);
        checked.push(format!("{vocab} ({})", cases.len()));
        for case in cases {
            // llama.cpp's test tokenizes with parse_special = false.
            let got = tok.encode(&case.input, false).unwrap();
            if got != case.expected {
                failures.push(format!(
                    "{vocab}: encode {:?}\n  expected {}\n  got      {}",
                    case.input,
                    describe(&tok, &case.expected),
                    describe(&tok, &got)
                ));
            }
            let decoded = tok.decode(&case.expected);
            if decoded != case.input {
                failures.push(format!(
                    "{vocab}: decode {}\n  expected {:?}\n  got      {:?}",
                    describe(&tok, &case.expected),
                    case.input,
                    decoded
                ));
            }
            let streamed = stream_decode(&tok, &case.expected);
            if streamed != decoded {
                failures.push(format!(
                    "{vocab}: stream decode of {:?} gave {streamed:?}, full decode {decoded:?}",
                    case.input
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("checked {}", checked.join(", "));
}

/// Multi-byte characters split over byte tokens never come out half-done.
#[test]
fn streaming_never_splits_a_character() {
    let text = "Emoji 🦙😶‍🌫️ and 北京欢迎你 and Ελληνικά ✅";
    for vocab in STREAM_VOCABS {
        let tok = load(&vocab_dir().join(format!("ggml-vocab-{vocab}.gguf")));
        let ids = tok.encode(text, false).unwrap();
        assert!(
            ids.iter()
                .any(|&id| std::str::from_utf8(tok.piece(id)).is_err()),
            "{vocab}: no token of {text:?} is a partial character, so the test proves nothing"
        );
        let mut decoder = tok.stream_decoder();
        let mut streamed = String::new();
        for &id in &ids {
            // Every chunk is a String, so it is valid UTF-8 by construction; it must also
            // never hold a replacement character for a split sequence.
            let chunk = decoder.push(id);
            assert!(
                !chunk.contains('\u{FFFD}'),
                "{vocab}: broken character in {chunk:?}"
            );
            streamed.push_str(&chunk);
        }
        streamed.push_str(&decoder.finish());
        assert_eq!(streamed, text, "{vocab}: {}", describe(&tok, &ids));
    }
}

#[test]
fn special_tokens_are_parsed_only_when_asked() {
    let tok = load(&vocab_dir().join("ggml-vocab-qwen2.gguf"));
    let im_start = tok.token_id("<|im_start|>").unwrap();
    let im_end = tok.token_id("<|im_end|>").unwrap();
    let ids = tok.encode(CHATML, true).unwrap();
    assert_eq!(ids.iter().filter(|&&id| id == im_start).count(), 2);
    assert_eq!(ids.iter().filter(|&&id| id == im_end).count(), 1);
    let plain = tok.encode(CHATML, false).unwrap();
    assert!(!plain.contains(&im_start) && !plain.contains(&im_end));
    assert_eq!(tok.decode(&plain), CHATML);
    // Control tokens vanish from decoded text unless asked for.
    let shown = DecodeOptions {
        show_special: true,
        ..DecodeOptions::default()
    };
    assert_eq!(tok.decode_with(&ids, shown), CHATML);
    assert_eq!(
        tok.decode(&ids),
        "user\nWhat is the capital of France?\nassistant\n"
    );
}

#[test]
fn sentencepiece_prefixes_a_space_after_special_tokens() {
    let tok = load(&vocab_dir().join("ggml-vocab-llama-spm.gguf"));
    assert!(tok.add_bos());
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    let hello = tok.encode("Hello", false).unwrap();
    let ids = tok.encode("<s>Hello</s>Hello", true).unwrap();
    let expected: Vec<u32> = [&[1][..], &hello, &[2], &hello].concat();
    assert_eq!(ids, expected, "{}", describe(&tok, &ids));
    let kept = DecodeOptions {
        keep_leading_space: true,
        ..DecodeOptions::default()
    };
    assert_eq!(tok.decode_with(&hello, kept), " Hello");
    assert_eq!(tok.decode(&hello), "Hello");
}

#[test]
fn byte_level_vocabularies_know_their_bos_and_stop_tokens() {
    let bpe = load(&vocab_dir().join("ggml-vocab-llama-bpe.gguf"));
    assert!(bpe.add_bos(), "llama-bpe adds BOS by default");
    assert_eq!(bpe.bos_id(), Some(128000));
    for text in ["<|eot_id|>", "<|end_of_text|>"] {
        let id = bpe.token_id(text).unwrap();
        assert!(bpe.is_stop(id), "{text} should end generation");
    }
    let qwen = load(&vocab_dir().join("ggml-vocab-qwen2.gguf"));
    assert!(!qwen.add_bos());
    let im_end = qwen.token_id("<|im_end|>").unwrap();
    assert!(qwen.is_stop(im_end) && qwen.is_control(im_end));
    assert!(!qwen.is_stop(qwen.token_id("<|im_start|>").unwrap()));
}

/// The three installed models: ChatML prompts encode with single-id im tokens, and the
/// known greedy answers decode to text ending in a stop token.
#[test]
fn real_models_encode_chatml() {
    let models = [
        ("smollm2-135m", Some("504 3575 282 4649 314 7042 30 2")),
        ("qwen2.5-coder-0.5b", None),
        (
            "qwen2.5-coder-1.5b-q4",
            Some("785 6722 315 9625 374 12095 13 151645"),
        ),
    ];
    for (name, answer) in models {
        let path = vibrant::catalog::models_dir().join(format!("{name}.gguf"));
        let tok = load(&path);
        let ids = tok.encode(CHATML, true).unwrap();
        let im_start = tok.token_id("<|im_start|>").unwrap();
        let im_end = tok.token_id("<|im_end|>").unwrap();
        assert_eq!(ids[0], im_start, "{name}: {}", describe(&tok, &ids));
        assert_eq!(
            ids.iter().filter(|&&id| id == im_start).count(),
            2,
            "{name}"
        );
        assert_eq!(ids.iter().filter(|&&id| id == im_end).count(), 1, "{name}");
        assert!(
            tok.is_stop(im_end),
            "{name}: <|im_end|> must stop generation"
        );
        assert!(!tok.add_bos(), "{name}");
        let shown = DecodeOptions {
            show_special: true,
            ..DecodeOptions::default()
        };
        assert_eq!(tok.decode_with(&ids, shown), CHATML, "{name}");
        if let Some(answer) = answer {
            let answer: Vec<u32> = answer.split(' ').map(|id| id.parse().unwrap()).collect();
            let (last, text) = answer.split_last().unwrap();
            assert_eq!(
                tok.decode(text),
                "The capital of France is Paris.",
                "{name}"
            );
            assert!(tok.is_stop(*last), "{name}: {last} must stop generation");
            assert_eq!(*last, im_end, "{name}");
        }
    }
}

#[test]
fn qwen_vocabulary_loads_fast() {
    let file =
        GgufFile::open(vibrant::catalog::models_dir().join("qwen2.5-coder-1.5b-q4.gguf")).unwrap();
    let start = Instant::now();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(tok.vocab_size(), 151936);
    assert!(
        elapsed.as_millis() < 1000,
        "building the tokenizer took {elapsed:?}"
    );
}

#[test]
fn tokenizer_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
}
