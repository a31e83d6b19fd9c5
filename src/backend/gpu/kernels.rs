//! The WGSL kernel set: which shader files make up each kernel, composed at pipeline creation
//! (WGSL has no includes), and the pipelines built from them, once per device.

use super::params::{
    ActsParams, AttentionParams, DequantParams, ElementParams, IdParams, KernelParams,
    KvStoreParams, MoeParams, NormParams, ParamsLayout, ProductParams, QkNormParams, ReduceParams,
    RopeParams, SampleParams,
};
use super::tuning::Tuning;
use crate::backend::{Activation, BackendError, CacheType, KvTypes, Result};
use crate::quant::GgmlType;

const COMMON: (&str, &str) = ("common.wgsl", include_str!("../../../shaders/common.wgsl"));
const QUANT_FLOAT: (&str, &str) = (
    "quant_float.wgsl",
    include_str!("../../../shaders/quant_float.wgsl"),
);
const QUANT_LEGACY: (&str, &str) = (
    "quant_legacy.wgsl",
    include_str!("../../../shaders/quant_legacy.wgsl"),
);
const QUANT_K: (&str, &str) = (
    "quant_k.wgsl",
    include_str!("../../../shaders/quant_k.wgsl"),
);
const DEQUANT: (&str, &str) = (
    "dequant.wgsl",
    include_str!("../../../shaders/dequant.wgsl"),
);
const MATVEC: (&str, &str) = ("matvec.wgsl", include_str!("../../../shaders/matvec.wgsl"));
const MATVEC_FLOAT: (&str, &str) = (
    "matvec_float.wgsl",
    include_str!("../../../shaders/matvec_float.wgsl"),
);
const MATVEC_INT8: (&str, &str) = (
    "matvec_int8.wgsl",
    include_str!("../../../shaders/matvec_int8.wgsl"),
);
const MATVEC_INT8_LOCAL: (&str, &str) = (
    "matvec_int8_local.wgsl",
    include_str!("../../../shaders/matvec_int8_local.wgsl"),
);
const MATVEC_INT8_GLOBAL: (&str, &str) = (
    "matvec_int8_global.wgsl",
    include_str!("../../../shaders/matvec_int8_global.wgsl"),
);
const ACTS_Q8: (&str, &str) = (
    "acts_q8.wgsl",
    include_str!("../../../shaders/acts_q8.wgsl"),
);
const QUANTIZE_ACTS: (&str, &str) = (
    "quantize_acts.wgsl",
    include_str!("../../../shaders/quantize_acts.wgsl"),
);
const QUANTIZE_ACTS_NORMED: (&str, &str) = (
    "quantize_acts_normed.wgsl",
    include_str!("../../../shaders/quantize_acts_normed.wgsl"),
);
const MATMUL: (&str, &str) = ("matmul.wgsl", include_str!("../../../shaders/matmul.wgsl"));
const MATMUL_COOP: (&str, &str) = (
    "matmul_coop.wgsl",
    include_str!("../../../shaders/matmul_coop.wgsl"),
);
const NORM: (&str, &str) = ("norm.wgsl", include_str!("../../../shaders/norm.wgsl"));
const QK_NORM: (&str, &str) = (
    "qk_norm.wgsl",
    include_str!("../../../shaders/qk_norm.wgsl"),
);
const ROPE: (&str, &str) = ("rope.wgsl", include_str!("../../../shaders/rope.wgsl"));
const QKV: (&str, &str) = ("qkv.wgsl", include_str!("../../../shaders/qkv.wgsl"));
const ATTENTION: (&str, &str) = (
    "attention.wgsl",
    include_str!("../../../shaders/attention.wgsl"),
);
const ATTENTION_PARAMS: (&str, &str) = (
    "attention_params.wgsl",
    include_str!("../../../shaders/attention_params.wgsl"),
);
const ATTENTION_COOP: (&str, &str) = (
    "attention_coop.wgsl",
    include_str!("../../../shaders/attention_coop.wgsl"),
);
const KV_F16: (&str, &str) = ("kv_f16.wgsl", include_str!("../../../shaders/kv_f16.wgsl"));
const KV_Q8_0: (&str, &str) = (
    "kv_q8_0.wgsl",
    include_str!("../../../shaders/kv_q8_0.wgsl"),
);
const KV_STORE: (&str, &str) = (
    "kv_store.wgsl",
    include_str!("../../../shaders/kv_store.wgsl"),
);
const ELEMENTWISE: (&str, &str) = (
    "elementwise.wgsl",
    include_str!("../../../shaders/elementwise.wgsl"),
);
const MOE: (&str, &str) = ("moe.wgsl", include_str!("../../../shaders/moe.wgsl"));
const MATVEC_ID: (&str, &str) = (
    "matvec_id.wgsl",
    include_str!("../../../shaders/matvec_id.wgsl"),
);
const REDUCE: (&str, &str) = ("reduce.wgsl", include_str!("../../../shaders/reduce.wgsl"));
const SAMPLE: (&str, &str) = ("sample.wgsl", include_str!("../../../shaders/sample.wgsl"));

/// Every shader file kernels are composed from.
pub const SOURCES: [(&str, &str); 27] = [
    COMMON,
    QUANT_FLOAT,
    QUANT_LEGACY,
    QUANT_K,
    DEQUANT,
    MATVEC,
    MATVEC_FLOAT,
    MATVEC_INT8,
    MATVEC_INT8_LOCAL,
    MATVEC_INT8_GLOBAL,
    ACTS_Q8,
    QUANTIZE_ACTS,
    QUANTIZE_ACTS_NORMED,
    MATMUL,
    MATMUL_COOP,
    NORM,
    QK_NORM,
    ROPE,
    QKV,
    ATTENTION,
    ATTENTION_PARAMS,
    ATTENTION_COOP,
    ELEMENTWISE,
    MOE,
    MATVEC_ID,
    REDUCE,
    SAMPLE,
];

