//! Model architectures: families described as data ([`arch`]), their weights loaded by GGUF
//! name, and the transformer forward pass, written once in blocks against the [`Backend`]
//! trait.

pub mod arch;
mod config;
mod forward;
mod step;
#[cfg(test)]
mod tests;
mod weights;

pub use config::{Config, ModelError, Result};
pub use step::SeqChunk;

use crate::backend::{Backend, Batch, CacheLayer, KvLayout, KvTypes, ARGMAX_SLOTS};
use crate::gguf::GgufFile;
use crate::quant::GgmlType;
use arch::{Ffn, Spec};
use forward::{Acts, MoeActs};
use std::sync::Arc;
use weights::{Loader, Weights};

/// Most bytes of logits [`Transformer::forward_all_logits`] computes in one step: 110 rows of
/// a 151,936-token vocabulary, within the smallest storage binding GPUs offer (128 MiB).
const LOGITS_BYTES: usize = 64 << 20;

/// Options fixed when a model is loaded.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Context window in tokens; 0 means the model's trained context.
    pub n_ctx: usize,
    /// Most tokens processed in one forward step during prompt processing.
    pub n_batch: usize,
    /// How the KV cache stores keys and values.
    pub kv_types: KvTypes,
    /// Sequences the KV cache keeps apart ([`Transformer::step`]), each of `n_ctx` tokens.
    pub n_seq: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            n_ctx: 4096,
            n_batch: 256,
            kv_types: KvTypes::default(),
            n_seq: 1,
        }
    }
}

/// A loaded model with its KV cache, bound to one backend.
pub struct Transformer<B: Backend> {
    pub config: Config,
    pub backend: B,
    spec: Spec,
    weights: Weights<B>,
    acts: Acts<B>,
    cache: B::KvCache,
    kv_types: KvTypes,
    /// Device memory the KV cache takes.
    kv_bytes: u64,
    /// Logits of many rows, for [`Self::forward_all_logits`]; made on its first call.
    all_logits: Option<B::Tensor>,
    n_ctx: usize,
    n_batch: usize,
    /// Tokens cached in each slot; the single-sequence API uses slot 0.
    past: Vec<usize>,
    /// `[n_seq, n_vocab]` logits of a step's one-token sequences; made on [`Self::step`]'s
    /// first call.
    step_logits: Option<B::Tensor>,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("the context is full: {needed} tokens needed, the context holds {n_ctx} (raise --ctx-size, up to the model's {n_ctx_train})")]
pub struct ContextFull {
    pub needed: usize,
    pub n_ctx: usize,
    pub n_ctx_train: usize,
}

impl<B: Backend> Transformer<B> {
    pub fn load(file: &Arc<GgufFile>, backend: B, options: &LoadOptions) -> Result<Self> {
        Self::load_spec(file, Spec::from_gguf(file)?, backend, options)
    }

