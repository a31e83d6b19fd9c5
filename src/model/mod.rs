//! Model architectures: configuration from GGUF metadata, weights named by their GGUF roles,
//! and the transformer forward pass, written once against the [`Backend`] trait.

mod config;

pub use config::{Arch, Config, ModelError, Result};

use crate::backend::{Backend, KvTypes, QkvPart, WeightBytes, ARGMAX_SLOTS};
use crate::gguf::{GgufFile, TensorInfo};
use crate::quant::{self, GgmlType};
use std::sync::Arc;

/// The weights of one transformer block.
struct Layer<B: Backend> {
    attn_norm: B::Vector,
    /// Query, key and value projections (with biases where the architecture has them).
    qkv: B::Qkv,
    wo: B::Matrix,
    ffn_norm: B::Vector,
    gate_up: B::GateUp,
    w_down: B::Matrix,
}

struct Weights<B: Backend> {
    token_embd: B::Matrix,
    /// `None` when the output projection is tied to the token embeddings.
    output: Option<B::Matrix>,
    output_norm: B::Vector,
    layers: Vec<Layer<B>>,
    /// cos/sin of every (position, frequency) pair: `[n_ctx, head_dim / 2, 2]`.
    rope_cos_sin: B::Vector,
}

/// Activations, allocated once for up to `n_batch` tokens.
struct Scratch<B: Backend> {
    x: B::Tensor,
    xn: B::Tensor,
    q: B::Tensor,
    k: B::Tensor,
    v: B::Tensor,
    attn: B::Tensor,
    proj: B::Tensor,
    gate: B::Tensor,
    up: B::Tensor,
    hidden: B::Tensor,
    last: B::Tensor,
    logits: B::Tensor,
}

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
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            n_ctx: 4096,
            n_batch: 256,
            kv_types: KvTypes::default(),
        }
    }
}

/// A loaded model with its KV cache, bound to one backend.
pub struct Transformer<B: Backend> {
    pub config: Config,
    pub backend: B,
    weights: Weights<B>,
    scratch: Scratch<B>,
    cache: B::KvCache,
    kv_types: KvTypes,
    /// Device memory the KV cache takes.
    kv_bytes: u64,
    /// Logits of many rows, for [`Self::forward_all_logits`]; made on its first call.
    all_logits: Option<B::Tensor>,
    n_ctx: usize,
    n_batch: usize,
    n_past: usize,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("the context is full: {needed} tokens needed, the context holds {n_ctx} (raise --ctx-size, up to the model's {n_ctx_train})")]
pub struct ContextFull {
    pub needed: usize,
    pub n_ctx: usize,
    pub n_ctx_train: usize,
}