/// How a decode matvec kernel is built for one matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatvecForm {
    /// Threads that share one row.
    pub team: u32,
    /// Rows each team computes (sharing its activation loads).
    pub rows: u32,
    /// The longest row whose activations the workgroup quantizes to 8 bits (the integer dot
    /// product path, shaders/matvec_int8.wgsl); 0 for f32 activations.
    pub int8_cols: u32,
    /// The 8-bit activations are read from memory, quantized once by
    /// [`Kernel::QuantizeActs`], rather than by each workgroup.
    pub global_acts: bool,
}

/// What a decode matvec writes, which fixes whole groups of rows per team.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatvecOutput {
    Plain,
    /// A GLU of interleaved gate/up rows: whole pairs.
    Glu,
    /// Query/key/value rows: two rotation pairs (four rows).
    Qkv,
}

/// Every kernel, with the weight type it decodes where it reads a weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    GetRows(GgmlType),
    Dequant(GgmlType),
    /// Rows of a matrix decoded to f16 for the tensor-core matmul.
    DequantF16(GgmlType),
    /// Matrix-vector products.
    Matvec(GgmlType, MatvecForm),
    /// Activations quantized to 8 bits once, for matvecs of [`MatvecForm::global_acts`];
    /// `true`: RMS-normalised first (times the norm weight), for products with the norm fused.
    QuantizeActs(bool),
    /// Matvec over interleaved gate/up rows, writing the GLU of each pair (its activation a
    /// parameter).
    MatvecGlu(GgmlType, MatvecForm),
    /// Matvec over query/key/value rows with RoPE and the cache write in its epilogue, for
    /// caches of these types (a q8_0 one is staged for [`Kernel::KvStore`]).
    MatvecQkv(GgmlType, MatvecForm, KvTypes),
    Matmul(GgmlType),
    /// The tensor-core matmul (cooperative matrices, f16 inputs, f32 accumulators) over
    /// weights decoded by [`Kernel::DequantF16`], in tiles of this many tokens (64 or 128),
    /// storing whole tiles straight to outputs of rows this wide (0: none).
    MatmulCoop(u32, u32),
    RmsNorm,
    /// Per-head RMS norms of the queries and keys among `[q | k | v]` products, in place.
    QkNorm,
    /// RoPE and the cache write after the prompt's query/key/value products.
    RopeStoreQkv(KvTypes),
    /// Quantizes the keys and values staged for q8_0 caches into them.
    KvStore(KvTypes),
    /// The attention kernels that read caches of these types.
    Attention(KvTypes),
    /// Prompt attention over tiles of queries and keys in workgroup memory.
    AttentionTiled(KvTypes),
    /// Prompt attention on tensor cores, over f16 caches only: its cooperative-matrix loads
    /// take f16 straight from the cache, so q8_0 caches go to the tiled kernel.
    AttentionCoop,
    /// Attention for a few queries, keys split into chunks over workgroups.
    AttentionDecode(KvTypes),
    AttentionCombine,
    Add,
    /// The GLU of gate and up products side by side in each row.
    Glu,
    /// The GLU of interleaved gate/up products.
    GluPairs,
    /// Scale or soft-cap in place.
    Pointwise,
    /// Each row's experts and their weights from its router logits.
    MoeRoute,
    /// Products with the experts each row chose.
    MatvecId(GgmlType),
    /// Each expert's list of the choices routed to it.
    MoeLists,
    /// Prompt products with the experts each row chose, over the experts' lists.
    MatmulId(GgmlType),
    /// The chosen experts' outputs, weighted, added to the residual stream.
    MoeCombineAdd,
    CopyRow,
    ArgmaxPartial,
    ArgmaxFinal,
    Softmax,
    /// The sampler's first stage: each slice of the logits adjusted and its top-k kept.
    SampleSlices,
    /// The sampler of row 0 (bias, penalties, top-k/top-p/min-p, temperature, the draw) over
    /// the slices' candidates.
    Sample,
}

/// How a kernel's buffer bindings (after the parameters at binding 0) are accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

use Access::{Read, ReadWrite};

