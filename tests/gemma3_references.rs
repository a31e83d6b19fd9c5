//! Gemma 3 270M against llama.cpp's reference data (tests/data/gemma3-270m-*.json;
//! tests/data/README.md says how each was made): the tokenizer on its SentencePiece
//! vocabulary (262,144 tokens), and the sanity of the greedy and perplexity references that
//! the Gemma 3 forward pass (issue 12) is to be checked against. On the real model of
//! `scripts/fetch_model.py gemma3-270m`: a missing model fails the test.

use serde_json::Value;
use vibrant::gguf::GgufFile;
use vibrant::tokenizer::{DecodeOptions, Tokenizer};

const MODEL: &str = "gemma3-270m";
/// scripts/fetch_model.py checks the installed file against it.
const SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

fn tokenizer() -> Tokenizer {
    let path = vibrant::catalog::models_dir().join(format!("{MODEL}.gguf"));
    assert!(
        path.is_file(),
        "{} is missing: run `python3 scripts/fetch_model.py {MODEL}` first",
        path.display()
    );
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{e}"))
}

/// tests/data/gemma3-270m-NAME.json, checked to be of the installed model's file.
fn reference_of(name: &str) -> Value {
    let path = format!(
        "{}/tests/data/gemma3-270m-{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(value["sha256"], SHA256, "{path}: made from another file");
    value
}

fn reference() -> Value {
    reference_of("tokenizer")
}

fn ids(value: &Value) -> Vec<u32> {
    let list = value.as_array().expect("a list of ids");
    list.iter().map(|id| id.as_u64().unwrap() as u32).collect()
}

/// Each id with its vocabulary text, for failure messages.
fn describe(tok: &Tokenizer, ids: &[u32]) -> String {
    let parts: Vec<String> = ids
        .iter()
        .map(|&id| format!("{id} {:?}", tok.token_text(id).unwrap_or("?")))
        .collect();
    format!("[{}]", parts.join(", "))
}

#[test]
fn gemma3_tokenizes_as_llama_cpp_does() {
    let tok = tokenizer();
    let reference = reference();
    assert_eq!(tok.vocab_size(), 262_144);
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let shown = DecodeOptions {
        show_special: true,
        ..DecodeOptions::default()
    };
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        for (key, parse_special) in [("ids", false), ("ids_parse_special", true)] {
            let want = ids(&case[key]);
            let got = tok.encode(text, parse_special).unwrap();
            if got != want {
                failures.push(format!(
                    "encode {text:?} (parse_special {parse_special})\n  llama.cpp {}\n  vibrant   {}",
                    describe(&tok, &want),
                    describe(&tok, &got)
                ));
            }
        }
        // Gemma's vocabulary prefixes no space, so decoding gives back the text exactly; the
        // special tokens' text comes back only when asked for.
        let decoded = tok.decode(&ids(&case["ids"]));
        if decoded != text {
            failures.push(format!("decode of {text:?} gave {decoded:?}"));
        }
        let decoded = tok.decode_with(&ids(&case["ids_parse_special"]), shown);
        if decoded != text {
            failures.push(format!(
                "decode (special tokens shown) of {text:?} gave {decoded:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// llama-tokenize without `--no-bos` adds BOS (id 2) as the file's `add_bos_token` asks.
#[test]
fn gemma3_starts_prompts_with_bos() {
    let tok = tokenizer();
    let reference = reference();
    let with_bos = &reference["with_bos"];
    let want = ids(&with_bos["ids"]);
    assert!(tok.add_bos());
    let bos = tok.bos_id().expect("a BOS id");
    let text = with_bos["text"].as_str().unwrap();
    let got = [vec![bos], tok.encode(text, true).unwrap()].concat();
    assert_eq!(got, want, "{}", describe(&tok, &got));
    let eos = tok.eos_id().expect("an EOS id");
    assert!(tok.is_stop(eos), "<eos> must end generation");
    let end_of_turn = tok.token_id("<end_of_turn>").expect("<end_of_turn>");
    assert!(
        tok.is_stop(end_of_turn),
        "<end_of_turn> must end generation"
    );
}

/// The greedy references: each prompt tokenizes in vibrant to the ids llama.cpp ran (BOS
/// first), and the generated ids decode to the text llama.cpp printed. At least one prompt is
/// past Gemma 3's 512-token sliding window.
#[test]
fn gemma3_greedy_references_are_consistent() {
    let tok = tokenizer();
    let reference = reference_of("greedy");
    let runs = reference["runs"].as_array().unwrap();
    assert!(runs.len() >= 4, "{} runs", runs.len());
    let bos = tok.bos_id().unwrap();
    let mut longest = 0;
    for run in runs {
        let prompt = run["prompt"].as_str().unwrap();
        let want = ids(&run["prompt_ids"]);
        let got = [vec![bos], tok.encode(prompt, true).unwrap()].concat();
        assert_eq!(got, want, "prompt {prompt:?}");
        longest = longest.max(got.len());
        let generated = ids(&run["ids"]);
        let margins = run["margins"].as_array().unwrap();
        assert_eq!(margins.len(), generated.len(), "prompt {prompt:?}");
        assert!(margins.iter().all(|m| m.as_f64().unwrap() >= 0.0));
        let stopped = run["stop"] == "eos";
        assert_eq!(generated.len() == 32, !stopped, "prompt {prompt:?}");
        if stopped {
            assert!(tok.is_stop(*generated.last().unwrap()), "prompt {prompt:?}");
        }
        assert_eq!(
            tok.decode(&generated),
            run["text"].as_str().unwrap(),
            "prompt {prompt:?}: {}",
            describe(&tok, &generated)
        );
    }
    assert!(longest > 600, "the longest prompt has {longest} tokens");
}

/// The perplexity references: their texts hold the chunks they were scored in (two of 1024
/// tokens for the long text, whose scored halves all lie past the sliding window).
#[test]
fn gemma3_perplexity_references_are_consistent() {
    let tok = tokenizer();
    let reference = reference_of("perplexity");
    let figures = reference["figures"].as_array().unwrap();
    let mut sliding = false;
    for figure in figures {
        let args: Vec<&str> = figure["args"].as_str().unwrap().split(' ').collect();
        let (file, n_ctx) = (args[1], args[3].parse::<usize>().unwrap());
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let tokens = vibrant::perplexity::tokenize(&tok, &text).unwrap();
        let chunks = vibrant::perplexity::chunk_count(file, tokens.len(), n_ctx, None).unwrap();
        let ppl = figure["ppl"].as_f64().unwrap();
        assert!(ppl > 1.0 && ppl < 1000.0, "{figure}");
        eprintln!(
            "{file}: {} tokens, {chunks} chunks of {n_ctx}: {ppl}",
            tokens.len()
        );
        // Scored positions start at n_ctx / 2; from 512 on, the window hides the first ones.
        sliding |= n_ctx / 2 >= 512;
    }
    assert!(
        sliding,
        "no figure scores positions past the sliding window"
    );
}
