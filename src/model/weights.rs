//! A model's weights on a backend, read from its file as its [`Spec`] names them: per layer
//! the loaded blocks the forward pass runs, each with the values its ops take.

use super::arch::{AttentionSpec, Bias, DenseFfn, Ffn, MoeFfn, Norms, Spec, Weight};
use super::config::{Config, ModelError, Result};
use crate::backend::{
    Activation, AttentionOpts, Backend, MatrixUse, Routing, WeightBytes, WeightRows,
};
use crate::gguf::{GgufFile, TensorInfo};
use crate::quant;
use std::sync::Arc;

pub(super) struct Weights<B: Backend> {
    pub token_embd: B::Matrix,
    /// `None` when the output projection is tied to the token embeddings.
    pub output: Option<B::Matrix>,
    pub output_norm: B::Vector,
    pub layers: Vec<Layer<B>>,
    /// cos/sin of every (position, frequency) pair, `[n_ctx, head_dim / 2, 2]`, one table per
    /// RoPE base the layers use.
    pub rope_tables: Vec<B::Vector>,
}

impl<B: Backend> Weights<B> {
    /// The matrix that turns the last hidden state into logits.
    pub fn output(&self) -> &B::Matrix {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}

pub(super) struct Layer<B: Backend> {
    pub attention: Attention<B>,
    pub ffn: FeedForward<B>,
}

/// A norm's weight, before a sub-block's input and, where the family has it, after its
/// output.
pub(super) struct BlockNorms<B: Backend> {
    pub pre: B::Vector,
    pub post: Option<B::Vector>,
}

pub(super) struct Attention<B: Backend> {
    pub norms: BlockNorms<B>,
    /// `[q | k | v]` rows, with their biases.
    pub qkv: B::Matrix,
    /// The per-head norm weights of queries and keys.
    pub qk_norm: Option<(B::Vector, B::Vector)>,
    pub output: B::Matrix,
    pub opts: AttentionOpts,
    /// Which of [`Weights::rope_tables`] rotates this layer.
    pub rope_table: usize,
}

pub(super) enum FeedForward<B: Backend> {
    Dense(Dense<B>),
    Moe(Moe<B>),
}

pub(super) struct Moe<B: Backend> {
    pub norm: B::Vector,
    /// Router logits' rows, one per expert.
    pub router: B::Matrix,
    pub routing: Routing,
    /// Per expert, its gate rows then its up rows.
    pub gate_up: B::Matrix,
    pub down: B::Matrix,
    pub activation: Activation,
}

pub(super) struct Dense<B: Backend> {
    pub norms: BlockNorms<B>,
    /// Gate rows, then up rows.
    pub gate_up: B::Matrix,
    pub down: B::Matrix,
    pub activation: Activation,
}

/// Reads tensors by their GGUF names, checking shapes before uploading.
pub(super) struct Loader<'a> {
    pub file: &'a Arc<GgufFile>,
    pub spec: &'a Spec,
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

    fn vector<B: Backend>(&self, b: &mut B, name: &str, len: usize) -> Result<B::Vector> {
        let v = self
            .floats(name, len)?
            .ok_or_else(|| self.error(name, "is missing".into()))?;
        Ok(b.upload_vector(name, &v)?)
    }

    /// A matrix of `weight`'s tensors (`{prefix}{role}.weight`, ggml dims `[cols, rows]`),
    /// uploaded as they are stored, with their biases as the spec asks.
    fn matrix<B: Backend>(
        &self,
        b: &mut B,
        prefix: &str,
        weight: &Weight,
        usage: MatrixUse,
    ) -> Result<B::Matrix> {
        let mut parts = Vec::with_capacity(weight.parts.len());
        for &(role, rows) in &weight.parts {
            let name = format!("{prefix}{role}.weight");
            let info = self.require(&name, &[weight.cols, rows])?;
            let bias_name = format!("{prefix}{role}.bias");
            let bias = match weight.bias {
                Bias::None => None,
                Bias::IfPresent => self.floats(&bias_name, rows)?,
                Bias::Required => Some(
                    self.floats(&bias_name, rows)?
                        .ok_or_else(|| self.error(&bias_name, "is missing".into()))?,
                ),
            };
            let data = WeightBytes::new(self.file, info);
            parts.push(WeightRows::new(info.ggml_type, rows, data).with_bias(bias));
        }
        let roles: Vec<&str> = weight.parts.iter().map(|(role, _)| *role).collect();
        let name = format!("{prefix}{}", roles.join("+"));
        Ok(b.upload_matrix(&name, weight.cols, parts, usage)?)
    }