impl<B: Backend> Transformer<B> {
    pub fn load(file: &Arc<GgufFile>, mut backend: B, options: &LoadOptions) -> Result<Self> {
        let config = Config::from_gguf(file)?;
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
        // The cache before the weights: a cache the heads do not fit is refused at once, and a
        // backend builds the kernels that write it as it uploads the projections.
        let held = backend.memory_used();
        let kv_types = options.kv_types;
        let cache = backend.kv_cache(config.n_layer, n_ctx, &config.attention, kv_types)?;
        let kv_bytes = backend.memory_used() - held;
        let loader = Loader {
            file,
            config: &config,
        };
        let weights = loader.weights(&mut backend, n_ctx)?;
        let scratch = Scratch::new(&mut backend, &config, n_batch)?;
        Ok(Self {
            config,
            backend,
            weights,
            scratch,
            cache,
            kv_types,
            kv_bytes,
            all_logits: None,
            n_ctx,
            n_batch,
            n_past: 0,
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

    /// Tokens already in the KV cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Forgets everything after the first `n` cached tokens.
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
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

    /// Checks that `n` more tokens fit in the context.
    pub fn check_room(&self, n: usize) -> std::result::Result<(), ContextFull> {
        let needed = self.n_past + n;
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
        Ok(self.backend.read(&self.scratch.logits, 1)?)
    }

    pub fn argmax(&mut self) -> Result<u32> {
        Ok(self.backend.argmax(&self.scratch.logits)?)
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
            let (b, w, s) = (&mut self.backend, &self.weights, &self.scratch);
            b.embed(&w.token_embd, chunk, &s.x);
            self.run_layers(n);
            let (b, w, s) = (&mut self.backend, &self.weights, &self.scratch);
            let out = self.all_logits.as_ref().expect("allocated above");
            w.project(b, self.config.rms_eps, &s.x, &s.xn, out, n);
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
        let (b, w, s) = (&mut self.backend, &self.weights, &self.scratch);
        b.embed(&w.token_embd, tokens, &s.x);
        self.run_layers(tokens.len());
        if want_logits {
            self.last_logits(tokens.len());
        }
    }

    /// The step of `n` tokens whose embeddings are in `scratch.x`.
    fn run_layers(&mut self, n: usize) {
        let (b, w, s) = (&mut self.backend, &self.weights, &self.scratch);
        let c = &self.config;
        let shape = &c.attention;
        let (pos, eps) = (self.n_past, c.rms_eps);
        for (l, layer) in w.layers.iter().enumerate() {
            // Attention: x += Wo · attention(rope(Wq · norm(x)), rope(Wk · norm(x)), Wv · norm(x))
            b.attention_inputs(
                &s.x,
                (&layer.attn_norm, eps),
                &layer.qkv,
                [&s.xn, &s.k, &s.v],
                &s.q,
                &w.rope_cos_sin,
                &self.cache,
                l,
                pos,
                n,
                shape,
            );
            b.attention(&s.q, &self.cache, l, pos, n, &s.attn, shape);
            b.matmul_add(&s.attn, &layer.wo, &s.x, &s.proj, n);

            // Feed-forward: x += W_down · (silu(W_gate · norm(x)) * W_up · norm(x))
            b.norm_gate_up_swiglu(
                &s.x,
                &layer.ffn_norm,
                eps,
                &s.xn,
                &layer.gate_up,
                &s.gate,
                &s.up,
                &s.hidden,
                n,
            );
            b.matmul_add(&s.hidden, &layer.w_down, &s.x, &s.proj, n);
        }
        self.n_past += n;
    }

    /// The logits of the last of the `n` tokens just run, into `scratch.logits`.
    fn last_logits(&mut self, n: usize) {
        let (b, w, s) = (&mut self.backend, &self.weights, &self.scratch);
        let last = if n == 1 {
            &s.x
        } else {
            b.copy_row(&s.x, n - 1, &s.last);
            &s.last
        };
        w.project(b, self.config.rms_eps, last, &s.xn, &s.logits, 1);
    }
}

impl<B: Backend> Weights<B> {
    /// out = output · norm(x) for the first `n` rows of x: the logits (`normed` is scratch).
    fn project(
        &self,
        b: &mut B,
        eps: f32,
        x: &B::Tensor,
        normed: &B::Tensor,
        out: &B::Tensor,
        n: usize,
    ) {
        let output = self.output.as_ref().unwrap_or(&self.token_embd);
        b.norm_matmuls(x, &self.output_norm, eps, normed, &[(output, None, out)], n);
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
            Pick::Argmax => m.backend.queue_argmax(&m.scratch.logits, slot),
            Pick::Sample => m.backend.queue_sample(&m.scratch.logits, slot),
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
            m.backend.embed_argmax(&m.weights.token_embd, &m.scratch.x);
            m.run_layers(1);
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
            let n = self.model.n_past - 1;
            self.model.truncate(n);
        }
    }
}

impl<B: Backend> Scratch<B> {
    fn new(b: &mut B, c: &Config, n: usize) -> Result<Self> {
        let a = &c.attention;
        Ok(Self {
            x: b.tensor("x", n, c.n_embd)?,
            xn: b.tensor("x_norm", n, c.n_embd)?,
            q: b.tensor("q", n, a.q_width())?,
            k: b.tensor("k", n, a.kv_width())?,
            v: b.tensor("v", n, a.kv_width())?,
            attn: b.tensor("attn_out", n, a.q_width())?,
            proj: b.tensor("proj", n, c.n_embd)?,
            gate: b.tensor("ffn_gate", n, c.n_ff)?,
            up: b.tensor("ffn_up", n, c.n_ff)?,
            hidden: b.tensor("ffn_hidden", n, c.n_ff)?,
            last: b.tensor("last", 1, c.n_embd)?,
            logits: b.tensor("logits", 1, c.n_vocab)?,
        })
    }
}

/// Reads tensors by their GGUF role names, checking shapes before uploading.
struct Loader<'a> {
    file: &'a Arc<GgufFile>,
    config: &'a Config,
}

impl Loader<'_> {
    fn error(&self, tensor: &str, what: String) -> ModelError {
        ModelError::Tensor {
            path: self.file.path().display().to_string(),
            tensor: tensor.to_string(),
            what,
        }
    }

    fn info(&self, name: &str, dims: &[usize]) -> Result<Option<&TensorInfo>> {
        let Some(info) = self.file.tensor(name) else {
            return Ok(None);
        };
        if info
            .dims
            .iter()
            .map(|&d| d as usize)
            .ne(dims.iter().copied())
        {
            return Err(self.error(
                name,
                format!("has shape {:?}, expected {dims:?}", info.dims),
            ));
        }
        Ok(Some(info))
    }

    fn require(&self, name: &str, dims: &[usize]) -> Result<&TensorInfo> {
        self.info(name, dims)?
            .ok_or_else(|| self.error(name, "is missing".into()))
    }