impl Kernel {
    pub fn name(self) -> String {
        let base = match self {
            Self::GetRows(_) => "get_rows",
            Self::Dequant(_) => "dequant",
            Self::DequantF16(_) => "dequant_f16",
            Self::Matvec(..) => "matvec",
            Self::QuantizeActs(false) => "quantize_acts",
            Self::QuantizeActs(true) => "quantize_acts_normed",
            Self::MatvecGlu(..) => "matvec_glu",
            Self::MatvecQkv(..) => "matvec_qkv",
            Self::Matmul(_) => "matmul",
            Self::MatmulCoop(tokens, _) => return format!("matmul_coop_{tokens}"),
            Self::RmsNorm => "rms_norm",
            Self::QkNorm => "qk_norm",
            Self::RopeStoreQkv(_) => "rope_store_qkv",
            Self::KvStore(_) => "kv_store",
            Self::Attention(_) => "attention",
            Self::AttentionTiled(_) => "attention_tiled",
            Self::AttentionCoop => "attention_coop",
            Self::AttentionDecode(_) => "attention_decode",
            Self::AttentionCombine => "attention_combine",
            Self::Add => "add",
            Self::Glu => "glu",
            Self::GluPairs => "glu_pairs",
            Self::Pointwise => "pointwise",
            Self::MoeRoute => "moe_route",
            Self::MatvecId(_) => "matvec_id",
            Self::MoeLists => "moe_lists",
            Self::MatmulId(_) => "matmul_id",
            Self::MoeCombineAdd => "moe_combine_add",
            Self::CopyRow => "copy_row",
            Self::ArgmaxPartial => "argmax_partial",
            Self::ArgmaxFinal => "argmax_final",
            Self::Softmax => "softmax",
            Self::SampleSlices => "sample_slices",
            Self::Sample => "sample",
        };
        let activations = match self.matvec_form() {
            Some(form) if form.global_acts => "_int8_global",
            Some(form) if form.int8_cols > 0 => "_int8",
            _ => "",
        };
        let cache = match self.kv_types() {
            Some(types) if types != KvTypes::default() => format!("_k{}_v{}", types.k, types.v),
            _ => String::new(),
        };
        match self.weight_type() {
            Some(t) => format!(
                "{base}_{}{activations}{cache}",
                t.name().to_ascii_lowercase()
            ),
            None => format!("{base}{cache}"),
        }
    }

    /// The types of the caches the kernel writes or reads.
    fn kv_types(self) -> Option<KvTypes> {
        match self {
            Self::MatvecQkv(.., types)
            | Self::RopeStoreQkv(types)
            | Self::KvStore(types)
            | Self::Attention(types)
            | Self::AttentionTiled(types)
            | Self::AttentionDecode(types) => Some(types),
            _ => None,
        }
    }

    pub(super) fn matvec_form(self) -> Option<MatvecForm> {
        match self {
            Self::Matvec(_, form) | Self::MatvecGlu(_, form) | Self::MatvecQkv(_, form, _) => {
                Some(form)
            }
            _ => None,
        }
    }

    pub(super) fn weight_type(self) -> Option<GgmlType> {
        match self {
            Self::GetRows(t)
            | Self::Dequant(t)
            | Self::DequantF16(t)
            | Self::Matvec(t, _)
            | Self::MatvecGlu(t, _)
            | Self::MatvecQkv(t, ..)
            | Self::MatvecId(t)
            | Self::MatmulId(t)
            | Self::Matmul(t) => Some(t),
            _ => None,
        }
    }

