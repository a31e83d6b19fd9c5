//! Perplexity and KL divergence of a model over a text, measured as llama.cpp's
//! `llama-perplexity` measures them, so that the figures of the two engines compare directly:
//! the text is tokenized once (BOS first where the vocabulary wants it) and cut into
//! non-overlapping chunks of `n_ctx` tokens; each chunk runs from an empty cache with BOS in
//! its first place, and only its second half is scored (every scored token has at least
//! `n_ctx / 2` tokens of context).
//!
//! [`LogProbWriter`] saves one engine's log-probabilities in llama.cpp's
//! `--kl-divergence-base` file format and [`KlStats`] compares another engine's logits with
//! them, so either engine can be the base of the other.

mod kl;
mod logprobs;

pub use kl::{KlStats, KlSummary};
pub use logprobs::{LogProbReader, LogProbWriter};

use crate::backend::Backend;
use crate::model::{ModelError, Transformer};
use crate::tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum PerplexityError {
    #[error("{path}: the text tokenizes to only {got} tokens; a context of {n_ctx} needs at least {} (two chunks)", 2 * n_ctx)]
    TooShort {
        path: String,
        got: usize,
        n_ctx: usize,
    },
    #[error("the context of a chunk must be at least 4 tokens (got {0})")]
    ContextTooSmall(usize),
    #[error("{path}: {what}")]
    File { path: String, what: String },
    #[error(transparent)]
    Model(#[from] ModelError),
}

pub type Result<T> = std::result::Result<T, PerplexityError>;

/// The text's tokens as llama-perplexity reads them: without parsing special tokens, with BOS
/// first where the vocabulary adds one.
pub fn tokenize(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let mut tokens = tokenizer
        .encode(text, false)
        .map_err(|e| PerplexityError::File {
            path: tokenizer.path().display().to_string(),
            what: e.to_string(),
        })?;
    if let Some(bos) = tokenizer.prompt_bos() {
        tokens.insert(0, bos);
    }
    Ok(tokens)
}

/// How many whole chunks of `n_ctx` tokens to score: all the text holds, or at most
/// `max_chunks`. A text shorter than two chunks is refused, as llama-perplexity refuses it.
pub fn chunk_count(
    path: &str,
    n_tokens: usize,
    n_ctx: usize,
    max_chunks: Option<usize>,
) -> Result<usize> {
    if n_ctx < 4 {
        return Err(PerplexityError::ContextTooSmall(n_ctx));
    }
    if n_tokens < 2 * n_ctx {
        return Err(PerplexityError::TooShort {
            path: path.to_string(),
            got: n_tokens,
            n_ctx,
        });
    }
    let all = n_tokens / n_ctx;
    Ok(max_chunks.map_or(all, |k| k.min(all)))
}

/// Index of the first scored position of a chunk: its second half.
pub fn first_scored(n_ctx: usize) -> usize {
    n_ctx / 2
}

/// The logits that predict the scored tokens of one chunk, `[n_ctx - 1 - n_ctx / 2, n_vocab]`:
/// row i is the model's output at position `n_ctx / 2 + i`, predicting the token after it.
/// The chunk runs from an empty cache, with `bos` (if any) in place of its first token.
pub fn chunk_logits<B: Backend>(
    model: &mut Transformer<B>,
    chunk: &[u32],
    bos: Option<u32>,
) -> Result<Vec<f32>> {
    let first = first_scored(chunk.len());
    let mut context = chunk[..first].to_vec();
    if let Some(bos) = bos {
        context[0] = bos;
    }
    model.truncate(0);
    model.forward(&context).map_err(ModelError::from)?;
    Ok(model.forward_all_logits(&chunk[first..chunk.len() - 1])?)
}

/// The negative log-likelihood of `token` under `logits`, computed as llama.cpp computes it
/// (f32 exponentials summed in f64).
pub fn token_nll(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum_exp: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    sum_exp.ln() - (logits[token as usize] - max) as f64
}

/// Running sums of the scored tokens' negative log-likelihoods.
#[derive(Clone, Debug, Default)]
pub struct NllStats {
    sum: f64,
    sum2: f64,
    count: usize,
}

impl NllStats {
    pub fn add(&mut self, nll: f64) {
        self.sum += nll;
        self.sum2 += nll * nll;
        self.count += 1;
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// exp(mean nll).
    pub fn perplexity(&self) -> f64 {
        (self.sum / self.count.max(1) as f64).exp()
    }

    /// The perplexity and its standard error, as llama-perplexity's closing line gives them;
    /// `None` with fewer than two tokens or no spread.
    pub fn estimate(&self) -> Option<(f64, f64)> {
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum2 / n - mean * mean;
        (self.count > 1 && var > 0.0).then(|| {
            let ppl = mean.exp();
            (ppl, (var / (n - 1.0)).sqrt() * ppl)
        })
    }
}

/// Scores the chunk's tokens against `logits` (as [`chunk_logits`] returns them) into `stats`.
pub fn score_chunk(chunk: &[u32], logits: &[f32], n_vocab: usize, stats: &mut NllStats) {
    let targets = &chunk[first_scored(chunk.len()) + 1..];
    for (row, &token) in logits.chunks_exact(n_vocab).zip(targets) {
        stats.add(token_nll(row, token));
    }
}

/// Scores `chunks` chunks of `n_ctx` tokens of `tokens` (see [`chunk_count`]), saving every
/// scored position's log-probabilities to `base` when given; `on_chunk` sees the running
/// figures after each chunk.
pub fn score_text<B: Backend>(
    model: &mut Transformer<B>,
    tokens: &[u32],
    n_ctx: usize,
    chunks: usize,
    bos: Option<u32>,
    mut base: Option<&mut LogProbWriter>,
    mut on_chunk: impl FnMut(usize, &NllStats),
) -> Result<NllStats> {
    let n_vocab = model.config.n_vocab;
    let mut stats = NllStats::default();
    for (i, chunk) in tokens.chunks_exact(n_ctx).take(chunks).enumerate() {
        let logits = chunk_logits(model, chunk, bos)?;
        match base.as_deref_mut() {
            Some(writer) => {
                let targets = &chunk[first_scored(n_ctx) + 1..];
                for (row, &token) in logits.chunks_exact(n_vocab).zip(targets) {
                    stats.add(writer.write_row(row, token)?);
                }
            }
            None => score_chunk(chunk, &logits, n_vocab, &mut stats),
        }
        on_chunk(i, &stats);
    }
    Ok(stats)
}

/// Compares the model with a base file's log-probabilities over the file's own tokens (at
/// most `max_chunks` of its chunks); `on_chunk` sees the running figures after each chunk.
pub fn kl_divergence<B: Backend>(
    model: &mut Transformer<B>,
    base: &mut LogProbReader,
    max_chunks: Option<usize>,
    bos: Option<u32>,
    mut on_chunk: impl FnMut(usize, &KlStats),
) -> Result<KlStats> {
    let n_vocab = model.config.n_vocab;
    if base.n_vocab != n_vocab {
        return Err(PerplexityError::File {
            path: base.path().display().to_string(),
            what: format!(
                "holds log-probabilities of {} tokens, but the model's vocabulary has {n_vocab}: it was made with another model",
                base.n_vocab
            ),
        });
    }
    let n_ctx = base.n_ctx;
    let chunks = max_chunks.map_or(base.n_chunk, |k| k.min(base.n_chunk));
    let tokens = base.tokens.clone();
    let width = logprobs::row_len(n_vocab);
    let mut stats = KlStats::default();
    for (i, chunk) in tokens.chunks_exact(n_ctx).take(chunks).enumerate() {
        let stored = base.next_chunk()?;
        let logits = chunk_logits(model, chunk, bos)?;
        let targets = &chunk[first_scored(n_ctx) + 1..];
        for ((row, stored), &token) in logits
            .chunks_exact(n_vocab)
            .zip(stored.chunks_exact(width))
            .zip(targets)
        {
            stats.add(row, &logprobs::StoredRow::new(stored, n_vocab), token);
        }
        on_chunk(i, &stats);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests;
