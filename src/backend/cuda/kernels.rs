//! The kernel functions of the loaded modules, and launches: arguments travel as 8-byte slots
//! (the driver copies each parameter's size from its slot, little-endian, so an int or a float
//! sits in the low bytes), launched at once or recorded for a step's graph (graph.rs).

use super::compile;
use super::device::{driver_error, Device};
use super::graph::Launch;
use crate::backend::{BackendError, Result};
use crate::quant::{GgmlType, ALL_TYPES};
use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};

/// Every kernel: its file in `cuda/` and its function name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    Matmul,
    /// cuda/matmul.cu's warp-per-row products of one block-quantized type.
    MatmulChunks(GgmlType),
    /// cuda/matmul.cu's tensor-core products of one block-quantized type (prompts).
    MatmulMma(GgmlType),
    /// cuda/matmul_q8.cu's products with 8-bit activations (decode), for the types of
    /// `has_q8_products`: with `rope`, those of a step's [q | k | v] rows that rotate and store
    /// them; with `one_token`, the kernels for a single token.
    MatmulQ8 {
        ty: GgmlType,
        rope: bool,
        one_token: bool,
    },
    QuantizeActs,
    RmsNormQuantize,
    Embed,
    RmsNorm,
    Add,
    Scale,
    SoftCap,
    Glu,
    Copy,
    RopeStoreKv,
    Attention,
    AttentionSplit,
    AttentionGrouped,
    AttentionMerge,
    AttentionFlash,
    MoeRoute,
    MatmulId,
    MoeCombineAdd,
    Argmax,
    EmbedPicked,
    FillInts,
    Hang,
}

impl Kernel {
    const FIXED: [Kernel; 23] = [
        Kernel::Matmul,
        Kernel::QuantizeActs,
        Kernel::RmsNormQuantize,
        Kernel::Embed,
        Kernel::RmsNorm,
        Kernel::Add,
        Kernel::Scale,
        Kernel::SoftCap,
        Kernel::Glu,
        Kernel::Copy,
        Kernel::RopeStoreKv,
        Kernel::Attention,
        Kernel::AttentionSplit,
        Kernel::AttentionGrouped,
        Kernel::AttentionMerge,
        Kernel::AttentionFlash,
        Kernel::MoeRoute,
        Kernel::MatmulId,
        Kernel::MoeCombineAdd,
        Kernel::Argmax,
        Kernel::EmbedPicked,
        Kernel::FillInts,
        Kernel::Hang,
    ];

    pub(crate) fn all() -> impl Iterator<Item = Kernel> {
        let blocked = || ALL_TYPES.into_iter().filter(|t| t.block_size() > 1);
        Self::FIXED
            .into_iter()
            .chain(blocked().map(Kernel::MatmulChunks))
            .chain(blocked().map(Kernel::MatmulMma))
            .chain(
                ALL_TYPES
                    .into_iter()
                    .filter(|t| has_q8_products(*t))
                    .flat_map(|ty| {
                        [(false, false), (false, true), (true, false), (true, true)].map(
                            |(rope, one_token)| Kernel::MatmulQ8 {
                                ty,
                                rope,
                                one_token,
                            },
                        )
                    }),
            )
    }

    /// The source file and the function.
    pub(crate) fn place(self) -> (&'static str, &'static str) {
        match self {
            Self::Matmul => ("matmul", "matmul"),
            Self::MatmulChunks(ty) => ("matmul", blocked_matmul_name(ty, false)),
            Self::MatmulMma(ty) => ("matmul", blocked_matmul_name(ty, true)),
            // Only the types of has_q8_products are launched; any other fails to load by name.
            Self::MatmulQ8 {
                ty,
                rope,
                one_token,
            } => {
                let names = q8_matmul_names(ty).unwrap_or(["none"; 4]);
                ("matmul_q8", names[2 * rope as usize + one_token as usize])
            }
            Self::QuantizeActs => ("matmul_q8", "quantize_acts"),
            Self::RmsNormQuantize => ("matmul_q8", "rms_norm_quantize"),
            Self::Embed => ("matmul", "embed"),
            Self::RmsNorm => ("norm", "rms_norm"),
            Self::Add => ("elementwise", "add"),
            Self::Scale => ("elementwise", "scale"),
            Self::SoftCap => ("elementwise", "softcap"),
            Self::Glu => ("elementwise", "glu"),
            Self::Copy => ("elementwise", "copy"),
            Self::RopeStoreKv => ("rope", "rope_store_kv"),
            Self::Attention => ("attention", "attention"),
            Self::AttentionSplit => ("attention", "attention_split"),
            Self::AttentionGrouped => ("attention", "attention_grouped"),
            Self::AttentionMerge => ("attention", "attention_merge"),
            Self::AttentionFlash => ("attention", "attention_flash"),
            Self::MoeRoute => ("moe", "moe_route"),
            Self::MatmulId => ("moe", "matmul_id"),
            Self::MoeCombineAdd => ("moe", "moe_combine_add"),
            Self::Argmax => ("tokens", "argmax"),
            Self::EmbedPicked => ("tokens", "embed_picked"),
            Self::FillInts => ("tokens", "fill_ints"),
            Self::Hang => ("hang", "hang"),
        }
    }
}