    /// The struct of the kernel's parameters (binding 0), as the host writes them.
    pub fn params(self) -> &'static ParamsLayout {
        match self {
            Self::GetRows(_) | Self::Dequant(_) | Self::DequantF16(_) => DequantParams::layout(),
            Self::Matvec(..)
            | Self::MatvecGlu(..)
            | Self::MatvecQkv(..)
            | Self::Matmul(_)
            | Self::MatmulCoop(..) => ProductParams::layout(),
            Self::RmsNorm => NormParams::layout(),
            Self::QkNorm => QkNormParams::layout(),
            Self::QuantizeActs(_) => ActsParams::layout(),
            Self::RopeStoreQkv(_) => RopeParams::layout(),
            Self::KvStore(_) => KvStoreParams::layout(),
            Self::Attention(_)
            | Self::AttentionTiled(_)
            | Self::AttentionCoop
            | Self::AttentionDecode(_)
            | Self::AttentionCombine => AttentionParams::layout(),
            Self::Add | Self::Glu | Self::GluPairs | Self::Pointwise | Self::CopyRow => {
                ElementParams::layout()
            }
            Self::ArgmaxPartial | Self::ArgmaxFinal | Self::Softmax => ReduceParams::layout(),
            Self::SampleSlices | Self::Sample => SampleParams::layout(),
            Self::MoeRoute | Self::MoeLists | Self::MoeCombineAdd => MoeParams::layout(),
            Self::MatvecId(_) | Self::MatmulId(_) => IdParams::layout(),
        }
    }

    /// Whether the op file declares its parameter struct itself (attention_params.wgsl,
    /// kv_store.wgsl) rather than taking the host's declaration; the tests check it against
    /// the host's.
    fn declares_params(self) -> bool {
        matches!(
            self.op().0 .0,
            "attention.wgsl" | "attention_coop.wgsl" | "kv_store.wgsl"
        )
    }

    /// The op file and its entry point.
    fn op(self) -> ((&'static str, &'static str), &'static str) {
        match self {
            Self::GetRows(_) => (DEQUANT, "get_rows"),
            Self::Dequant(_) => (DEQUANT, "dequant"),
            Self::DequantF16(_) => (DEQUANT, "dequant_f16"),
            Self::Matvec(..) => (MATVEC, "matvec"),
            Self::QuantizeActs(false) => (QUANTIZE_ACTS, "quantize_acts"),
            Self::QuantizeActs(true) => (QUANTIZE_ACTS_NORMED, "quantize_acts_normed"),
            Self::MatvecGlu(..) => (MATVEC, "matvec_glu"),
            Self::MatvecQkv(..) => (MATVEC, "matvec_qkv"),
            Self::Matmul(_) => (MATMUL, "matmul"),
            Self::MatmulCoop(..) => (MATMUL_COOP, "matmul_coop"),
            Self::RmsNorm => (NORM, "rms_norm"),
            Self::QkNorm => (QK_NORM, "qk_norm"),
            Self::RopeStoreQkv(_) => (ROPE, "rope_store_qkv"),
            Self::KvStore(_) => (KV_STORE, "kv_store"),
            Self::Attention(_) => (ATTENTION, "attention"),
            Self::AttentionTiled(_) => (ATTENTION, "attention_tiled"),
            Self::AttentionCoop => (ATTENTION_COOP, "attention_coop"),
            Self::AttentionDecode(_) => (ATTENTION, "attention_decode"),
            Self::AttentionCombine => (ATTENTION, "attention_combine"),
            Self::Add => (ELEMENTWISE, "add"),
            Self::Glu => (ELEMENTWISE, "glu"),
            Self::GluPairs => (ELEMENTWISE, "glu_pairs"),
            Self::Pointwise => (ELEMENTWISE, "pointwise"),
            Self::MoeRoute => (MOE, "moe_route"),
            Self::MatvecId(_) => (MATVEC_ID, "matvec_id"),
            Self::MoeLists => (MOE, "moe_lists"),
            Self::MatmulId(_) => (MATVEC_ID, "matmul_id"),
            Self::MoeCombineAdd => (MOE, "moe_combine_add"),
            Self::CopyRow => (ELEMENTWISE, "copy_row"),
            Self::ArgmaxPartial => (REDUCE, "argmax_partial"),
            Self::ArgmaxFinal => (REDUCE, "argmax_final"),
            Self::Softmax => (REDUCE, "softmax"),
            Self::SampleSlices => (SAMPLE, "sample_slices"),
            Self::Sample => (SAMPLE, "sample"),
        }
    }

    /// Buffer bindings in order, as the op file declares them: slot and access. The 8-bit
    /// matvecs read their weights a second time at slot 10, as vectors (the caller passes
    /// the weights once more at the end).
    pub fn bindings(self) -> Vec<(u32, Access)> {
        let mut slots = self.bindings_of_op();
        if self.matvec_form().is_some_and(|f| f.int8_cols > 0) {
            slots.push((10, Read));
        }
        if self.matvec_form().is_some_and(|f| f.global_acts) {
            slots.push((11, Read));
        }
        slots
    }

    fn bindings_of_op(self) -> Vec<(u32, Access)> {
        let access: &[Access] = match self {
            Self::GetRows(_) => &[Read, Read, ReadWrite],
            // The dequant entry point does not use get_rows' token list (binding 2).
            Self::Dequant(_) => return vec![(1, Read), (3, ReadWrite)],
            Self::DequantF16(_) => return vec![(1, Read), (4, ReadWrite)],
            // The decode kernel reads the caches as vectors (bindings 6, 7) and writes the
            // output or partials (binding 5).
            Self::AttentionDecode(_) => {
                return vec![
                    (1, Read),
                    (6, Read),
                    (7, Read),
                    (4, ReadWrite),
                    (5, ReadWrite),
                ]
            }
            Self::AttentionCombine => return vec![(4, ReadWrite), (5, ReadWrite)],
            Self::QuantizeActs(normed) => match normed {
                true => &[Read, ReadWrite, Read],
                false => &[Read, ReadWrite],
            },
            Self::Matvec(..) | Self::MatvecGlu(..) => &[Read, Read, Read, ReadWrite, Read],
            Self::Matmul(_) | Self::MatmulCoop(..) => &[Read, Read, Read, ReadWrite],
            Self::RmsNorm => &[Read, Read, ReadWrite],
            // Products (normalised in place), the query and key weights.
            Self::QkNorm => &[ReadWrite, Read, Read],
            // The epilogue in qkv.wgsl: rope table, q, caches (bindings 6..9).
            Self::MatvecQkv(..) => {
                return vec![
                    (1, Read),
                    (2, Read),
                    (3, Read),
                    (5, Read),
                    (6, Read),
                    (7, ReadWrite),
                    (8, ReadWrite),
                    (9, ReadWrite),
                ]
            }
            Self::RopeStoreQkv(_) => {
                return vec![
                    (1, Read),
                    (6, Read),
                    (7, ReadWrite),
                    (8, ReadWrite),
                    (9, ReadWrite),
                ]
            }
            Self::Attention(_) | Self::AttentionTiled(_) | Self::AttentionCoop => {
                &[Read, Read, Read, ReadWrite]
            }
            // Staged keys and values, the caches.
            Self::KvStore(_) => &[Read, Read, ReadWrite, ReadWrite],
            Self::Add => &[ReadWrite, Read],
            Self::Pointwise => &[ReadWrite],
            // moe.wgsl declares the routes (binding 3) for moe_combine_add alone.
            Self::MoeRoute => &[ReadWrite, Read],
            Self::MoeCombineAdd => &[ReadWrite, Read, Read],
            // Weights, x, routes, y; the prompt kernel the lists too.
            Self::MatvecId(_) => &[Read, Read, Read, ReadWrite],
            Self::MatmulId(_) => &[Read, Read, Read, ReadWrite, Read],
            // The lists, the routes (binding 3).
            Self::MoeLists => return vec![(1, ReadWrite), (3, Read)],
            Self::CopyRow | Self::Glu | Self::GluPairs => &[ReadWrite, Read],
            Self::ArgmaxPartial | Self::ArgmaxFinal | Self::Softmax => &[ReadWrite, ReadWrite],
            // Logits, result, the sampler's state, the logit biases, the slices' candidates.
            Self::SampleSlices | Self::Sample => {
                &[ReadWrite, ReadWrite, ReadWrite, Read, ReadWrite]
            }
        };
        access
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u32 + 1, *a))
            .collect()
    }

    /// The composed WGSL source for a device, and where each file starts in it (for error
    /// messages). `{{NAME}}` placeholders in the op files take the device's tuning.
    pub fn source(self, tuning: &Tuning) -> (String, Vec<(&'static str, usize)>) {
        let activations = activation_constants();
        let mut pieces = vec![COMMON, ("(generated)", activations.as_str())];
        let params;
        if !self.declares_params() {
            params = self.params().wgsl();
            pieces.push(("(generated)", params.as_str()));
        }
        let glue;
        if let Some(t) = self.weight_type() {
            pieces.push(match t {
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => QUANT_FLOAT,
                GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_0
                | GgmlType::Q5_1
                | GgmlType::Q8_0 => QUANT_LEGACY,
                _ => QUANT_K,
            });
            let suffix = t.name().to_ascii_lowercase();
            glue = weight_glue(t, &suffix);
            pieces.push(("(generated)", glue.as_str()));
        }
        if self.op().0 .0.starts_with("attention") {
            pieces.push(ATTENTION_PARAMS);
        }
        let with_qkv = matches!(
            self,
            Self::Matvec(..) | Self::MatvecGlu(..) | Self::MatvecQkv(..) | Self::RopeStoreQkv(_)
        );
        // Every kernel of qkv.wgsl or attention.wgsl compiles its cache accesses, used or not
        // (attention_combine reads no cache).
        let compiles_cache = with_qkv || self.op().0 == ATTENTION;
        let (cache_constants, readers);
        if let Some(types) = self.kv_types().or(compiles_cache.then(KvTypes::default)) {
            cache_constants = format!(
                "const K_Q8: bool = {};\nconst V_Q8: bool = {};\n",
                types.k == CacheType::Q8_0,
                types.v == CacheType::Q8_0
            );
            pieces.push(("(generated)", cache_constants.as_str()));
            if self.op().0 == ATTENTION {
                readers = kv_readers(types);
                for (file, text) in &readers {
                    pieces.push((file, text.as_str()));
                }
            }
        }
        let host_constants;
        if matches!(self, Self::SampleSlices | Self::Sample) {
            host_constants = sample_constants();
            pieces.push(("(generated)", host_constants.as_str()));
        } else if self.op().0 == REDUCE {
            host_constants = format!("const ARGMAX_GROUPS: u32 = {}u;\n", super::ARGMAX_GROUPS);
            pieces.push(("(generated)", host_constants.as_str()));
        }
        if let Self::QuantizeActs(normed) = self {
            pieces.push(ACTS_Q8);
            if normed {
                pieces.push(QUANTIZE_ACTS);
            }
        }
        pieces.push(self.op().0);
        let products_glue;
        if let (Some(form), Some(t)) = (self.matvec_form(), self.weight_type()) {
            if form.int8_cols > 0 {
                pieces.push(MATVEC_INT8);
                pieces.push(ACTS_Q8);
                pieces.push(match form.global_acts {
                    true => MATVEC_INT8_GLOBAL,
                    false => MATVEC_INT8_LOCAL,
                });
                products_glue = int8_glue(t);
                pieces.push(("(generated)", products_glue.as_str()));
            } else {
                pieces.push(MATVEC_FLOAT);
            }
        }
        if with_qkv {
            pieces.push(QKV);
        }
        let mut source = String::new();
        if matches!(self, Self::MatmulCoop(..) | Self::AttentionCoop) {
            source.push_str("enable f16;\nenable wgpu_cooperative_matrix;\n");
        }
        let mut starts = Vec::new();
        for (file, text) in pieces {
            starts.push((file, source.lines().count() + 1));
            source.push_str(&tuning.apply(text, self));
            if !text.ends_with('\n') {
                source.push('\n');
            }
        }
        (source, starts)
    }
}

