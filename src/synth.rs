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
}

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
        n_ff,
        n_vocab,
        tied,
        qkv_bias: true,
        rope_base: 1_000_000.0,
        n_ctx: 32768,
        rms_eps: 1e-6,
        llama3_rope: None,
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
        n_ff,
        n_vocab: 128256,
        tied,
        qkv_bias: false,
        rope_base: 500_000.0,
        n_ctx: 131072,
        rms_eps: 1e-5,
        llama3_rope: Some((factor, 1.0, 4.0, 8192.0)),
    }
}

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

    /// The type of a weight matrix of row length `cols`; `layer` is None for the output.
    fn matrix_type(self, role: &str, layer: Option<(usize, usize)>, cols: usize) -> GgmlType {
        let wanted = match self {
            Self::Q8_0 => GgmlType::Q8_0,
            Self::F16 => GgmlType::F16,
            Self::Q4_0 => match layer {
                None => GgmlType::Q6K,
                Some(_) => GgmlType::Q4_0,
            },
            Self::Q4KM => match (role, layer) {
                (_, None) => GgmlType::Q6K,
                ("attn_v" | "ffn_down", Some((i, n))) if more_bits(i, n) => GgmlType::Q6K,
                _ => GgmlType::Q4K,
            },
        };
        if wanted.block_size() > 1 && !cols.is_multiple_of(wanted.block_size()) {
            return match wanted {
                GgmlType::Q6K => GgmlType::Q8_0,
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

/// Writes a synthetic model of `preset`'s shape in `mix` to `out`, deterministically from `seed`.
pub fn write_model(preset: &Preset, mix: Mix, seed: u64, out: &Path) -> std::io::Result<()> {
    let p = preset;
    let head_dim = p.n_embd / p.n_head;
    let (q, kv) = (p.n_embd, p.n_head_kv * head_dim);
    let mut w = GgufWriter::new();
    let arch = p.arch;
    let key = |k: &str| format!("{arch}.{k}");
    w.set("general.architecture", Value::String(arch.into()))
        .set(
            "general.name",
            Value::String(format!("synthetic {} {mix:?}", p.name)),
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
        .set(key("rope.freq_base"), Value::F32(p.rope_base))
        .set(key("rope.dimension_count"), Value::U32(head_dim as u32));
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

    let add =
        |w: &mut GgufWriter, name: String, cols: usize, rows: usize, ty: GgmlType, std: f32| {
            let mut rng = SplitMix64::for_stream(seed, &name);
            let dims: Vec<u64> = if rows == 1 {
                vec![cols as u64]
            } else {
                vec![cols as u64, rows as u64]
            };
            w.add_lazy_tensor(name, &dims, ty, move || {
                random_tensor(ty, rows * cols, std, &mut rng)
            });
        };
    let f32_ones = |len: usize| -> Vec<u8> { (0..len).flat_map(|_| 1f32.to_le_bytes()).collect() };
    let embd_type = mix.matrix_type(
        "token_embd",
        if p.tied { None } else { Some((0, 1)) },
        p.n_embd,
    );
    add(
        &mut w,
        "token_embd.weight".into(),
        p.n_embd,
        p.n_vocab,
        embd_type,
        0.02,
    );
    for i in 0..p.n_layer {
        let layer = Some((i, p.n_layer));
        let t = |role: &str| format!("blk.{i}.{role}.weight");
        let inv = |k: usize| 1.0 / (k as f32).sqrt();
        w.add_tensor(
            t("attn_norm"),
            &[p.n_embd as u64],
            GgmlType::F32,
            f32_ones(p.n_embd),
        );
        w.add_tensor(
            t("ffn_norm"),
            &[p.n_embd as u64],
            GgmlType::F32,
            f32_ones(p.n_embd),
        );
        for (role, rows, cols) in [
            ("attn_q", q, p.n_embd),
            ("attn_k", kv, p.n_embd),
            ("attn_v", kv, p.n_embd),
            ("attn_output", p.n_embd, q),
            ("ffn_gate", p.n_ff, p.n_embd),
            ("ffn_up", p.n_ff, p.n_embd),
            ("ffn_down", p.n_embd, p.n_ff),
        ] {
            add(
                &mut w,
                t(role),
                cols,
                rows,
                mix.matrix_type(role, layer, cols),
                // Residual branches write small updates, as in trained models: a random network
                // with full-size updates is chaotic, and then no two correct backends agree.
                match role {
                    "attn_output" | "ffn_down" => 0.2 * inv(cols),
                    _ => inv(cols),
                },
            );
        }
        if p.qkv_bias {
            for (role, len) in [("attn_q", q), ("attn_k", kv), ("attn_v", kv)] {
                add(
                    &mut w,
                    format!("blk.{i}.{role}.bias"),
                    len,
                    1,
                    GgmlType::F32,
                    0.02,
                );
            }
        }
    }
    w.add_tensor(
        "output_norm.weight",
        &[p.n_embd as u64],
        GgmlType::F32,
        f32_ones(p.n_embd),
    );
    if !p.tied {
        add(
            &mut w,
            "output.weight".into(),
            p.n_embd,
            p.n_vocab,
            mix.matrix_type("output", None, p.n_embd),
            0.02,
        );
    }
    if let Some(scaling) = p.llama3_rope {
        let factors = llama3_freq_factors(p.rope_base, head_dim, scaling);
        let bytes = factors.iter().flat_map(|f| f.to_le_bytes()).collect();
        w.add_tensor(
            "rope_freqs.weight",
            &[factors.len() as u64],
            GgmlType::F32,
            bytes,
        );
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
            let head_dim = p.n_embd / p.n_head;
            assert_eq!(head_dim * p.n_head, p.n_embd, "{}", p.name);
            assert!(head_dim == 64 || head_dim == 128, "{}: {head_dim}", p.name);
            assert_eq!(p.n_head % p.n_head_kv, 0, "{}", p.name);
            assert_eq!(p.n_ff % 128, 0, "{}", p.name);
        }
        assert!(PRESETS.iter().any(|p| p.name == "llama3.1-70b"));
    }

    #[test]
    fn q4_k_m_follows_llama_cpp() {
        let m = Mix::Q4KM;
        assert_eq!(m.matrix_type("attn_v", Some((0, 36)), 2048), GgmlType::Q6K);
        assert_eq!(m.matrix_type("attn_v", Some((5, 36)), 2048), GgmlType::Q4K);
        assert_eq!(
            m.matrix_type("ffn_down", Some((6, 36)), 11008),
            GgmlType::Q6K
        );
        assert_eq!(m.matrix_type("attn_q", Some((0, 36)), 2048), GgmlType::Q4K);
        assert_eq!(m.matrix_type("output", None, 2048), GgmlType::Q6K);
        assert_eq!(m.matrix_type("attn_q", Some((3, 24)), 896), GgmlType::Q5_0);
        assert_eq!(m.matrix_type("output", None, 896), GgmlType::Q8_0);
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
