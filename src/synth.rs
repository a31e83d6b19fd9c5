//! Synthetic models: GGUF files with the exact shapes of real architectures, random but valid
//! quantized weights in a chosen tensor-type mix, and a byte-level BPE vocabulary, so that every
//! command accepts them. This is how vibrant is benchmarked where real model files are absent.

use crate::gguf::{GgufWriter, Value, ValueType};
use crate::quant::GgmlType;
use crate::rng::SplitMix64;
use half::f16;
use std::path::Path;

/// A real architecture's shape.
#[derive(Clone, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub arch: &'static str,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head width of queries, keys and values; Gemma 3 and Qwen3 set it apart from
    /// `n_embd / n_head`.
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    pub tied: bool,
    pub qkv_bias: bool,
    pub rope_base: f32,
    pub n_ctx: usize,
    pub rms_eps: f32,
    /// Llama 3.x frequency scaling: (factor, low-frequency factor, high-frequency factor,
    /// original context).
    pub llama3_rope: Option<(f32, f32, f32, f32)>,
    /// Phi-3's longrope: its original context (past which the long factors rotate) and its
    /// attention factor, with `rope_factors_long` / `rope_factors_short` tensors.
    pub longrope: Option<(usize, f32)>,
    /// Linear RoPE scaling factor of the global layers (Gemma 3 4B and up: 8).
    pub rope_linear: Option<f32>,
    /// RMS norms over each head's queries and keys before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// Gemma's sandwich norms: the attention and FFN outputs are normed again
    /// (`post_attention_norm`, `post_ffw_norm`) before they join the residual stream.
    pub post_norms: bool,
    /// Sliding-window attention width; which layers slide is llama.cpp's pattern for the
    /// architecture (Gemma 3: five local layers, then a global one), not written in the file.
    pub sliding_window: Option<usize>,
    /// Gemma 2's soft caps (attention scores, logits), written as `attn_logit_softcapping`
    /// and `final_logit_softcapping`.
    pub softcaps: Option<(f32, f32)>,
    /// Phi-3's fused projections: `attn_qkv` (Q, K, V rows) and `ffn_up` (gate rows, then up).
    pub fused: bool,
    pub moe: Option<Moe>,
    pub spread: Spread,
}

/// A mixture-of-experts FFN in place of the dense one.
#[derive(Clone, Copy, Debug)]
pub struct Moe {
    pub n_expert: usize,
    /// Experts each token is routed to (top-k of the router's softmax, weights renormalized).
    pub n_used: usize,
    /// Each expert's width, written as `expert_feed_forward_length` (qwen3moe); None where
    /// `feed_forward_length` is the experts' width (Mixtral-style `llama`).
    pub n_ff_exp: Option<usize>,
}

/// How the random weights spread.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    /// Standard deviation of `token_embd` and `output` entries: it sets the spread of the
    /// logits, and so how peaked the next-token distributions are.
    pub embd: f32,
    /// `attn_output` and `ffn_down` entries spread `residual / sqrt(row length)`: how much
    /// each layer writes into the residual stream, against the embedding.
    pub residual: f32,
    /// Norm weights are `1 + norm * N(0, 1)`; 0 writes ones. Weights other than one make a
    /// forward pass that skips a norm's weight give other logits.
    pub norm: f32,
    /// The mean of `output_norm`'s weights: a gain on the logits that leaves the embedding
    /// as it is (with tied embeddings, `embd` alone would set both).
    pub output_gain: f32,
}

/// The benchmark presets': small residual updates, as in trained models (a random network
/// with full-size updates is chaotic, and then no two correct backends agree).
const BENCH: Spread = Spread {
    embd: 0.02,
    residual: 0.2,
    norm: 0.0,
    output_gain: 1.0,
};

/// The new families' benchmark presets: the same, with norm weights apart from one.
const BENCH_NORMS: Spread = Spread { norm: 0.1, ..BENCH };

/// The tiny presets, whose logits are llama.cpp oracles: logits that spread widely enough
/// for peaked next-token distributions, and layers that write enough into the residual
/// stream for the context (attention) to move them (tests/data/README.md, "families").
const TINY: Spread = Spread {
    embd: 0.05,
    residual: 0.6,
    norm: 0.4,
    output_gain: 8.0,
};

const DENSE: Preset = Preset {
    name: "",
    arch: "llama",
    n_layer: 0,
    n_embd: 0,
    n_head: 1,
    n_head_kv: 1,
    head_dim: 0,
    n_ff: 0,
    n_vocab: 0,
    tied: false,
    qkv_bias: false,
    rope_base: 10_000.0,
    n_ctx: 4096,
    rms_eps: 1e-5,
    llama3_rope: None,
    longrope: None,
    rope_linear: None,
    qk_norm: false,
    post_norms: false,
    sliding_window: None,
    softcaps: None,
    fused: false,
    moe: None,
    spread: BENCH,
};

const fn qwen(
    name: &'static str,
    n_layer: usize,
    n_embd: usize,
    heads: (usize, usize),
    n_ff: usize,
    n_vocab: usize,
    tied: bool,
) -> Preset {
    Preset {
        name,
        arch: "qwen2",
        n_layer,
        n_embd,
        n_head: heads.0,
        n_head_kv: heads.1,
        head_dim: n_embd / heads.0,
        n_ff,
        n_vocab,
        tied,
        qkv_bias: true,
        rope_base: 1_000_000.0,
        n_ctx: 32768,
        rms_eps: 1e-6,
        ..DENSE
    }
}