    /// [`Self::load`] of the model `spec` describes, its weights read from `file`.
    pub fn load_spec(
        file: &Arc<GgufFile>,
        spec: Spec,
        mut backend: B,
        options: &LoadOptions,
    ) -> Result<Self> {
        let config = spec.config.clone();
        let n_ctx = match options.n_ctx {
            0 => config.n_ctx_train,
            n => n,
        };
        if n_ctx > config.n_ctx_train.max(1 << 20) {
            return Err(ModelError::Invalid {
                path: file.path().display().to_string(),
                what: format!("context size {n_ctx} is too large"),
            });
        }
        let n_batch = options.n_batch.clamp(1, n_ctx);
        let n_seq = options.n_seq.max(1);
        // The cache before the weights: a cache the heads do not fit is refused at once, and a
        // backend builds the kernels that write it as it uploads the projections.
        let held = backend.memory_used();
        let kv_types = options.kv_types;
        let cache = backend.kv_cache(&kv_layout(&spec, n_seq, n_ctx, kv_types))?;
        let kv_bytes = backend.memory_used() - held;
        let weights = Loader { file, spec: &spec }.weights(&mut backend, n_ctx)?;
        let acts = Acts::new(&mut backend, &spec, n_batch)?;
        Ok(Self {
            config,
            backend,
            spec,
            weights,
            acts,
            cache,
            kv_types,
            kv_bytes,
            all_logits: None,
            n_ctx,
            n_batch,
            past: vec![0; n_seq],
            step_logits: None,
        })
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// How the KV cache stores keys and values.
    pub fn kv_types(&self) -> KvTypes {
        self.kv_types
    }

    /// Device memory the KV cache takes, in bytes.
    pub fn kv_cache_bytes(&self) -> u64 {
        self.kv_bytes
    }

    /// Most tokens one forward step runs.
    pub fn n_batch(&self) -> usize {
        self.n_batch
    }

    /// Sequences the KV cache keeps apart.
    pub fn n_seq(&self) -> usize {
        self.past.len()
    }

    /// Tokens already in the KV cache (of slot 0).
    pub fn n_past(&self) -> usize {
        self.past[0]
    }

    /// Tokens already in cache slot `slot`.
    pub fn n_past_of(&self, slot: usize) -> usize {
        self.past[slot]
    }

    /// Forgets everything after the first `n` cached tokens (of slot 0).
    pub fn truncate(&mut self, n: usize) {
        self.truncate_slot(0, n);
    }

    /// Forgets everything after the first `n` tokens cached in slot `slot`.
    pub fn truncate_slot(&mut self, slot: usize, n: usize) {
        self.past[slot] = self.past[slot].min(n);
    }

    /// Starts greedy decoding from the logits of the last forward step; see [`Decoder`].
    pub fn greedy(&mut self) -> Decoder<'_, B> {
        Decoder::start(self, Pick::Argmax)
    }

    /// Starts decoding with the device's sampler from the logits of the last forward step:
    /// [`Backend::start_sampling`] must have been given the sampler's state. See [`Decoder`].
    pub fn sampled(&mut self) -> Decoder<'_, B> {
        Decoder::start(self, Pick::Sample)
    }

    /// Checks that `n` more tokens fit in the context (of slot 0).
    pub fn check_room(&self, n: usize) -> std::result::Result<(), ContextFull> {
        self.check_room_of(0, n)
    }

    /// Checks that `n` more tokens fit in the context of slot `slot`.
    pub fn check_room_of(&self, slot: usize, n: usize) -> std::result::Result<(), ContextFull> {
        let needed = self.past[slot] + n;
        if needed > self.n_ctx {
            return Err(ContextFull {
                needed,
                n_ctx: self.n_ctx,
                n_ctx_train: self.config.n_ctx_train,
            });
        }
        Ok(())
    }

    /// Runs the tokens through the model, appending them to the KV cache; afterwards the
    /// logits of the last token are ready for [`Self::logits`] or [`Self::argmax`].
    pub fn forward(&mut self, tokens: &[u32]) -> std::result::Result<(), ContextFull> {
        self.check_room(tokens.len())?;
        let n_chunks = tokens.len().div_ceil(self.n_batch);
        for (i, chunk) in tokens.chunks(self.n_batch).enumerate() {
            self.forward_batch(chunk, i + 1 == n_chunks);
        }
        Ok(())
    }

    pub fn logits(&mut self) -> Result<Vec<f32>> {
        Ok(self.backend.read(&self.acts.logits, 1)?)
    }

    pub fn argmax(&mut self) -> Result<u32> {
        Ok(self.backend.argmax(&self.acts.logits)?)
    }

    /// Runs the tokens through the model like [`Self::forward`] and returns the logits of
    /// every one of them, `[tokens.len(), n_vocab]` row after row (scoring a text, as
    /// perplexity does). The last-token logits of [`Self::logits`] are left as they were.
    pub fn forward_all_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_room(tokens.len())?;
        let rows = self.logit_rows();
        if self.all_logits.is_none() {
            let t = self
                .backend
                .tensor("logits_rows", rows, self.config.n_vocab)?;
            self.all_logits = Some(t);
        }
        let mut logits = Vec::with_capacity(tokens.len() * self.config.n_vocab);
        for chunk in tokens.chunks(rows) {
            let n = chunk.len();
            self.embed(chunk);
            self.run_slot0(n);
            let out = self.all_logits.as_ref().expect("allocated above");
            let (b, s) = (&mut self.backend, &self.spec);
            let eps = s.config.rms_eps;
            forward::logits(
                b,
                &self.weights,
                s.final_logit_softcap,
                eps,
                &self.acts.x,
                out,
                n,
            );
            logits.extend(b.read(out, n)?);
        }
        Ok(logits)
    }

    /// Rows of logits one step of [`Self::forward_all_logits`] computes: a batch, but no more
    /// than [`LOGITS_BYTES`] of them, so that a large vocabulary fits one device binding.
    fn logit_rows(&self) -> usize {
        (LOGITS_BYTES / (4 * self.config.n_vocab)).clamp(1, self.n_batch)
    }

    /// One step over up to `n_batch` tokens at positions `n_past..`.
    fn forward_batch(&mut self, tokens: &[u32], want_logits: bool) {
        self.embed(tokens);
        self.run_slot0(tokens.len());
        if want_logits {
            self.last_logits(tokens.len());
        }
    }

    /// The tokens' embeddings, into `acts.x`.
    fn embed(&mut self, tokens: &[u32]) {
        let scale = self.spec.embedding_scale;
        forward::embed(
            &mut self.backend,
            &self.weights,
            scale,
            tokens,
            &self.acts.x,
        );
    }

    /// The step of `n` tokens of slot 0 at its positions `n_past..`, whose embeddings are
    /// in `acts.x`.
    fn run_slot0(&mut self, n: usize) {
        self.run_layers(&Batch::one(0, self.past[0], n));
    }

    /// The step of the batch's rows, whose embeddings are in `acts.x`; each span's tokens
    /// join its slot's cache.
    fn run_layers(&mut self, batch: &Batch) {
        let (b, w, eps) = (&mut self.backend, &self.weights, self.spec.config.rms_eps);
        for (l, layer) in w.layers.iter().enumerate() {
            let at = CacheLayer {
                cache: &self.cache,
                layer: l,
                batch,
            };
            forward::layer(b, layer, &w.rope_tables, &self.acts, at, eps);
        }
        for span in batch.spans() {
            self.past[span.slot] += span.len;
        }
    }

    /// The logits of the last of the `n` tokens just run, into `acts.logits`.
    fn last_logits(&mut self, n: usize) {
        let (b, a) = (&mut self.backend, &self.acts);
        let last = if n == 1 {
            &a.x
        } else {
            b.copy_row(&a.x, n - 1, &a.last);
            &a.last
        };
        let (softcap, eps) = (self.spec.final_logit_softcap, self.spec.config.rms_eps);
        forward::logits(b, &self.weights, softcap, eps, last, &a.logits, 1);
    }
}

