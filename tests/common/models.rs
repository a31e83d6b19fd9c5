//! The real models the tests read (fetched by `scripts/fetch_model.py` into
//! `$VIBRANT_MODELS`), and greedy decoding by hand over any backend.

use std::path::PathBuf;
use std::sync::Arc;
use vibrant::backend::Backend;
use vibrant::gguf::GgufFile;
use vibrant::model::{LoadOptions, Transformer};
use vibrant::perplexity;
use vibrant::tokenizer::Tokenizer;

/// The path of model `name`; a missing model fails the test, saying how to fetch it.
pub fn model_path(name: &str) -> PathBuf {
    let path = vibrant::catalog::models_dir().join(format!("{name}.gguf"));
    assert!(
        path.is_file(),
        "{} is missing: run `python3 scripts/fetch_model.py {name}` first (or set VIBRANT_MODELS)",
        path.display()
    );
    path
}

/// Model `name`'s file and tokenizer.
pub fn open(name: &str) -> (Arc<GgufFile>, Tokenizer) {
    let file = Arc::new(GgufFile::open(model_path(name)).unwrap_or_else(|e| panic!("{e}")));
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    (file, tokenizer)
}

/// A short context for the greedy comparisons: 512 tokens, read 64 at a time.
pub fn short_context() -> LoadOptions {
    LoadOptions {
        n_ctx: 512,
        n_batch: 64,
        ..LoadOptions::default()
    }
}

/// Greedy decoding by hand: the prompt, then `steps` argmax tokens fed back one at a time.
pub fn greedy<B: Backend>(model: &mut Transformer<B>, prompt: &[u32], steps: usize) -> Vec<u32> {
    model.forward(prompt).unwrap();
    let mut out = Vec::new();
    for _ in 0..steps {
        let next = model.argmax().unwrap();
        out.push(next);
        model.forward(&[next]).unwrap();
    }
    out
}

/// The text the perplexity tests score.
pub fn perplexity_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/perplexity.txt");
    std::fs::read_to_string(path).unwrap()
}

/// llama-perplexity's figures over tests/data/perplexity.txt in chunks of 128 tokens
/// (`llama-perplexity -m MODEL -f tests/data/perplexity.txt -c 128 --no-repack -t 2`,
/// llama.cpp 0c1e570 built by ../shared/anchors/build-llama-cpu.sh, 2026-12-04).
pub const LLAMA_CPP_PPL: [(&str, f64); 3] = [
    ("smollm2-135m", 30.6907),
    ("qwen2.5-coder-0.5b", 44.3779),
    ("qwen2.5-coder-1.5b-q4", 18.2863),
];

/// Model `name`'s perplexity over the text in chunks of 128 tokens, each read `n_batch` at a
/// time.
pub fn perplexity_of<B: Backend>(name: &str, backend: B, n_batch: usize) -> f64 {
    let (file, tokenizer) = open(name);
    let tokens = perplexity::tokenize(&tokenizer, &perplexity_text()).unwrap();
    let chunks = perplexity::chunk_count("perplexity.txt", tokens.len(), 128, None).unwrap();
    let options = LoadOptions {
        n_ctx: 128,
        n_batch,
        ..LoadOptions::default()
    };
    let mut m = Transformer::load(&file, backend, &options).unwrap();
    let bos = tokenizer.prompt_bos();
    let stats = perplexity::score_text(&mut m, &tokens, 128, chunks, bos, None, |_, _| {}).unwrap();
    stats.estimate().unwrap().0
}

/// Fails unless `ppl` is within 1% of llama-perplexity's figure for model `name`.
pub fn check_against_llama_cpp(name: &str, ppl: f64) {
    let (_, want) = LLAMA_CPP_PPL.iter().find(|(n, _)| *n == name).unwrap();
    let off = ppl / want - 1.0;
    eprintln!(
        "{name}: PPL {ppl:.4}, llama.cpp {want:.4} ({:+.2} %)",
        100.0 * off
    );
    assert!(
        off.abs() < 0.01,
        "{name}: perplexity {ppl:.4} is {:+.2} % from llama.cpp's {want}",
        100.0 * off
    );
}