const fn llama3(
    name: &'static str,
    n_layer: usize,
    n_embd: usize,
    heads: (usize, usize),
    n_ff: usize,
    tied: bool,
    factor: f32,
) -> Preset {
    Preset {
        name,
        arch: "llama",
        n_layer,
        n_embd,
        n_head: heads.0,
        n_head_kv: heads.1,
        head_dim: n_embd / heads.0,
        n_ff,
        n_vocab: 128256,
        tied,
        rope_base: 500_000.0,
        n_ctx: 131072,
        rms_eps: 1e-5,
        llama3_rope: Some((factor, 1.0, 4.0, 8192.0)),
        ..DENSE
    }
}

/// Gemma 3 (head size 256 everywhere but the tiny preset; a sliding window of 512 or 1024).
const GEMMA3: Preset = Preset {
    arch: "gemma3",
    tied: true,
    rope_base: 1_000_000.0,
    n_ctx: 32768,
    rms_eps: 1e-6,
    qk_norm: true,
    post_norms: true,
    sliding_window: Some(512),
    spread: BENCH_NORMS,
    ..DENSE
};

/// Gemma 2: Gemma 3's layout without q/k norms, soft-capped attention scores and logits, a
/// window of 4096 on every other layer, head size 256.
const GEMMA2: Preset = Preset {
    arch: "gemma2",
    tied: true,
    n_ctx: 8192,
    rms_eps: 1e-6,
    post_norms: true,
    sliding_window: Some(4096),
    softcaps: Some((50.0, 30.0)),
    spread: BENCH_NORMS,
    ..DENSE
};

/// Qwen3: Qwen2's layout with q/k norms in place of the QKV biases, head size 128.
const QWEN3: Preset = Preset {
    arch: "qwen3",
    head_dim: 128,
    n_vocab: 151936,
    rope_base: 1_000_000.0,
    n_ctx: 40960,
    rms_eps: 1e-6,
    qk_norm: true,
    spread: BENCH_NORMS,
    ..DENSE
};

const PHI3: Preset = Preset {
    arch: "phi3",
    n_vocab: 32064,
    fused: true,
    spread: BENCH_NORMS,
    ..DENSE
};

