//! The tokenizer on Gemma 3's SentencePiece vocabulary (262,144 tokens) against llama.cpp's
//! ids for the same texts (tests/data/gemma3-270m-tokenizer.json; tests/data/README.md says
//! how they were made). On the real model of `scripts/fetch_model.py gemma3-270m`: a missing
//! model fails the test.

use serde_json::Value;
use vibrant::gguf::GgufFile;
use vibrant::tokenizer::{DecodeOptions, Tokenizer};

const MODEL: &str = "gemma3-270m";

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

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/gemma3-270m-tokenizer.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
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