    fn norms<B: Backend>(&self, b: &mut B, prefix: &str, norms: &Norms) -> Result<BlockNorms<B>> {
        let d = self.spec.config.n_embd;
        Ok(BlockNorms {
            pre: self.vector(b, &format!("{prefix}{}.weight", norms.pre), d)?,
            post: match norms.post {
                Some(role) => Some(self.vector(b, &format!("{prefix}{role}.weight"), d)?),
                None => None,
            },
        })
    }

    fn attention<B: Backend>(
        &self,
        b: &mut B,
        prefix: &str,
        spec: &AttentionSpec,
        rope_bases: &mut Vec<f32>,
    ) -> Result<Attention<B>> {
        let shape = self.spec.config.attention;
        let norms = self.norms(b, prefix, &spec.norms)?;
        let qkv = self.matrix(b, prefix, &spec.qkv, MatrixUse::Qkv(shape))?;
        let qk_norm = match spec.qk_norm {
            Some((q, k)) => {
                let hd = shape.head_dim;
                Some((
                    self.vector(b, &format!("{prefix}{q}.weight"), hd)?,
                    self.vector(b, &format!("{prefix}{k}.weight"), hd)?,
                ))
            }
            None => None,
        };
        let output = self.matrix(b, prefix, &spec.output, MatrixUse::Plain)?;
        let base = spec.rope_base.to_bits();
        let rope_table = match rope_bases.iter().position(|b| b.to_bits() == base) {
            Some(i) => i,
            None => {
                rope_bases.push(spec.rope_base);
                rope_bases.len() - 1
            }
        };
        Ok(Attention {
            norms,
            qkv,
            qk_norm,
            output,
            opts: spec.opts,
            rope_table,
        })
    }

    fn dense<B: Backend>(&self, b: &mut B, prefix: &str, spec: &DenseFfn) -> Result<Dense<B>> {
        if !spec.gate_up.rows().is_multiple_of(2) {
            return Err(self.error(
                &format!("{prefix}{}", spec.gate_up.parts[0].0),
                "has an odd number of gate and up rows".into(),
            ));
        }
        Ok(Dense {
            norms: self.norms(b, prefix, &spec.norms)?,
            gate_up: self.matrix(b, prefix, &spec.gate_up, MatrixUse::GateUp)?,
            down: self.matrix(b, prefix, &spec.down, MatrixUse::Plain)?,
            activation: spec.activation,
        })
    }

    /// An [`MatrixUse::Experts`] matrix of `weight`'s 3-D tensors (`{prefix}{role}.weight`,
    /// ggml dims `[cols, rows, n_expert]`): per expert, its rows of each part in turn.
    fn experts<B: Backend>(
        &self,
        b: &mut B,
        prefix: &str,
        weight: &Weight,
        n_expert: usize,
    ) -> Result<B::Matrix> {
        let mut tensors = Vec::with_capacity(weight.parts.len());
        for &(role, rows) in &weight.parts {
            let name = format!("{prefix}{role}.weight");
            let info = self.require(&name, &[weight.cols, rows, n_expert])?;
            let row_bytes = info
                .ggml_type
                .row_bytes(weight.cols)
                .map_err(|e| self.error(&name, e.to_string()))?;
            tensors.push((info, rows, WeightBytes::new(self.file, info), row_bytes));
        }
        let mut parts = Vec::with_capacity(n_expert * tensors.len());
        for e in 0..n_expert {
            for (info, rows, bytes, row_bytes) in &tensors {
                let len = rows * row_bytes;
                let data = bytes.slice(e * len, len);
                parts.push(WeightRows::new(info.ggml_type, *rows, data));
            }
        }
        let roles: Vec<&str> = weight.parts.iter().map(|(role, _)| *role).collect();
        let name = format!("{prefix}{}", roles.join("+"));
        Ok(b.upload_matrix(&name, weight.cols, parts, MatrixUse::Experts(n_expert))?)
    }