pub const PRESETS: &[Preset] = &[
    qwen("qwen2.5-0.5b", 24, 896, (14, 2), 4864, 151936, true),
    qwen("qwen2.5-1.5b", 28, 1536, (12, 2), 8960, 151936, true),
    qwen("qwen2.5-3b", 36, 2048, (16, 2), 11008, 151936, true),
    qwen("qwen2.5-7b", 28, 3584, (28, 4), 18944, 152064, false),
    qwen("qwen2.5-14b", 48, 5120, (40, 8), 13824, 152064, false),
    qwen("qwen2.5-32b", 64, 5120, (40, 8), 27648, 152064, false),
    llama3("llama3.2-1b", 16, 2048, (32, 8), 8192, true, 32.0),
    llama3("llama3.2-3b", 28, 3072, (24, 8), 8192, true, 32.0),
    llama3("llama3.1-8b", 32, 4096, (32, 8), 14336, false, 8.0),
    llama3("llama3.1-70b", 80, 8192, (64, 8), 28672, false, 8.0),
    Preset {
        name: "gemma3-270m",
        n_layer: 18,
        n_embd: 640,
        n_head: 4,
        n_head_kv: 1,
        head_dim: 256,
        n_ff: 2048,
        n_vocab: 262144,
        ..GEMMA3
    },
    Preset {
        name: "gemma2-2b",
        n_layer: 26,
        n_embd: 2304,
        n_head: 8,
        n_head_kv: 4,
        head_dim: 256,
        n_ff: 9216,
        n_vocab: 256000,
        ..GEMMA2
    },
    Preset {
        name: "gemma3-1b",
        n_layer: 26,
        n_embd: 1152,
        n_head: 4,
        n_head_kv: 1,
        head_dim: 256,
        n_ff: 6912,
        n_vocab: 262144,
        ..GEMMA3
    },
    Preset {
        name: "gemma3-4b",
        n_layer: 34,
        n_embd: 2560,
        n_head: 8,
        n_head_kv: 4,
        head_dim: 256,
        n_ff: 10240,
        n_vocab: 262208,
        n_ctx: 131072,
        sliding_window: Some(1024),
        rope_linear: Some(8.0),
        ..GEMMA3
    },
    Preset {
        name: "qwen3-0.6b",
        n_layer: 28,
        n_embd: 1024,
        n_head: 16,
        n_head_kv: 8,
        n_ff: 3072,
        tied: true,
        ..QWEN3
    },
    Preset {
        name: "qwen3-8b",
        n_layer: 36,
        n_embd: 4096,
        n_head: 32,
        n_head_kv: 8,
        n_ff: 12288,
        ..QWEN3
    },
    Preset {
        name: "qwen3-30b-a3b",
        arch: "qwen3moe",
        n_layer: 48,
        n_embd: 2048,
        n_head: 32,
        n_head_kv: 4,
        n_ff: 6144,
        moe: Some(Moe {
            n_expert: 128,
            n_used: 8,
            n_ff_exp: Some(768),
        }),
        ..QWEN3
    },
    // Phi-3-mini-4k: head size 96, no GQA.
    Preset {
        name: "phi3-mini",
        n_layer: 32,
        n_embd: 3072,
        n_head: 32,
        n_head_kv: 32,
        head_dim: 96,
        n_ff: 8192,
        ..PHI3
    },
    Preset {
        name: "mixtral-8x7b",
        n_layer: 32,
        n_embd: 4096,
        n_head: 32,
        n_head_kv: 8,
        head_dim: 128,
        n_ff: 14336,
        n_vocab: 32000,
        rope_base: 1_000_000.0,
        n_ctx: 32768,
        moe: Some(Moe {
            n_expert: 8,
            n_used: 2,
            n_ff_exp: None,
        }),
        spread: BENCH_NORMS,
        ..DENSE
    },
    // OLMoE-1B-7B's shape as a Mixtral-style `llama` file (OLMoE's own q/k norms left out).
    Preset {
        name: "olmoe-1b-7b",
        n_layer: 16,
        n_embd: 2048,
        n_head: 16,
        n_head_kv: 16,
        head_dim: 128,
        n_ff: 1024,
        n_vocab: 50304,
        moe: Some(Moe {
            n_expert: 64,
            n_used: 8,
            n_ff_exp: None,
        }),
        spread: BENCH_NORMS,
        ..DENSE
    },
    // Tiny models of each new family, for tests against llama.cpp's logits: a head size
    // apart from n_embd / n_head where the family allows it, grouped KV heads, a small
    // vocabulary (every byte a token), and Gemma 3's window narrow enough to slide within a
    // 64-token chunk.
    Preset {
        name: "gemma3-tiny",
        n_layer: 6,
        n_embd: 128,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 64,
        n_ff: 256,
        n_vocab: 512,
        n_ctx: 2048,
        sliding_window: Some(16),
        spread: TINY,
        ..GEMMA3
    },
    // Caps low enough that the scores and logits reach them.
    Preset {
        name: "gemma2-tiny",
        n_layer: 4,
        n_embd: 128,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 64,
        n_ff: 256,
        n_vocab: 512,
        n_ctx: 2048,
        sliding_window: Some(16),
        softcaps: Some((5.0, 25.0)),
        spread: TINY,
        ..GEMMA2
    },
    Preset {
        name: "qwen3-tiny",
        n_layer: 4,
        n_embd: 128,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 64,
        n_ff: 256,
        n_vocab: 512,
        n_ctx: 2048,
        tied: true,
        spread: TINY,
        ..QWEN3
    },
    Preset {
        name: "qwen3moe-tiny",
        arch: "qwen3moe",
        n_layer: 4,
        n_embd: 128,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 64,
        n_ff: 256,
        n_vocab: 512,
        n_ctx: 2048,
        moe: Some(Moe {
            n_expert: 8,
            n_used: 4,
            n_ff_exp: Some(64),
        }),
        spread: TINY,
        ..QWEN3
    },
    Preset {
        name: "phi3-tiny",
        n_layer: 4,
        n_embd: 128,
        n_head: 4,
        n_head_kv: 4,
        head_dim: 32,
        n_ff: 256,
        n_vocab: 512,
        n_ctx: 2048,
        spread: TINY,
        ..PHI3
    },
    // phi3-tiny with longrope factors, past whose original context (32) every test runs.
    Preset {
        name: "phi3-longrope-tiny",
        n_layer: 4,
        n_embd: 128,
        n_head: 4,
        n_head_kv: 4,
        head_dim: 32,
        n_ff: 256,
        n_vocab: 512,
        n_ctx: 2048,
        longrope: Some((32, 1.2)),
        // Peakier than TINY, so that most greedy steps are clear of near-ties.
        spread: Spread {
            output_gain: 10.0,
            ..TINY
        },
        ..PHI3
    },
    Preset {
        name: "mixtral-tiny",
        n_layer: 4,
        n_embd: 128,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 32,
        n_ff: 128,
        n_vocab: 512,
        n_ctx: 2048,
        rope_base: 1_000_000.0,
        moe: Some(Moe {
            n_expert: 8,
            n_used: 2,
            n_ff_exp: None,
        }),
        spread: TINY,
        ..DENSE
    },
    // A dense llama, which vibrant runs today: its llama.cpp oracle measures how close a
    // correct forward pass comes, the yardstick for the new families' tolerances.
    Preset {
        name: "llama-tiny",
        n_layer: 4,
        n_embd: 128,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 32,
        n_ff: 256,
        n_vocab: 512,
        n_ctx: 2048,
        spread: TINY,
        ..DENSE
    },
];

/// The tiny presets, whose llama.cpp references live in tests/data/families/.
pub const TINY_PRESETS: [&str; 8] = [
    "llama-tiny",
    "gemma2-tiny",
    "gemma3-tiny",
    "qwen3-tiny",
    "qwen3moe-tiny",
    "phi3-tiny",
    "phi3-longrope-tiny",
    "mixtral-tiny",
];

pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// Which type each tensor gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// llama.cpp's Q4_K_M: Q4_K, with Q6_K for the output and for attn_v / ffn_down in the
    /// layers llama.cpp gives more bits to; widths that are not a multiple of 256 fall back to
    /// Q5_0 (for Q4_K) and Q8_0 (for Q6_K), as llama.cpp does.
    Q4KM,
    Q8_0,
    /// Q4_0 everywhere but the output (Q6_K, as llama.cpp keeps it).
    Q4_0,
    F16,
}

impl Mix {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "q4_k_m" => Self::Q4KM,
            "q8_0" => Self::Q8_0,
            "q4_0" => Self::Q4_0,
            "f16" => Self::F16,
            _ => return None,
        })
    }

    pub const NAMES: &'static str = "q4_k_m, q8_0, q4_0, f16";

    /// The type of a weight matrix of row length `cols`; `layer` is None for the output;
    /// `n_expert` is the model's expert count (0 for a dense model).
    fn matrix_type(
        self,
        role: &str,
        layer: Option<(usize, usize)>,
        cols: usize,
        n_expert: usize,
    ) -> GgmlType {
        let wanted = match self {
            Self::Q8_0 => GgmlType::Q8_0,
            Self::F16 => GgmlType::F16,
            Self::Q4_0 => match layer {
                None => GgmlType::Q6K,
                Some(_) => GgmlType::Q4_0,
            },
            // llama-quant.cpp's choices: 8-expert models keep attn_k / attn_v in Q8_0 and
            // attn_output in Q5_K; a fused attn_qkv gets Q5_K.
            Self::Q4KM => match (role, layer) {
                (_, None) => GgmlType::Q6K,
                ("attn_k" | "attn_v", Some(_)) if n_expert == 8 => GgmlType::Q8_0,
                ("attn_output", Some(_)) if n_expert == 8 => GgmlType::Q5K,
                ("attn_qkv", Some(_)) => GgmlType::Q5K,
                ("attn_v" | "ffn_down" | "ffn_down_exps", Some((i, n))) if more_bits(i, n) => {
                    GgmlType::Q6K
                }
                _ => GgmlType::Q4K,
            },
        };
        if wanted.block_size() > 1 && !cols.is_multiple_of(wanted.block_size()) {
            return match wanted {
                GgmlType::Q6K => GgmlType::Q8_0,
                GgmlType::Q5K => GgmlType::Q5_1,
                _ => GgmlType::Q5_0,
            };
        }
        wanted
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third.
fn more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// Random encoded data for `n` elements of `ty` whose values spread with standard deviation
/// about `std`: random bodies, with each block's f16 scale fields set to match.
pub fn random_tensor(ty: GgmlType, n: usize, std: f32, rng: &mut SplitMix64) -> Vec<u8> {
    let bytes = ty.bytes_for(n as u64).expect("whole blocks") as usize;
    let mut data = vec![0u8; bytes];
    match ty {
        GgmlType::F32 => {
            for c in data.chunks_exact_mut(4) {
                c.copy_from_slice(&(rng.next_normal() * std).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&f16::from_f32(rng.next_normal() * std).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&half::bf16::from_f32(rng.next_normal() * std).to_le_bytes());
            }
        }
        _ => {
            rng.fill_bytes(&mut data);
            let (at, len) = ty.scale_fields().expect("quantized types have scales");
            let (d, m) = scales_for(ty, std);
            for block in data.chunks_exact_mut(ty.type_size()) {
                let jitter = 0.75 + 0.5 * rng.next_f32();
                block[at..at + 2].copy_from_slice(&f16::from_f32(d * jitter).to_le_bytes());
                if len == 4 {
                    block[at + 2..at + 4].copy_from_slice(&f16::from_f32(m * jitter).to_le_bytes());
                }
            }
        }
    }
    data
}

/// (d, m or dmin) that give uniformly random quants a spread of about `std`, centred.
fn scales_for(ty: GgmlType, std: f32) -> (f32, f32) {
    match ty {
        GgmlType::Q8_0 => (std / 74.0, 0.0),
        GgmlType::Q4_0 => (std / 4.6, 0.0),
        GgmlType::Q4_1 => (std / 4.6, -7.5 * std / 4.6),
        GgmlType::Q5_0 => (std / 9.2, 0.0),
        GgmlType::Q5_1 => (std / 9.2, -15.5 * std / 9.2),
        GgmlType::Q2K => (std / 8.4, 1.5 * std / 8.4),
        GgmlType::Q3K => (std / 42.0, 0.0),
        GgmlType::Q4K => (std / 145.0, 7.5 * std / 145.0),
        GgmlType::Q5K => (std / 290.0, 15.5 * std / 290.0),
        GgmlType::Q6K => (std / 1370.0, 0.0),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            unreachable!("float types have no scales")
        }
    }
}

/// A byte-level BPE vocabulary of `n` tokens: the 256 byte tokens, all two-byte tokens, then
/// three-byte ones, each with its merge, and ChatML control tokens at the end.
fn vocabulary(n: usize) -> (Vec<String>, Vec<String>, Vec<i32>) {
    const SPECIAL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let c = |b: usize| crate::tokenizer::char_of_byte(b as u8).to_string();
    let normal = n - SPECIAL.len();
    let mut tokens: Vec<String> = (0..256).map(c).collect();
    let mut merges = Vec::new();
    'outer: for len in [2, 3] {
        for i in 0..256usize.pow(len) {
            if tokens.len() == normal {
                break 'outer;
            }
            let (head, last) = if len == 2 {
                (c(i / 256), c(i % 256))
            } else {
                (c(i / 65536) + &c(i / 256 % 256), c(i % 256))
            };
            merges.push(format!("{head} {last}"));
            tokens.push(head + &last);
        }
    }
    let mut types = vec![1; tokens.len()];
    tokens.extend(SPECIAL.iter().map(|s| s.to_string()));
    types.extend([3; SPECIAL.len()]);
    (tokens, merges, types)
}

