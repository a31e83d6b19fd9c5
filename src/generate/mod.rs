//! The generation loop: prompt processing, sampling, streaming decode, stop conditions,
//! and the KV-cache reuse that makes multi-turn chat cheap.

mod stops;

pub use crate::sampling::{InvalidSetting, Sampler, SamplerConfig, Setting};
pub use stops::StopStrings;

use crate::backend::Backend;
use crate::model::{ContextFull, Decoder, ModelError, Transformer};
use crate::tokenizer::Tokenizer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    ContextFull(#[from] ContextFull),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the prompt is empty after tokenization")]
    EmptyPrompt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-turn token.
    EndOfTurn,
    StopString,
    MaxTokens,
    /// The context window filled up: the answer was cut there.
    ContextFull,
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    /// Prompt tokens actually run (those reused from the cache are not counted).
    pub prompt_tokens: usize,
    pub prompt_time: Duration,
    pub gen_time: Duration,
}

impl Generation {
    pub fn prompt_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }

    pub fn gen_tokens_per_second(&self) -> f64 {
        self.tokens.len() as f64 / self.gen_time.as_secs_f64().max(1e-9)
    }
}

pub struct GenerateOptions<'a> {
    pub max_tokens: usize,
    pub stops: StopStrings,
    pub cancel: Option<&'a AtomicBool>,
    pub picking: Picking,
}

/// Where an answer's tokens are picked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Picking {
    /// On the device, a token ahead of the host, where the sampler's settings allow
    /// ([`SamplerConfig::fits_device`]); else on the host.
    #[default]
    Device,
    /// On the host from the logits read back after each step: slower, the reference the
    /// device's picks are tested against.
    Host,
}

/// A model with the token history its KV cache holds, so that a new prompt sharing a prefix
/// with the last one only runs the new tokens.
pub struct Session<B: Backend> {
    pub model: Transformer<B>,
    pub tokenizer: Tokenizer,
    cached: Vec<u32>,
}

impl<B: Backend> Session<B> {
    pub fn new(model: Transformer<B>, tokenizer: Tokenizer) -> Self {
        Self {
            model,
            tokenizer,
            cached: Vec::new(),
        }
    }

    pub fn reset(&mut self) {
        self.cached.clear();
        self.model.truncate(0);
    }

    /// Prompt text → tokens, with BOS when the vocabulary wants one and the text lacks it.
    pub fn tokenize_prompt(&self, text: &str) -> Result<Vec<u32>, GenerateError> {
        let mut tokens = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| ModelError::Invalid {
                path: "prompt".into(),
                what: e.to_string(),
            })?;
        if let Some(bos) = self.tokenizer.prompt_bos() {
            if tokens.first() != Some(&bos) {
                tokens.insert(0, bos);
            }
        }
        if tokens.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        Ok(tokens)
    }

    /// Runs the prompt (reusing the cached prefix) and samples until a stop condition,
    /// handing each piece of decoded text to `on_text` as soon as it is complete.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        sampler: &mut Sampler,
        options: &GenerateOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation, GenerateError> {
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if prompt.len() > self.model.n_ctx() {
            return Err(ContextFull {
                needed: prompt.len(),
                n_ctx: self.model.n_ctx(),
                n_ctx_train: self.model.config.n_ctx_train,
            }
            .into());
        }
        // Reuse the cached prefix, but always run at least the last prompt token for its logits.
        let reuse = common_prefix(&self.cached, prompt).min(prompt.len() - 1);
        self.model.truncate(reuse);
        self.cached.truncate(reuse);
        sampler.reset();
        prompt.iter().for_each(|&t| sampler.accept(t));

        let started = Instant::now();
        let fresh = &prompt[reuse..];
        self.model.forward(fresh)?;
        self.cached.extend_from_slice(fresh);
        let config = sampler.config();
        let mut source = if options.picking == Picking::Host {
            Source::Host(&mut self.model)
        } else if config.is_plain_greedy() {
            Source::Device(self.model.greedy())
        } else if config.fits_device() {
            self.model
                .backend
                .start_sampling(sampler)
                .map_err(ModelError::from)?;
            Source::Device(self.model.sampled())
        } else {
            Source::Host(&mut self.model)
        };
        let mut next = source.next(sampler)?;
        let prompt_time = started.elapsed();

        let gen_started = Instant::now();
        let mut decoder = self.tokenizer.stream_decoder();
        let mut stops = options.stops.clone();
        let mut tokens = Vec::new();
        let mut text = String::new();
        let mut emit = |piece: &str, text: &mut String| {
            on_text(piece);
            text.push_str(piece);
        };
        let stop = loop {
            if options.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                break StopReason::Cancelled;
            }
            if self.tokenizer.is_stop(next) {
                break StopReason::EndOfTurn;
            }
            tokens.push(next);
            sampler.accept(next);
            let piece = decoder.push(next);
            let (ready, hit) = stops.feed(&piece);
            emit(&ready, &mut text);
            if hit {
                break StopReason::StopString;
            }
            if tokens.len() >= options.max_tokens {
                break StopReason::MaxTokens;
            }
            if !source.keep(next)? {
                break StopReason::ContextFull;
            }
            self.cached.push(next);
            next = source.next(sampler)?;
        };
        // Takes a token run ahead but not kept back out of the cache.
        drop(source);
        if stop != StopReason::StopString {
            let tail = decoder.finish();
            let (ready, _) = stops.feed(&tail);
            emit(&ready, &mut text);
            emit(&stops.flush(), &mut text);
        }
        Ok(Generation {
            tokens,
            text,
            stop,
            prompt_tokens: fresh.len(),
            prompt_time,
            gen_time: gen_started.elapsed(),
        })
    }
}

/// Where an answer's tokens come from.
enum Source<'a, B: Backend> {
    /// Picked on the device (its argmax or its sampler), a token ahead of the host.
    Device(Decoder<'a, B>),
    /// Sampled on the host from the logits, read back after each step.
    Host(&'a mut Transformer<B>),
}

impl<B: Backend> Source<'_, B> {
    fn next(&mut self, sampler: &mut Sampler) -> Result<u32, GenerateError> {
        match self {
            Self::Device(decoder) => {
                let token = decoder.next_token()?;
                sampler.count_device_draw();
                Ok(token)
            }
            Self::Host(model) => {
                let mut logits = model.logits()?;
                Ok(sampler.sample(&mut logits))
            }
        }
    }

    /// Puts `token`, the last one [`Self::next`] gave, in the KV cache so that decoding can
    /// go on; false when the context is full.
    fn keep(&mut self, token: u32) -> Result<bool, GenerateError> {
        match self {
            Self::Device(decoder) => Ok(decoder.fits()),
            Self::Host(model) => {
                if model.check_room(1).is_err() {
                    return Ok(false);
                }
                model.forward(&[token])?;
                Ok(true)
            }
        }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