/// The attention kernels' readers of the key and the value cache (key1/4/8, value1/4/8), each
/// composed from the file of its cache's type.
fn kv_readers(types: KvTypes) -> [(&'static str, String); 2] {
    let reader = |ty: CacheType, kv: &str, cache: &str, rows: &str, binding: &str| {
        let (file, text) = match ty {
            CacheType::F16 => KV_F16,
            CacheType::Q8_0 => KV_Q8_0,
        };
        let text = text
            .replace("{{KV}}", kv)
            .replace("{{CACHE}}", cache)
            .replace("{{ROWS}}", rows)
            .replace("{{ROWS_BINDING}}", binding);
        (file, text)
    };
    // The decode kernel's vector views at bindings 6 and 7 (Kernel::bindings).
    [
        reader(types.k, "key", "k_cache", "k_rows", "6"),
        reader(types.v, "value", "v_cache", "v_rows", "7"),
    ]
}

/// The code of a GLU's activation in the kernels' parameters (ProductParams.glu,
/// ElementParams.kind), as shaders/common.wgsl's `activate` reads it; 0 is none.
pub fn activation_code(act: Activation) -> u32 {
    match act {
        Activation::Silu => 1,
        Activation::GeluTanh => 2,
    }
}

/// The activations' codes and GELU's constants, from the host's.
fn activation_constants() -> String {
    let mut text = String::new();
    for act in Activation::ALL {
        let name = act.name().to_ascii_uppercase();
        text += &format!("const ACT_{name}: u32 = {}u;\n", activation_code(act));
    }
    text += &format!(
        "const GELU_SQRT_2_OVER_PI: f32 = {:?};\nconst GELU_COEF_A: f32 = {:?};\n",
        Activation::GELU_SQRT_2_OVER_PI,
        Activation::GELU_COEF_A
    );
    text
}

/// Everything the host declares into the kernels' sources (parameter structs, constants),
/// which a build's kernels depend on beside the shader files.
pub fn host_declarations() -> String {
    let params = [
        DequantParams::layout(),
        ProductParams::layout(),
        ActsParams::layout(),
        QkNormParams::layout(),
        NormParams::layout(),
        RopeParams::layout(),
        AttentionParams::layout(),
        KvStoreParams::layout(),
        ElementParams::layout(),
        MoeParams::layout(),
        IdParams::layout(),
        ReduceParams::layout(),
        SampleParams::layout(),
    ];
    let structs: String = params.iter().map(|p| p.wgsl()).collect();
    format!(
        "{structs}{}{}{}",
        activation_constants(),
        sample_constants(),
        super::ARGMAX_GROUPS
    )
}

/// The sampler kernel's limits, from the host's: a setting within them samples on the device.
fn sample_constants() -> String {
    use super::sampling::SAMPLE_SLICE;
    use crate::sampling::{DEVICE_BIASES, DEVICE_TOP_K, DEVICE_WINDOW};
    format!(
        "const MAX_K: u32 = {DEVICE_TOP_K}u;\nconst WINDOW: u32 = {DEVICE_WINDOW}u;\nconst MAX_BIAS: u32 = {DEVICE_BIASES}u;\nconst SLICE: u32 = {SAMPLE_SLICE}u;\n"
    )
}

/// The functions every kernel that reads weights calls, bound to one weight type: `load8`
/// (8 elements) and `load32` (32 elements, natively where the type has a decoder for a whole
/// block or sub-block, else as four `load8`).
fn weight_glue(t: GgmlType, suffix: &str) -> String {
    let native32 = !matches!(
        t,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q2K | GgmlType::Q3K
    );
    let load32 = if native32 {
        format!("    return load32_{suffix}(row, c);")
    } else {
        "    let a = load8(row, 4u * c);
    let b = load8(row, 4u * c + 1u);
    let d = load8(row, 4u * c + 2u);
    let e = load8(row, 4u * c + 3u);
    return array<vec4<f32>, 8>(a[0], a[1], b[0], b[1], d[0], d[1], e[0], e[1]);"
            .to_string()
    };
    let load16 = match t {
        GgmlType::Q4K | GgmlType::Q6K => format!("    return load16_{suffix}(row, q);"),
        _ => "    let a = load8(row, 2u * q);
    let b = load8(row, 2u * q + 1u);
    return array<vec4<f32>, 4>(a[0], a[1], b[0], b[1]);"
            .to_string(),
    };
    format!(
        "// The weight type this kernel decodes.
fn load8(row: u32, g: u32) -> array<vec4<f32>, 2> {{
    return load8_{suffix}(row, g);
}}

fn load16(row: u32, q: u32) -> array<vec4<f32>, 4> {{
{load16}
}}

fn load32(row: u32, c: u32) -> array<vec4<f32>, 8> {{
{load32}
}}
"
    )
}

/// The per-type functions of shaders/matvec_int8.wgsl, bound to one weight type.
fn int8_glue(t: GgmlType) -> String {
    let suffix = t.name().to_ascii_lowercase();
    format!(
        "fn unit_groups(u: u32) -> vec2<u32> {{
    return unit_groups_{suffix}(u);
}}

fn dot_unit(row: u32, u: u32, a: Acts16, b: Acts16) -> f32 {{
    return dot_unit_{suffix}(row, u, a, b);
}}
"
    )
}