const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Writes a synthetic model of `preset`'s shape in `mix` to `out`, deterministically from `seed`,
/// with llama.cpp's metadata keys and tensor names for the architecture.
pub fn write_model(preset: &Preset, mix: Mix, seed: u64, out: &Path) -> std::io::Result<()> {
    let p = preset;
    let (q, kv) = (p.n_head * p.head_dim, p.n_head_kv * p.head_dim);
    let n_expert = p.moe.map_or(0, |m| m.n_expert);
    let mut w = GgufWriter::new();
    let arch = p.arch;
    let key = |k: &str| format!("{arch}.{k}");
    // "Phi 3", as real files spell it: llama.cpp gives a name containing "phi3" Phi-3's token
    // attributes, and fails on a vocabulary without Phi-3's "</s>".
    let name = p.name.replace("phi3", "Phi 3");
    w.set("general.architecture", Value::String(arch.into()))
        .set(
            "general.name",
            Value::String(format!("synthetic {name} {mix:?}")),
        )
        .set(key("context_length"), Value::U32(p.n_ctx as u32))
        .set(key("embedding_length"), Value::U32(p.n_embd as u32))
        .set(key("block_count"), Value::U32(p.n_layer as u32))
        .set(key("feed_forward_length"), Value::U32(p.n_ff as u32))
        .set(key("attention.head_count"), Value::U32(p.n_head as u32))
        .set(
            key("attention.head_count_kv"),
            Value::U32(p.n_head_kv as u32),
        )
        .set(
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(p.rms_eps),
        )
        .set(key("rope.freq_base"), Value::F32(p.rope_base));
    // As the converters write them: Gemma 3 and Qwen3 files give the head size and leave
    // the rotated width to default to it; the others give the rotated width.
    if matches!(arch, "gemma2" | "gemma3" | "qwen3" | "qwen3moe") {
        w.set(key("attention.key_length"), Value::U32(p.head_dim as u32))
            .set(key("attention.value_length"), Value::U32(p.head_dim as u32));
    } else {
        w.set(key("rope.dimension_count"), Value::U32(p.head_dim as u32));
    }
    if let Some(window) = p.sliding_window {
        // The local layers' RoPE base is llama.cpp's default (10,000): Gemma 3 files carry
        // no `rope.freq_base_swa`.
        w.set(key("attention.sliding_window"), Value::U32(window as u32));
    }
    if let Some((attention, logits)) = p.softcaps {
        w.set(key("attn_logit_softcapping"), Value::F32(attention))
            .set(key("final_logit_softcapping"), Value::F32(logits));
    }
    if let Some(factor) = p.rope_linear {
        w.set(key("rope.scaling.type"), Value::String("linear".into()))
            .set(key("rope.scaling.factor"), Value::F32(factor));
    }
    if let Some((original, attn_factor)) = p.longrope {
        w.set(
            key("rope.scaling.original_context_length"),
            Value::U32(original as u32),
        )
        .set(key("rope.scaling.attn_factor"), Value::F32(attn_factor));
    }
    if let Some(moe) = p.moe {
        w.set(key("expert_count"), Value::U32(moe.n_expert as u32))
            .set(key("expert_used_count"), Value::U32(moe.n_used as u32));
        if let Some(n_ff_exp) = moe.n_ff_exp {
            w.set(
                key("expert_feed_forward_length"),
                Value::U32(n_ff_exp as u32),
            );
        }
    }
    let (tokens, merges, types) = vocabulary(p.n_vocab);
    let eos = (p.n_vocab - 1) as u32;
    w.set("tokenizer.ggml.model", Value::String("gpt2".into()))
        .set("tokenizer.ggml.pre", Value::String("qwen2".into()))
        .set("tokenizer.ggml.tokens", Value::string_array(tokens))
        .set("tokenizer.ggml.merges", Value::string_array(merges))
        .set(
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
        )
        .set("tokenizer.ggml.bos_token_id", Value::U32(eos - 2))
        .set("tokenizer.ggml.eos_token_id", Value::U32(eos))
        .set("tokenizer.ggml.add_bos_token", Value::Bool(false))
        .set(
            "tokenizer.chat_template",
            Value::String(CHATML_TEMPLATE.into()),
        );

    // `dims` in ggml order: row length first, then rows, then experts.
    let add = |w: &mut GgufWriter, name: String, dims: &[usize], ty: GgmlType, std: f32| {
        let mut rng = SplitMix64::for_stream(seed, &name);
        let n: usize = dims.iter().product();
        let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        w.add_lazy_tensor(name, &dims, ty, move || random_tensor(ty, n, std, &mut rng));
    };
    let spread = p.spread;
    let norm = |w: &mut GgufWriter, name: String, len: usize| {
        let mut rng = SplitMix64::for_stream(seed, &name);
        let mean = match name.as_str() {
            "output_norm.weight" => spread.output_gain,
            _ => 1.0,
        };
        let bytes = (0..len)
            .flat_map(|_| {
                let v = if spread.norm == 0.0 {
                    mean
                } else {
                    mean * (1.0 + spread.norm * rng.next_normal())
                };
                v.to_le_bytes()
            })
            .collect();
        w.add_tensor(name, &[len as u64], GgmlType::F32, bytes);
    };
    let inv = |k: usize| 1.0 / (k as f32).sqrt();
    let embd_type = mix.matrix_type(
        "token_embd",
        if p.tied { None } else { Some((0, 1)) },
        p.n_embd,
        n_expert,
    );
    add(
        &mut w,
        "token_embd.weight".into(),
        &[p.n_embd, p.n_vocab],
        embd_type,
        p.spread.embd,
    );
    for i in 0..p.n_layer {
        let layer = Some((i, p.n_layer));
        let t = |role: &str| format!("blk.{i}.{role}.weight");
        // Input projections keep the spread of their input; the residual branches' outputs
        // write `spread.residual` of it (see Spread).
        let std = |role: &str, cols: usize| match role {
            "attn_output" | "ffn_down" | "ffn_down_exps" => p.spread.residual * inv(cols),
            _ => inv(cols),
        };
        let matrix = |w: &mut GgufWriter, role: &str, dims: &[usize]| {
            let ty = mix.matrix_type(role, layer, dims[0], n_expert);
            add(w, t(role), dims, ty, std(role, dims[0]));
        };
        // Norms first, then the matrices: the order the llama and qwen2 presets always had,
        // so that their files stay byte for byte what they were.
        norm(&mut w, t("attn_norm"), p.n_embd);
        norm(&mut w, t("ffn_norm"), p.n_embd);
        if p.qk_norm {
            norm(&mut w, t("attn_q_norm"), p.head_dim);
            norm(&mut w, t("attn_k_norm"), p.head_dim);
        }
        if p.post_norms {
            norm(&mut w, t("post_attention_norm"), p.n_embd);
            norm(&mut w, t("post_ffw_norm"), p.n_embd);
        }
        if p.fused {
            matrix(&mut w, "attn_qkv", &[p.n_embd, q + 2 * kv]);
        } else {
            matrix(&mut w, "attn_q", &[p.n_embd, q]);
            matrix(&mut w, "attn_k", &[p.n_embd, kv]);
            matrix(&mut w, "attn_v", &[p.n_embd, kv]);
        }
        matrix(&mut w, "attn_output", &[q, p.n_embd]);
        match p.moe {
            Some(moe) => {
                let n_ff = moe.n_ff_exp.unwrap_or(p.n_ff);
                // llama.cpp never quantizes the router. Its logits spread about 2, so that
                // the top-k choice is rarely a near-tie that rounding could flip.
                add(
                    &mut w,
                    t("ffn_gate_inp"),
                    &[p.n_embd, moe.n_expert],
                    GgmlType::F32,
                    2.0 * inv(p.n_embd),
                );
                matrix(&mut w, "ffn_gate_exps", &[p.n_embd, n_ff, moe.n_expert]);
                matrix(&mut w, "ffn_up_exps", &[p.n_embd, n_ff, moe.n_expert]);
                matrix(&mut w, "ffn_down_exps", &[n_ff, p.n_embd, moe.n_expert]);
            }
            None if p.fused => {
                matrix(&mut w, "ffn_up", &[p.n_embd, 2 * p.n_ff]);
                matrix(&mut w, "ffn_down", &[p.n_ff, p.n_embd]);
            }
            None => {
                matrix(&mut w, "ffn_gate", &[p.n_embd, p.n_ff]);
                matrix(&mut w, "ffn_up", &[p.n_embd, p.n_ff]);
                matrix(&mut w, "ffn_down", &[p.n_ff, p.n_embd]);
            }
        }
        if p.qkv_bias {
            for (role, len) in [("attn_q", q), ("attn_k", kv), ("attn_v", kv)] {
                add(
                    &mut w,
                    format!("blk.{i}.{role}.bias"),
                    &[len],
                    GgmlType::F32,
                    0.02,
                );
            }
        }
    }
    norm(&mut w, "output_norm.weight".into(), p.n_embd);
    if !p.tied {
        add(
            &mut w,
            "output.weight".into(),
            &[p.n_embd, p.n_vocab],
            mix.matrix_type("output", None, p.n_embd, n_expert),
            p.spread.embd,
        );
    }
    if let Some(scaling) = p.llama3_rope {
        let factors = llama3_freq_factors(p.rope_base, p.head_dim, scaling);
        let bytes = factors.iter().flat_map(|f| f.to_le_bytes()).collect();
        w.add_tensor(
            "rope_freqs.weight",
            &[factors.len() as u64],
            GgmlType::F32,
            bytes,
        );
    }
    if p.longrope.is_some() {
        let half = p.head_dim / 2;
        // Long factors slow the rotations up to 4×, short ones up to 1.2×, the lowest
        // frequencies most, as Phi-3's do.
        for (name, top) in [("rope_factors_long", 4.0), ("rope_factors_short", 1.2)] {
            let factors: Vec<f32> = (0..half)
                .map(|i| 1.0 + (top - 1.0) * i as f32 / (half - 1) as f32)
                .collect();
            let bytes = factors.iter().flat_map(|f| f.to_le_bytes()).collect();
            w.add_tensor(
                format!("{name}.weight"),
                &[half as u64],
                GgmlType::F32,
                bytes,
            );
        }
    }
    w.write_file(out)
}

