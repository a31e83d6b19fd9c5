//! Re-packing a real llama-family model into another family's container with the same math
//! (issue 12): a family checked this way runs real trained weights, whose answers are known
//! (the source's), rather than random ones. The source's quantized rows are moved or copied
//! whole, which is exact: each row is a run of independent blocks.

use vibrant::backend::RopeKind;
use vibrant::gguf::{GgufFile, GgufWriter, TensorInfo, Value};
use vibrant::model::Config;
use vibrant::quant::GgmlType;
use vibrant::rng::SplitMix64;

/// `source` (a llama file with RoPE on whole heads) as a Phi-3 file that computes the same
/// function in llama.cpp and vibrant: `{arch}` keys renamed, q/k/v rows fused into
/// `attn_qkv`, gate and up rows fused into `ffn_up` (gate first, as llama.cpp's SwiGLU takes
/// the first half through SiLU), and the q and k rows of each head reordered for Phi-3's NeoX
/// RoPE (see [`neox_rows`]). The output stays tied: llama.cpp's phi3 uses the token
/// embedding where `output.weight` is absent. Deterministic: the same source gives the same
/// bytes.
pub fn phi3(source: &GgufFile) -> GgufWriter {
    let config = llama_config(source);
    let head_dim = config.attention.head_dim;
    let mut w = GgufWriter::new();
    for (key, value) in &source.metadata {
        match key.strip_prefix("llama.") {
            Some(rest) => w.set(format!("phi3.{rest}"), value.clone()),
            None if key == "general.architecture" => w.set(key, Value::String("phi3".into())),
            None => w.set(key, value.clone()),
        };
    }
    let part = |layer: usize, role: &str| {
        let name = format!("blk.{layer}.{role}.weight");
        let info = source.tensor(&name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(info.dims.len(), 2, "{name}: not a matrix");
        (info, source.tensor_data(info))
    };
    for t in &source.tensors {
        match block_role(&t.name) {
            // Each fused tensor is written where its first part was; its other parts are skipped.
            Some((layer, "attn_q.weight")) => {
                let (q, k, v) = (
                    part(layer, "attn_q"),
                    part(layer, "attn_k"),
                    part(layer, "attn_v"),
                );
                let mut rows = neox_rows(q.0, q.1, head_dim);
                rows.extend(neox_rows(k.0, k.1, head_dim));
                rows.extend_from_slice(v.1);
                fused(&mut w, layer, "attn_qkv", &[q.0, k.0, v.0], rows);
            }
            Some((layer, "ffn_gate.weight")) => {
                let (gate, up) = (part(layer, "ffn_gate"), part(layer, "ffn_up"));
                let rows = [gate.1, up.1].concat();
                fused(&mut w, layer, "ffn_up", &[gate.0, up.0], rows);
            }
            Some((_, "attn_k.weight" | "attn_v.weight" | "ffn_up.weight")) => {}
            _ => {
                let data = source.tensor_data(t).to_vec();
                w.add_tensor(&t.name, &t.dims, t.ggml_type, data);
            }
        }
    }
    w
}

/// Experts of the Mixtral re-pack, and how many each token uses.
pub const N_EXPERT: usize = 4;
pub const N_EXPERT_USED: usize = 2;

/// `source` (a dense llama file) as a Mixtral-style mixture of experts that computes the same
/// function: [`N_EXPERT`] experts per layer, each a copy of the dense FFN
/// (`ffn_{gate,up,down}_exps`), and a router (`ffn_gate_inp`, f32) of seeded random weights,
/// so that tokens pick different experts, [`N_EXPERT_USED`] each. llama's routing (llama.cpp's
/// and vibrant's) renormalises the chosen experts' weights to sum 1, so the mix of identical
/// experts is the dense FFN whichever they are. Deterministic: the router's weights come from
/// vibrant's own generator, seeded by the tensor's name.
pub fn mixtral(source: &GgufFile) -> GgufWriter {
    let config = llama_config(source);
    assert!(
        source.get("llama.expert_count").is_none(),
        "already experts"
    );
    let mut w = GgufWriter::new();
    for (key, value) in &source.metadata {
        w.set(key, value.clone());
    }
    w.set("llama.expert_count", Value::U32(N_EXPERT as u32))
        .set("llama.expert_used_count", Value::U32(N_EXPERT_USED as u32));
    for t in &source.tensors {
        let data = source.tensor_data(t);
        match block_role(&t.name) {
            Some((layer, role @ ("ffn_gate.weight" | "ffn_up.weight" | "ffn_down.weight"))) => {
                let role = role.trim_end_matches(".weight");
                if role == "ffn_gate" {
                    let name = format!("blk.{layer}.ffn_gate_inp.weight");
                    w.add_tensor(
                        &name,
                        &[config.n_embd as u64, N_EXPERT as u64],
                        GgmlType::F32,
                        router(&name, config.n_embd),
                    );
                }
                let dims = [t.dims[0], t.dims[1], N_EXPERT as u64];
                w.add_tensor(
                    format!("blk.{layer}.{role}_exps.weight"),
                    &dims,
                    t.ggml_type,
                    data.repeat(N_EXPERT),
                );
            }
            _ => {
                w.add_tensor(&t.name, &t.dims, t.ggml_type, data.to_vec());
            }
        }
    }
    w
}

/// A router's `[N_EXPERT, n_embd]` f32 weights, normal with deviation 1/√n_embd: logits of
/// about the normalised input's scale, so that the chosen experts' weights differ.
fn router(name: &str, n_embd: usize) -> Vec<u8> {
    let mut rng = SplitMix64::for_stream(0, name);
    let std = 1.0 / (n_embd as f32).sqrt();
    (0..N_EXPERT * n_embd)
        .flat_map(|_| (std * rng.next_normal()).to_le_bytes())
        .collect()
}

/// The source's hyper-parameters as vibrant reads them, checked to be a file whose rows can
/// be re-packed as they are: llama's RoPE, no biases to fuse alongside.
fn llama_config(source: &GgufFile) -> Config {
    let config = Config::from_gguf(source).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.arch, "llama", "only llama files are re-packed");
    assert_eq!(config.attention.rope, RopeKind::Normal);
    for t in &source.tensors {
        assert!(
            !t.name.ends_with(".bias"),
            "{}: biases are not re-packed",
            t.name
        );
    }
    config
}

