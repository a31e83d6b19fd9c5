//! The real models the tests read (fetched by `scripts/fetch_model.py` into
//! `$VIBRANT_MODELS`), and greedy decoding by hand over any backend.

use std::path::PathBuf;
use std::sync::Arc;
use vibrant::backend::Backend;
use vibrant::gguf::GgufFile;
use vibrant::model::{LoadOptions, Transformer};
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