/// Llama 3.x's per-frequency RoPE divisors, as its converter stores them in `rope_freqs.weight`.
fn llama3_freq_factors(
    base: f32,
    head_dim: usize,
    (factor, low, high, original): (f32, f32, f32, f32),
) -> Vec<f32> {
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf(2.0 * i as f32 / head_dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::ALL_TYPES;

    #[test]
    fn random_blocks_decode_to_the_requested_spread() {
        for ty in ALL_TYPES {
            let mut rng = SplitMix64(7);
            let n = 256 * 64;
            let data = random_tensor(ty, n, 0.05, &mut rng);
            let mut out = vec![0f32; n];
            crate::quant::dequantize(ty, &data, &mut out).unwrap();
            let mean = out.iter().sum::<f32>() / n as f32;
            let std = (out.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n as f32).sqrt();
            assert!(out.iter().all(|v| v.is_finite()), "{ty}");
            assert!((0.02..0.12).contains(&std), "{ty}: std {std}");
            assert!(mean.abs() < 0.03, "{ty}: mean {mean}");
        }
    }

    /// The shapes the published models have: head sizes the kernels take, whole KV groups.
    #[test]
    fn presets_have_consistent_shapes() {
        for p in PRESETS {
            let name = p.name;
            assert!(
                [32, 64, 96, 128, 256].contains(&p.head_dim),
                "{name}: {}",
                p.head_dim
            );
            // Files of these families carry no head size: it is n_embd / n_head.
            if matches!(p.arch, "llama" | "qwen2" | "phi3") {
                assert_eq!(p.head_dim * p.n_head, p.n_embd, "{name}");
            }
            assert_eq!(p.n_head % p.n_head_kv, 0, "{name}");
            assert_eq!(p.n_ff % 128, 0, "{name}");
            if let Some(moe) = p.moe {
                assert!(moe.n_used <= moe.n_expert, "{name}");
                assert_eq!(moe.n_ff_exp.unwrap_or(p.n_ff) % 64, 0, "{name}");
            }
            assert_eq!(
                PRESETS.iter().filter(|q| q.name == name).count(),
                1,
                "{name}"
            );
        }
        assert!(PRESETS.iter().any(|p| p.name == "llama3.1-70b"));
        for name in TINY_PRESETS {
            let p = preset(name).unwrap_or_else(|| panic!("{name}"));
            assert!(p.n_vocab <= 1024 && p.n_layer <= 6, "{name}");
        }
    }

    #[test]
    fn q4_k_m_follows_llama_cpp() {
        let m = Mix::Q4KM;
        let dense = |role, layer, cols| m.matrix_type(role, layer, cols, 0);
        assert_eq!(dense("attn_v", Some((0, 36)), 2048), GgmlType::Q6K);
        assert_eq!(dense("attn_v", Some((5, 36)), 2048), GgmlType::Q4K);
        assert_eq!(dense("ffn_down", Some((6, 36)), 11008), GgmlType::Q6K);
        assert_eq!(dense("attn_q", Some((0, 36)), 2048), GgmlType::Q4K);
        assert_eq!(dense("output", None, 2048), GgmlType::Q6K);
        assert_eq!(dense("attn_q", Some((3, 24)), 896), GgmlType::Q5_0);
        assert_eq!(dense("output", None, 896), GgmlType::Q8_0);
        assert_eq!(dense("attn_qkv", Some((3, 32)), 3072), GgmlType::Q5K);
        assert_eq!(dense("attn_qkv", Some((3, 32)), 96), GgmlType::Q5_1);
        let moe = |role, layer, n_expert| m.matrix_type(role, layer, 4096, n_expert);
        assert_eq!(moe("attn_v", Some((5, 32)), 8), GgmlType::Q8_0);
        assert_eq!(moe("attn_k", Some((5, 32)), 8), GgmlType::Q8_0);
        assert_eq!(moe("attn_output", Some((5, 32)), 8), GgmlType::Q5K);
        assert_eq!(moe("attn_k", Some((5, 48)), 128), GgmlType::Q4K);
        assert_eq!(moe("ffn_down_exps", Some((0, 48)), 128), GgmlType::Q6K);
        assert_eq!(moe("ffn_up_exps", Some((0, 48)), 128), GgmlType::Q4K);
        // The router is never a matrix of the mix (write_model keeps it F32).
    }

    /// Writes a tiny preset and reads it back.
    fn written(name: &str, seed: u64) -> (crate::gguf::GgufFile, Vec<u8>) {
        let path = std::env::temp_dir().join(format!(
            "vibrant-synth-{}-{name}-{seed}.gguf",
            std::process::id()
        ));
        write_model(preset(name).unwrap(), Mix::Q8_0, seed, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let file = crate::gguf::GgufFile::from_bytes(name, bytes.clone()).unwrap();
        (file, bytes)
    }

    fn dims(file: &crate::gguf::GgufFile, name: &str) -> Vec<u64> {
        let info = file.tensor(name);
        info.unwrap_or_else(|| panic!("{name} is missing"))
            .dims
            .clone()
    }

    /// llama.cpp's metadata keys and tensor names and shapes (`src/models/*.cpp`, which
    /// loads these files: tests/data/README.md), family by family.
    #[test]
    fn tiny_presets_have_llama_cpp_names_and_shapes() {
        let (g, _) = written("gemma3-tiny", 1);
        assert_eq!(g.u64("gemma3.attention.key_length").unwrap(), 64);
        assert_eq!(g.u64("gemma3.attention.sliding_window").unwrap(), 16);
        assert!(g.get("gemma3.rope.dimension_count").is_none());
        assert!(g.get("gemma3.rope.freq_base_swa").is_none());
        for t in ["attn_q_norm", "attn_k_norm"] {
            assert_eq!(dims(&g, &format!("blk.5.{t}.weight")), [64]);
        }
        for t in ["post_attention_norm", "post_ffw_norm", "ffn_gate", "attn_q"] {
            assert!(g.tensor(&format!("blk.5.{t}.weight")).is_some(), "{t}");
        }
        assert_eq!(dims(&g, "blk.0.attn_q.weight"), [128, 4 * 64]);
        assert_eq!(dims(&g, "blk.0.attn_output.weight"), [4 * 64, 128]);
        assert!(g.tensor("output.weight").is_none(), "tied");

        let (q, _) = written("qwen3moe-tiny", 1);
        assert_eq!(q.u64("qwen3moe.expert_count").unwrap(), 8);
        assert_eq!(q.u64("qwen3moe.expert_used_count").unwrap(), 4);
        assert_eq!(q.u64("qwen3moe.expert_feed_forward_length").unwrap(), 64);
        let router = q.tensor("blk.0.ffn_gate_inp.weight").unwrap();
        assert_eq!(
            (router.dims.clone(), router.ggml_type),
            (vec![128, 8], GgmlType::F32)
        );
        assert_eq!(dims(&q, "blk.3.ffn_gate_exps.weight"), [128, 64, 8]);
        assert_eq!(dims(&q, "blk.3.ffn_up_exps.weight"), [128, 64, 8]);
        assert_eq!(dims(&q, "blk.3.ffn_down_exps.weight"), [64, 128, 8]);
        assert!(q.tensor("blk.0.ffn_gate.weight").is_none());
        assert!(q.tensor("blk.0.attn_q.bias").is_none());
        assert!(q.tensor("blk.0.attn_k_norm.weight").is_some());

        let (p, _) = written("phi3-tiny", 1);
        assert_eq!(dims(&p, "blk.0.attn_qkv.weight"), [128, 3 * 128]);
        assert_eq!(dims(&p, "blk.0.ffn_up.weight"), [128, 2 * 256]);
        assert!(
            p.tensor("blk.0.attn_q.weight").is_none()
                && p.tensor("blk.0.ffn_gate.weight").is_none()
        );
        assert_eq!(p.u64("phi3.rope.dimension_count").unwrap(), 32);

        let (m, _) = written("mixtral-tiny", 1);
        assert_eq!(m.str("general.architecture").unwrap(), "llama");
        assert_eq!(m.u64("llama.expert_count").unwrap(), 8);
        assert!(m.get("llama.expert_feed_forward_length").is_none());
        assert_eq!(dims(&m, "blk.1.ffn_down_exps.weight"), [128, 128, 8]);
    }

    /// Norm weights spread around one (a forward pass that skips one changes the logits);
    /// the output norm's around the logit gain.
    #[test]
    fn tiny_norm_weights_spread() {
        let (file, _) = written("qwen3-tiny", 1);
        let values = |name: &str| -> Vec<f32> {
            let info = file.tensor(name).unwrap();
            file.tensor_data(info)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        };
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        let q_norm = values("blk.0.attn_q_norm.weight");
        assert!((mean(&q_norm) - 1.0).abs() < 0.2, "{}", mean(&q_norm));
        assert!(q_norm.iter().any(|&v| (v - 1.0).abs() > 0.2));
        let output = values("output_norm.weight");
        assert!((mean(&output) - TINY.output_gain).abs() < 0.2 * TINY.output_gain);
    }

    #[test]
    fn the_same_seed_writes_the_same_file() {
        let (_, a) = written("mixtral-tiny", 3);
        let (_, b) = written("mixtral-tiny", 3);
        let (_, c) = written("mixtral-tiny", 4);
        assert!(a == b, "seed 3 wrote two different files");
        assert!(
            a.len() == c.len() && a != c,
            "seeds 3 and 4 wrote the same file"
        );
    }

    #[test]
    fn vocabulary_merges_build_every_token() {
        let (tokens, merges, types) = vocabulary(70000);
        assert_eq!(tokens.len(), 70000);
        assert_eq!(types.len(), 70000);
        assert_eq!(merges.len(), 70000 - 256 - 3);
        let set: std::collections::HashSet<_> = tokens.iter().collect();
        assert_eq!(set.len(), tokens.len(), "tokens are unique");
        for m in &merges {
            let (a, b) = m.split_once(' ').unwrap();
            assert!(set.contains(&format!("{a}{b}")) && set.contains(&a.to_string()));
        }
    }
}