    /// A weight matrix `[rows, cols]` (ggml dims `[cols, rows]`), uploaded as it is stored.
    fn matrix<B: Backend>(
        &self,
        b: &mut B,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<B::Matrix> {
        let info = self.require(name, &[cols, rows])?;
        let data = WeightBytes::new(self.file, info);
        Ok(b.upload_matrix(name, info.ggml_type, rows, cols, data)?)
    }

    /// Layer `i`'s query, key and value projections (`rows[j]` × `cols`) and their biases.
    fn qkv<B: Backend>(
        &self,
        b: &mut B,
        i: usize,
        rows: [usize; 3],
        cols: usize,
    ) -> Result<B::Qkv> {
        let part = |role: &str, rows: usize| -> Result<QkvPart> {
            let name = format!("blk.{i}.attn_{role}.weight");
            let info = self.require(&name, &[cols, rows])?;
            Ok(QkvPart {
                ggml_type: info.ggml_type,
                data: WeightBytes::new(self.file, info),
                rows,
                bias: self.floats(&format!("blk.{i}.attn_{role}.bias"), rows)?,
            })
        };
        let parts = [
            part("q", rows[0])?,
            part("k", rows[1])?,
            part("v", rows[2])?,
        ];
        let shape = &self.config.attention;
        Ok(b.upload_qkv(&format!("blk.{i}.attn_qkv"), parts, cols, shape)?)
    }

    /// Layer `i`'s feed-forward gate and up projections, `[rows, cols]` each.
    fn gate_up<B: Backend>(
        &self,
        b: &mut B,
        i: usize,
        rows: usize,
        cols: usize,
    ) -> Result<B::GateUp> {
        let (gate, up) = (
            format!("blk.{i}.ffn_gate.weight"),
            format!("blk.{i}.ffn_up.weight"),
        );
        let g = self.require(&gate, &[cols, rows])?;
        let u = self.require(&up, &[cols, rows])?;
        let parts = (
            (g.ggml_type, WeightBytes::new(self.file, g)),
            (u.ggml_type, WeightBytes::new(self.file, u)),
        );
        Ok(b.upload_gate_up(
            &format!("blk.{i}.ffn_gate_up"),
            parts.0,
            parts.1,
            rows,
            cols,
        )?)
    }

    /// A small vector (norm weight, bias), converted to f32 on the host.
    fn floats(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        let Some(info) = self.info(name, &[len])? else {
            return Ok(None);
        };
        let mut out = vec![0f32; len];
        quant::dequantize(info.ggml_type, self.file.tensor_data(info), &mut out)
            .map_err(|e| self.error(name, e.to_string()))?;
        Ok(Some(out))
    }

    fn vector<B: Backend>(&self, b: &mut B, name: &str, len: usize) -> Result<Option<B::Vector>> {
        match self.floats(name, len)? {
            Some(v) => Ok(Some(b.upload_vector(name, &v)?)),
            None => Ok(None),
        }
    }

    fn required_vector<B: Backend>(&self, b: &mut B, name: &str, len: usize) -> Result<B::Vector> {
        self.vector(b, name, len)?
            .ok_or_else(|| self.error(name, "is missing".into()))
    }

    fn weights<B: Backend>(&self, b: &mut B, n_ctx: usize) -> Result<Weights<B>> {
        let c = self.config;
        let a = &c.attention;
        let (d, q, kv, ff) = (c.n_embd, a.q_width(), a.kv_width(), c.n_ff);
        let token_embd = self.matrix(b, "token_embd.weight", c.n_vocab, d)?;
        let output = match self.file.tensor("output.weight") {
            Some(_) => Some(self.matrix(b, "output.weight", c.n_vocab, d)?),
            None => None,
        };
        let output_norm = self.required_vector(b, "output_norm.weight", d)?;
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let t = |role: &str| format!("blk.{i}.{role}");
            layers.push(Layer {
                attn_norm: self.required_vector(b, &t("attn_norm.weight"), d)?,
                qkv: self.qkv(b, i, [q, kv, kv], d)?,
                wo: self.matrix(b, &t("attn_output.weight"), d, q)?,
                ffn_norm: self.required_vector(b, &t("ffn_norm.weight"), d)?,
                gate_up: self.gate_up(b, i, ff, d)?,
                w_down: self.matrix(b, &t("ffn_down.weight"), d, ff)?,
            });
        }
        let freq_factors = self.floats("rope_freqs.weight", a.head_dim / 2)?;
        let table = rope_table(c, n_ctx, freq_factors.as_deref());
        let rope_cos_sin = b.upload_vector("rope_cos_sin", &table)?;
        Ok(Weights {
            token_embd,
            output,
            output_norm,
            layers,
            rope_cos_sin,
        })
    }
}

/// cos and sin of `pos * θ_i` for every position and frequency
/// `θ_i = base^(-2i/d) / factor_i`, computed in f64 once so every backend rotates alike.
fn rope_table(c: &Config, n_ctx: usize, freq_factors: Option<&[f32]>) -> Vec<f32> {
    let half = c.attention.head_dim / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| {
            let factor = freq_factors.map_or(1.0, |f| f[i] as f64);
            (c.rope_base as f64).powf(-2.0 * i as f64 / c.attention.head_dim as f64) / factor
        })
        .collect();
    let mut table = Vec::with_capacity(n_ctx * half * 2);
    for pos in 0..n_ctx {
        let p = pos as f64 / c.rope_linear_scale as f64;
        for f in &inv_freq {
            let (sin, cos) = (p * f).sin_cos();
            table.push(cos as f32);
            table.push(sin as f32);
        }
    }
    table
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