/// A compiled kernel.
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

pub fn build(gpu: &super::device::Gpu, tuning: &Tuning, kernel: Kernel) -> Result<Pipeline> {
    let name = kernel.name();
    let (source, starts) = kernel.source(tuning);
    let device = &gpu.device;
    let module = gpu
        .scoped(&format!("compiling kernel {name}"), || {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(&name),
                source: wgpu::ShaderSource::Wgsl(source.as_str().into()),
            };
            if tuning.bounds_checks && tuning.loop_bounds {
                device.create_shader_module(desc)
            } else {
                let checks = wgpu::ShaderRuntimeChecks {
                    bounds_checks: tuning.bounds_checks,
                    force_loop_bounding: tuning.loop_bounds,
                    ..wgpu::ShaderRuntimeChecks::checked()
                };
                // SAFETY: every loop in shaders/ is bounded by its parameters, so the loop
                // counters are redundant; bounds checks go where the device guards storage
                // accesses itself, or on request.
                unsafe { device.create_shader_module_trusted(desc, checks) }
            }
        })
        .map_err(|e| locate_shader_error(e, &starts))?;
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: None,
        },
        count: None,
    }];
    for (binding, access) in kernel.bindings() {
        entries.push(wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage {
                    read_only: access == Read,
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    }
    gpu.scoped(&format!("creating pipeline {name}"), || {
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(&name),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&name),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(kernel.op().1),
            compilation_options: wgpu::PipelineCompilationOptions {
                zero_initialize_workgroup_memory: tuning.zero_workgroup_memory,
                ..Default::default()
            },
            cache: gpu.pipeline_cache.as_ref().map(|c| &c.cache),
        });
        Pipeline { pipeline, layout }
    })
}