/// `blk.N.ROLE` as (N, ROLE).
fn block_role(name: &str) -> Option<(usize, &str)> {
    let (layer, role) = name.strip_prefix("blk.")?.split_once('.')?;
    Some((layer.parse().ok()?, role))
}

/// `blk.{layer}.{role}.weight`, the rows of `parts` (matrices of one row length and type)
/// one after the other.
fn fused(w: &mut GgufWriter, layer: usize, role: &str, parts: &[&TensorInfo], rows: Vec<u8>) {
    let first = parts[0];
    assert!(
        parts
            .iter()
            .all(|p| p.dims[0] == first.dims[0] && p.ggml_type == first.ggml_type),
        "blk.{layer}.{role}: its parts differ in row length or type"
    );
    let n_rows: u64 = parts.iter().map(|p| p.dims[1]).sum();
    w.add_tensor(
        format!("blk.{layer}.{role}.weight"),
        &[first.dims[0], n_rows],
        first.ggml_type,
        rows,
    );
}

/// A q or k matrix's rows reordered so that NeoX RoPE of the result is llama's RoPE of the
/// original: llama rotates the pairs (2i, 2i+1) of each head, NeoX the pairs (i, i + half)
/// at the same frequency, so rows 2i and 2i+1 become rows i and i + half. q and k are
/// reordered alike, so their dot products, the attention scores, are sums of the same terms.
fn neox_rows(info: &TensorInfo, data: &[u8], head_dim: usize) -> Vec<u8> {
    let row_bytes = data.len() / info.n_rows();
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(data.len());
    for head in data.chunks_exact(head_dim * row_bytes) {
        for r in 0..head_dim {
            let from = if r < half { 2 * r } else { 2 * (r - half) + 1 };
            out.extend_from_slice(&head[from * row_bytes..(from + 1) * row_bytes]);
        }
    }
    out
}