/// The KV cache a model of `spec` needs for `slots` sequences of `n_ctx` tokens each.
fn kv_layout(spec: &Spec, slots: usize, n_ctx: usize, types: KvTypes) -> KvLayout {
    KvLayout {
        slots,
        n_ctx,
        shape: spec.config.attention,
        types,
        layers: spec.layers.iter().map(|l| l.attention.opts).collect(),
        qk_norm: spec.layers.iter().any(|l| l.attention.qk_norm.is_some()),
    }
}

/// How a [`Decoder`] picks each token on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pick {
    Argmax,
    Sample,
}

/// Decoding a token ahead of the host, each token picked on the device (its argmax, or its
/// sampler's draw): before the host waits for a token's id, that token's step (its embedding
/// looked up from the device's pick) and its successor's pick are queued, so the device has
/// work while the id is read back and the step after is recorded. The token run ahead is in
/// the KV cache before the caller decides to keep it; dropping the decoder takes it out
/// again, leaving the cache as decoding one token at a time with [`Transformer::forward`]
/// leaves it.
pub struct Decoder<'a, B: Backend> {
    model: &'a mut Transformer<B>,
    pick: Pick,
    /// Where the next id to read is queued.
    slot: usize,
    /// Set once a token did not fit in the context: nothing is queued after it.
    full: Option<ContextFull>,
    /// Whether the token last returned was run ahead into the cache.
    ran_ahead: bool,
}

impl<'a, B: Backend> Decoder<'a, B> {
    fn start(model: &'a mut Transformer<B>, pick: Pick) -> Self {
        let mut decoder = Self {
            model,
            pick,
            slot: 0,
            full: None,
            ran_ahead: false,
        };
        decoder.queue_pick(0);
        decoder
    }