    fn moe<B: Backend>(&self, b: &mut B, prefix: &str, spec: &MoeFfn) -> Result<Moe<B>> {
        let d = self.spec.config.n_embd;
        Ok(Moe {
            norm: self.vector(b, &format!("{prefix}{}.weight", spec.norm), d)?,
            router: self.matrix(b, prefix, &spec.router, MatrixUse::Plain)?,
            routing: spec.routing,
            gate_up: self.experts(b, prefix, &spec.gate_up, spec.n_expert)?,
            down: self.experts(b, prefix, &spec.down, spec.n_expert)?,
            activation: spec.activation,
        })
    }

    pub fn weights<B: Backend>(&self, b: &mut B, n_ctx: usize) -> Result<Weights<B>> {
        let c = &self.spec.config;
        let d = c.n_embd;
        let token_embd = self.matrix(
            b,
            "",
            &Weight::single("token_embd", c.n_vocab, d),
            MatrixUse::Plain,
        )?;
        let output = match self.spec.tied_output {
            true => None,
            false => Some(self.matrix(
                b,
                "",
                &Weight::single("output", c.n_vocab, d),
                MatrixUse::Plain,
            )?),
        };
        let output_norm = self.vector(b, "output_norm.weight", d)?;
        let mut rope_bases = Vec::new();
        let mut layers = Vec::with_capacity(c.n_layer);
        for (i, spec) in self.spec.layers.iter().enumerate() {
            let prefix = format!("blk.{i}.");
            layers.push(Layer {
                attention: self.attention(b, &prefix, &spec.attention, &mut rope_bases)?,
                ffn: match &spec.ffn {
                    Ffn::Dense(dense) => FeedForward::Dense(self.dense(b, &prefix, dense)?),
                    Ffn::Moe(moe) => FeedForward::Moe(self.moe(b, &prefix, moe)?),
                },
            });
        }
        let half = c.attention.head_dim / 2;
        let freq_factors = match self.spec.rope_factors.tensor(n_ctx) {
            Some(name) => self.floats(name, half)?,
            None => None,
        };
        let attn_factor = self.spec.rope_attn_factor;
        let rope_tables = rope_bases
            .iter()
            .map(|&base| {
                let table = rope_table(c, base, n_ctx, freq_factors.as_deref(), attn_factor);
                b.upload_vector("rope_cos_sin", &table)
            })
            .collect::<std::result::Result<_, _>>()?;
        Ok(Weights {
            token_embd,
            output,
            output_norm,
            layers,
            rope_tables,
        })
    }
}

/// cos and sin of `pos * θ_i` for every position and frequency
/// `θ_i = base^(-2i/d) / factor_i`, times `attn_factor`, computed in f64 once so every
/// backend rotates alike.
fn rope_table(
    c: &Config,
    base: f32,
    n_ctx: usize,
    freq_factors: Option<&[f32]>,
    attn_factor: f32,
) -> Vec<f32> {
    let half = c.attention.head_dim / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| {
            let factor = freq_factors.map_or(1.0, |f| f[i] as f64);
            (base as f64).powf(-2.0 * i as f64 / c.attention.head_dim as f64) / factor
        })
        .collect();
    let mut table = Vec::with_capacity(n_ctx * half * 2);
    for pos in 0..n_ctx {
        let p = pos as f64 / c.rope_linear_scale as f64;
        for f in &inv_freq {
            let (sin, cos) = (p * f).sin_cos();
            table.push((cos * attn_factor as f64) as f32);
            table.push((sin * attn_factor as f64) as f32);
        }
    }
    table
}