/// Rewrites `wgsl:LINE:COL` references of the composed source into `file.wgsl:line`.
fn locate_shader_error(e: BackendError, starts: &[(&str, usize)]) -> BackendError {
    let BackendError::Gpu { stage, message } = e else {
        return e;
    };
    let locate = |line: usize| {
        let (file, start) = starts
            .iter()
            .rev()
            .find(|(_, s)| *s <= line)
            .copied()
            .unwrap_or(("?", 1));
        format!("shaders/{file}:{}", line - start + 1)
    };
    let mut places = Vec::new();
    for (i, _) in message.match_indices("wgsl:") {
        let digits: String = message[i + 5..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(line) = digits.parse::<usize>() {
            places.push(locate(line));
        }
    }
    places.dedup();
    let message = if places.is_empty() {
        message
    } else {
        format!("at {}: {message}", places.join(", "))
    };
    BackendError::Gpu { stage, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gpu::tuning::INT8_GLOBAL_MIN_BYTES;
    use crate::quant::ALL_TYPES;
    use wgpu::naga;

    fn every_kv_types() -> impl Iterator<Item = KvTypes> {
        CacheType::ALL
            .into_iter()
            .flat_map(|k| CacheType::ALL.map(|v| KvTypes { k, v }))
    }

    fn every_kernel(tuning: &Tuning) -> Vec<Kernel> {
        let mut all = vec![
            Kernel::RmsNorm,
            Kernel::QkNorm,
            Kernel::AttentionCombine,
            Kernel::Add,
            Kernel::Glu,
            Kernel::GluPairs,
            Kernel::Pointwise,
            Kernel::CopyRow,
            Kernel::ArgmaxPartial,
            Kernel::ArgmaxFinal,
            Kernel::Softmax,
            Kernel::SampleSlices,
            Kernel::Sample,
            Kernel::QuantizeActs(false),
            Kernel::QuantizeActs(true),
            Kernel::MoeRoute,
            Kernel::MoeLists,
            Kernel::MoeCombineAdd,
        ];
        for types in every_kv_types() {
            all.extend([
                Kernel::RopeStoreQkv(types),
                Kernel::KvStore(types),
                Kernel::Attention(types),
                Kernel::AttentionTiled(types),
                Kernel::AttentionDecode(types),
            ]);
        }
        all.extend([
            Kernel::MatmulCoop(64, 0),
            Kernel::MatmulCoop(128, 2048),
            Kernel::AttentionCoop,
        ]);
        for t in ALL_TYPES {
            all.extend([
                Kernel::GetRows(t),
                Kernel::Dequant(t),
                Kernel::DequantF16(t),
                Kernel::Matmul(t),
                Kernel::MatvecId(t),
                Kernel::MatmulId(t),
            ]);
            let mut team = tuning.subgroup_size.unwrap_or(32).min(8);
            while team <= tuning.matvec_wg {
                for int8_cols in [0, tuning.int8_cols_for(t, 256)] {
                    let form = MatvecForm {
                        team,
                        rows: 4,
                        int8_cols,
                        global_acts: false,
                    };
                    all.extend([Kernel::Matvec(t, form), Kernel::MatvecGlu(t, form)]);
                    if int8_cols > 0 {
                        let global = MatvecForm {
                            global_acts: true,
                            ..form
                        };
                        all.extend([Kernel::Matvec(t, global), Kernel::MatvecGlu(t, global)]);
                        all.extend(every_kv_types().map(|kv| Kernel::MatvecQkv(t, global, kv)));
                    }
                    all.extend(every_kv_types().map(|kv| Kernel::MatvecQkv(t, form, kv)));
                }
                team *= 2;
            }
        }
        all
    }

    /// Every composed kernel parses, validates and translates to SPIR-V, in each variant,
    /// including those the test machine's GPU cannot run (tensor cores, other subgroup sizes).
    #[test]
    fn every_kernel_compiles_to_spirv() {
        let tunings = [
            Tuning {
                subgroup_size: Some(32),
                team: None,
                matvec_wg: 256,
                rows_per_team: None,
                fuse_norm: true,
                matvec_width: Some(8),
                attention_keys: 32,
                bounds_checks: true,
                loop_bounds: true,
                zero_workgroup_memory: true,
                coop: true,
                coop_attention: true,
                int8_max_cols: 32768,
                int8_global_min_bytes: INT8_GLOBAL_MIN_BYTES,
            },
            Tuning {
                subgroup_size: None,
                team: None,
                matvec_wg: 256,
                rows_per_team: None,
                fuse_norm: true,
                matvec_width: Some(32),
                attention_keys: 16,
                bounds_checks: true,
                loop_bounds: true,
                zero_workgroup_memory: false,
                coop: false,
                coop_attention: false,
                int8_max_cols: 0,
                int8_global_min_bytes: INT8_GLOBAL_MIN_BYTES,
            },
            Tuning {
                subgroup_size: Some(8),
                team: Some(8),
                matvec_wg: 64,
                rows_per_team: None,
                fuse_norm: true,
                matvec_width: Some(16),
                attention_keys: 32,
                bounds_checks: true,
                loop_bounds: true,
                zero_workgroup_memory: true,
                coop: false,
                coop_attention: false,
                int8_max_cols: 20480,
                int8_global_min_bytes: INT8_GLOBAL_MIN_BYTES,
            },
            Tuning {
                subgroup_size: Some(32),
                team: Some(8),
                matvec_wg: 256,
                rows_per_team: None,
                fuse_norm: true,
                matvec_width: Some(8),
                attention_keys: 32,
                bounds_checks: true,
                loop_bounds: true,
                zero_workgroup_memory: true,
                coop: false,
                coop_attention: false,
                int8_max_cols: 20480,
                int8_global_min_bytes: INT8_GLOBAL_MIN_BYTES,
            },
        ];
        for tuning in &tunings {
            for kernel in every_kernel(tuning) {
                let (source, _) = kernel.source(tuning);
                let module = naga::front::wgsl::parse_str(&source)
                    .unwrap_or_else(|e| panic!("{}: {}", kernel.name(), e.emit_to_string(&source)));
                let info = naga::valid::Validator::new(
                    naga::valid::ValidationFlags::all(),
                    naga::valid::Capabilities::all(),
                )
                .validate(&module)
                .unwrap_or_else(|e| panic!("{}: {}", kernel.name(), e.emit_to_string(&source)));
                let options = naga::back::spv::Options::default();
                naga::back::spv::write_vec(&module, &info, &options, None)
                    .unwrap_or_else(|e| panic!("{}: SPIR-V: {e}", kernel.name()));
                check_interface(kernel, &module, &info);
            }
        }
    }

    /// What the kernel's WGSL must agree on with the host: binding 0 is the host's parameter
    /// struct ([`Kernel::params`]), field for field at the host's offsets; every binding the
    /// entry point uses is one the host binds ([`Kernel::bindings`]), and every one the host
    /// binds is declared, with the same access; the constants the host shares have its
    /// values. A mismatch fails here rather than in a model.
    fn check_interface(kernel: Kernel, module: &naga::Module, info: &naga::valid::ModuleInfo) {
        let name = kernel.name();
        let entry = module
            .entry_points
            .iter()
            .position(|e| e.name == kernel.op().1)
            .unwrap_or_else(|| panic!("{name}: no entry point {}", kernel.op().1));
        let uses = info.get_entry_point(entry);
        let (mut declared, mut used) = (Vec::new(), Vec::new());
        for (handle, var) in module.global_variables.iter() {
            let Some(binding) = &var.binding else {
                continue;
            };
            assert_eq!(binding.group, 0, "{name}: bind group");
            if binding.binding == 0 {
                assert_eq!(var.space, naga::AddressSpace::Uniform, "{name}: binding 0");
                check_params(&name, module, var.ty, kernel.params());
                continue;
            }
            let naga::AddressSpace::Storage { access } = var.space else {
                panic!(
                    "{name}: binding {} is not a storage buffer",
                    binding.binding
                );
            };
            let access = match access.contains(naga::StorageAccess::STORE) {
                true => ReadWrite,
                false => Read,
            };
            declared.push((binding.binding, access));
            if !uses[handle].is_empty() {
                used.push((binding.binding, access));
            }
        }
        let bound = kernel.bindings();
        for b in &used {
            assert!(
                bound.contains(b),
                "{name}: uses {b:?}, the host binds {bound:?}"
            );
        }
        for b in &bound {
            assert!(
                declared.contains(b),
                "{name}: binds {b:?}, the WGSL declares {declared:?}"
            );
        }
        for (constant, want) in shared_constants(kernel) {
            let got = module
                .constants
                .iter()
                .find(|(_, c)| c.name.as_deref() == Some(constant))
                .map(|(_, c)| &module.global_expressions[c.init]);
            let got = match got {
                Some(naga::Expression::Literal(naga::Literal::U32(v))) => *v,
                other => panic!("{name}: const {constant} is {other:?}"),
            };
            assert_eq!(got, want, "{name}: const {constant}");
        }
    }

    /// The constants of the op files that the host's grids and limits assume.
    fn shared_constants(kernel: Kernel) -> Vec<(&'static str, u32)> {
        use crate::backend::gpu::{attention, products};
        match kernel.op().0 .0 {
            "matmul.wgsl" => vec![("BM", products::MATMUL_TILE), ("BN", products::MATMUL_TILE)],
            "matmul_coop.wgsl" => vec![
                ("BN", products::COOP_TILE_ROWS),
                ("BK", products::COOP_K_STEP as u32),
            ],
            "attention.wgsl" => vec![("CHUNK", attention::ATTENTION_CHUNK as u32)],
            "reduce.wgsl" => vec![("ARGMAX_GROUPS", crate::backend::gpu::ARGMAX_GROUPS)],
            _ => Vec::new(),
        }
    }

    /// The WGSL struct of type `ty` has exactly the host's fields, in order, 4 bytes apart.
    fn check_params(
        name: &str,
        module: &naga::Module,
        ty: naga::Handle<naga::Type>,
        host: &ParamsLayout,
    ) {
        let naga::TypeInner::Struct { members, .. } = &module.types[ty].inner else {
            panic!("{name}: binding 0 is not a struct");
        };
        let wgsl: Vec<(String, String, u32)> = members
            .iter()
            .map(|m| {
                let ty = match module.types[m.ty].inner {
                    naga::TypeInner::Scalar(s) if s == naga::Scalar::U32 => "u32",
                    naga::TypeInner::Scalar(s) if s == naga::Scalar::F32 => "f32",
                    ref other => panic!("{name}: member {:?} is {other:?}", m.name),
                };
                (m.name.clone().unwrap_or_default(), ty.to_string(), m.offset)
            })
            .collect();
        let rust: Vec<(String, String, u32)> = host
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.to_string(), f.wgsl_type.to_string(), 4 * i as u32))
            .collect();
        assert_eq!(wgsl, rust, "{name}: the parameters in WGSL and on the host");
    }
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn shader_errors_name_the_file_and_line() {
        let starts = [
            ("common.wgsl", 1),
            ("quant_k.wgsl", 40),
            ("matvec.wgsl", 200),
        ];
        let e = BackendError::Gpu {
            stage: "compiling kernel matvec_q4_k".into(),
            message: "error: unknown identifier\n  ┌─ wgsl:205:9".into(),
        };
        let e = locate_shader_error(e, &starts).to_string();
        assert!(e.contains("shaders/matvec.wgsl:6"), "{e}");
        assert!(e.contains("compiling kernel matvec_q4_k"), "{e}");
    }
}