    fn queue_pick(&mut self, slot: usize) {
        let m = &mut *self.model;
        match self.pick {
            Pick::Argmax => m.backend.queue_argmax(&m.acts.logits, slot),
            Pick::Sample => m.backend.queue_sample(&m.acts.logits, slot),
        }
    }

    /// The next token, keeping the one returned before it in the cache. Fails once a token
    /// did not fit (see [`Self::fits`]), as [`Transformer::forward`] of it would.
    pub fn next_token(&mut self) -> Result<u32> {
        if let Some(full) = &self.full {
            return Err(full.clone().into());
        }
        let slot = self.slot;
        self.slot = (slot + 1) % ARGMAX_SLOTS;
        self.full = self.model.check_room(1).err();
        self.ran_ahead = self.full.is_none();
        if self.ran_ahead {
            let m = &mut *self.model;
            m.backend.embed_argmax(&m.weights.token_embd, &m.acts.x);
            let scale = m.spec.embedding_scale;
            forward::scale_embeddings(&mut m.backend, scale, &m.acts.x, 1);
            m.run_slot0(1);
            m.last_logits(1);
            self.queue_pick(self.slot);
        }
        Ok(self.model.backend.read_argmax(slot)?)
    }

    /// Whether the token last returned fit in the context, so that decoding can go on.
    pub fn fits(&self) -> bool {
        self.ran_ahead
    }
}

impl<B: Backend> Drop for Decoder<'_, B> {
    fn drop(&mut self) {
        if self.ran_ahead {
            let n = self.model.n_past() - 1;
            self.model.truncate(n);
        }
    }
}

impl<B: Backend> Acts<B> {
    fn new(b: &mut B, spec: &Spec, n: usize) -> Result<Self> {
        let c = &spec.config;
        let a = &c.attention;
        let post_norms = spec.layers.iter().any(|l| {
            let ffn_post = match &l.ffn {
                Ffn::Dense(ffn) => ffn.norms.post.is_some(),
                Ffn::Moe(_) => false,
            };
            l.attention.norms.post.is_some() || ffn_post
        });
        // Every layer of the families with experts routes alike: the first one's sizes.
        let moe = spec.layers.iter().find_map(|l| match &l.ffn {
            Ffn::Moe(moe) => Some(moe),
            Ffn::Dense(_) => None,
        });
        let moe = match moe {
            Some(m) => {
                let (k, n_ff) = (m.routing.k, m.n_ff());
                Some(MoeActs {
                    normed: b.tensor("moe_normed", n, c.n_embd)?,
                    logits: b.tensor("moe_logits", n, m.n_expert)?,
                    routes: b.tensor("moe_routes", n, 2 * k)?,
                    gate_up: b.tensor("moe_gate_up", n * k, 2 * n_ff)?,
                    hidden: b.tensor("moe_hidden", n * k, n_ff)?,
                    out: b.tensor("moe_out", n * k, c.n_embd)?,
                })
            }
            None => None,
        };
        let sandwich = match post_norms {
            true => Some([
                b.tensor("sub-block output", n, c.n_embd)?,
                b.tensor("post-norm", n, c.n_embd)?,
            ]),
            false => None,
        };
        Ok(Self {
            x: b.tensor("x", n, c.n_embd)?,
            q: b.tensor("q", n, a.q_width())?,
            attn: b.tensor("attn_out", n, a.q_width())?,
            hidden: b.tensor("ffn_hidden", n, c.n_ff)?,
            sandwich,
            moe,
            last: b.tensor("last", 1, c.n_embd)?,
            logits: b.tensor("logits", 1, c.n_vocab)?,
        })
    }
}

/// Counts tensors per type, for `vibrant info`.
pub fn type_histogram(file: &GgufFile) -> Vec<(GgmlType, usize, u64)> {
    let mut counts: std::collections::BTreeMap<GgmlType, (usize, u64)> = Default::default();
    for t in &file.tensors {
        let e = counts.entry(t.ggml_type).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    counts
        .into_iter()
        .map(|(t, (n, bytes))| (t, n, bytes))
        .collect()
}