/// The function of cuda/matmul.cu's MATMUL_CHUNKS (or, with `mma`, MATMUL_MMA) for a
/// block-quantized type.
fn blocked_matmul_name(ty: GgmlType, mma: bool) -> &'static str {
    let (chunks, mma_name) = match ty {
        GgmlType::Q4_0 => ("matmul_q4_0", "matmul_mma_q4_0"),
        GgmlType::Q4_1 => ("matmul_q4_1", "matmul_mma_q4_1"),
        GgmlType::Q5_0 => ("matmul_q5_0", "matmul_mma_q5_0"),
        GgmlType::Q5_1 => ("matmul_q5_1", "matmul_mma_q5_1"),
        GgmlType::Q8_0 => ("matmul_q8_0", "matmul_mma_q8_0"),
        GgmlType::Q2K => ("matmul_q2_k", "matmul_mma_q2_k"),
        GgmlType::Q3K => ("matmul_q3_k", "matmul_mma_q3_k"),
        GgmlType::Q4K => ("matmul_q4_k", "matmul_mma_q4_k"),
        GgmlType::Q5K => ("matmul_q5_k", "matmul_mma_q5_k"),
        GgmlType::Q6K => ("matmul_q6_k", "matmul_mma_q6_k"),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => ("matmul", "matmul"),
    };
    if mma {
        mma_name
    } else {
        chunks
    }
}

/// Whether cuda/matmul_q8.cu has products with 8-bit activations for a weight type.
pub(crate) fn has_q8_products(ty: GgmlType) -> bool {
    q8_matmul_names(ty).is_some()
}

/// The functions of cuda/matmul_q8.cu's Q8_PRODUCTS for a weight type, where it has them: the
/// product for up to MM_TOKENS tokens and for one, then the same that rotate and store a
/// step's [q | k | v].
fn q8_matmul_names(ty: GgmlType) -> Option<[&'static str; 4]> {
    macro_rules! names {
        ($t:literal) => {
            [
                concat!("matmul_q8_", $t),
                concat!("matmul_q8_", $t, "_1"),
                concat!("matmul_q8_rope_", $t),
                concat!("matmul_q8_rope_", $t, "_1"),
            ]
        };
    }
    Some(match ty {
        GgmlType::Q4_0 => names!("q4_0"),
        GgmlType::Q4_1 => names!("q4_1"),
        GgmlType::Q5_0 => names!("q5_0"),
        GgmlType::Q5_1 => names!("q5_1"),
        GgmlType::Q8_0 => names!("q8_0"),
        GgmlType::Q4K => names!("q4_k"),
        GgmlType::Q5K => names!("q5_k"),
        GgmlType::Q6K => names!("q6_k"),
        _ => return None,
    })
}

/// A launch argument's 8-byte slot.
pub(crate) trait ArgBits {
    fn bits(self) -> u64;
}

impl ArgBits for u64 {
    fn bits(self) -> u64 {
        self
    }
}

impl ArgBits for i32 {
    fn bits(self) -> u64 {
        self as u32 as u64
    }
}

impl ArgBits for f32 {
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
}

/// An `int` argument from a size the caller has checked fits (shapes are far below 2³¹).
pub(crate) fn int(n: usize) -> u64 {
    i32::try_from(n)
        .expect("a kernel's int argument below 2^31")
        .bits()
}

pub(crate) struct Kernels {
    modules: Vec<sys::CUmodule>,
    functions: HashMap<Kernel, sys::CUfunction>,
}

impl Kernels {
    /// Compiles (or finds on disk) and loads every kernel file for the device.
    pub(crate) fn load(device: &Device, disk_cache: bool) -> Result<Self> {
        let cc = device.summary.compute_capability;
        let driver = disk_cache.then_some(device.summary.driver_version);
        let mut kernels = Self {
            modules: Vec::new(),
            functions: HashMap::new(),
        };
        for (file, _) in compile::SOURCES {
            let ptx = compile::compile(file, cc, driver)?;
            // SAFETY: NUL-terminated PTX; the context is current (Device::open).
            let module = unsafe { result::module::load_data(ptx.as_ptr() as *const c_void) }
                .map_err(|e| driver_error(&format!("loading the kernels of cuda/{file}.cu"), e))?;
            kernels.modules.push(module);
            for kernel in Kernel::all().filter(|k| k.place().0 == file) {
                let name = CString::new(kernel.place().1).expect("no NUL");
                // SAFETY: a module just loaded.
                let f = unsafe { result::module::get_function(module, name) }.map_err(|e| {
                    driver_error(
                        &format!("finding kernel {} in cuda/{file}.cu", kernel.place().1),
                        e,
                    )
                })?;
                kernels.functions.insert(kernel, f);
            }
        }
        Ok(kernels)
    }

    /// Launches `kernel` on the device's stream; `args` in the order of its parameters.
    pub(crate) fn launch(
        &self,
        device: &Device,
        kernel: Kernel,
        grid: (u32, u32, u32),
        block: u32,
        args: &[u64],
    ) -> Result<()> {
        let name = kernel.place().1;
        if grid.1 > 65535 || grid.2 > 65535 || grid.0 == 0 || grid.0 > i32::MAX as u32 {
            return Err(BackendError::Unsupported(format!(
                "kernel {name}: a grid of {grid:?} blocks is past CUDA's limits"
            )));
        }
        device.launch(Launch {
            func: self.functions[&kernel],
            name,
            grid,
            block,
            args: args.to_vec(),
        })
    }

    /// Unloads the modules, unless the device hung (unloading behind a kernel that never ends
    /// could block).
    pub(crate) fn unload(&mut self, device: &Device) {
        if device.is_hung() || device.wait("unloading the kernels").is_err() {
            return;
        }
        for module in self.modules.drain(..) {
            // SAFETY: loaded in load, unloaded once, after the stream drained.
            let _ = unsafe { result::module::unload(module) };
        }
    }
}
