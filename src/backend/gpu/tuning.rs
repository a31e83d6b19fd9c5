//! Sizes and code variants chosen for one device: the kernel selection (matvec teams, rows
//! per team, 8-bit activations, tensor cores, prompt attention tiles) and the `{{NAME}}`
//! placeholders of the shaders it fills in.

use super::kernels::{Kernel, MatvecForm, MatvecOutput};
use super::switches::Switches;
use crate::quant::GgmlType;

/// Products whose workgroups would read this many bytes of activations between them read
/// them quantized once ([`Tuning::int8_global_min_bytes`]). Measured on the H100
/// (BENCHMARKS.md): the 8B shape's down projection (29 MB so) decodes 26% faster with them,
/// the 3B shape's (11 MB) 2% slower.
pub const INT8_GLOBAL_MIN_BYTES: usize = 16 << 20;

/// Sizes and code variants chosen for one device.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// The subgroup size when the device has subgroups of one fixed size.
    pub subgroup_size: Option<u32>,
    /// Threads that share one matrix row in matvec, when fixed (VIBRANT_MATVEC_TEAM); else
    /// chosen per matrix by [`Tuning::team_for`].
    pub team: Option<u32>,
    /// Threads per matvec workgroup.
    pub matvec_wg: u32,
    /// Weight rows each matvec team computes, when fixed (VIBRANT_MATVEC_ROWS); else 2 with
    /// f32 activations and 4 with 8-bit ones (their loads from workgroup memory are cheap to
    /// share, and fewer workgroups quantize x: 5% faster decode on the H100).
    pub rows_per_team: Option<u32>,
    /// Decode matvecs normalise their input themselves instead of a separate RMSNorm launch.
    pub fuse_norm: bool,
    /// Weights a matvec thread decodes at a time when fixed (VIBRANT_MATVEC_WIDTH: 8, 16 or
    /// 32); else [`Tuning::matvec_width_for`] picks per weight type.
    pub matvec_width: Option<u32>,
    /// Keys per tile of the prompt attention kernel (32, or 16 where workgroup memory is
    /// short); 0: that kernel does not fit, prompts attend one query per workgroup.
    pub attention_keys: u32,
    /// Keep wgpu's bounds checks in the kernels. Off on Vulkan, where wgpu turns on the
    /// device's robustBufferAccess, so that storage reads past a buffer stay harmless whatever
    /// the shader does; what goes is the clamping of workgroup- and register-array indices
    /// (13% of a 3B prompt on the H100, BENCHMARKS.md). VIBRANT_UNCHECKED_SHADERS=0 keeps
    /// every check (and the loop counters), =1 drops them on every API.
    pub bounds_checks: bool,
    /// Keep wgpu's loop counters, which cut short a loop that would never end. Off unless
    /// VIBRANT_UNCHECKED_SHADERS=0: every loop in shaders/ is bounded by its parameters, the
    /// host's waits are bounded anyway, and the counters stop the compiler from unrolling
    /// (decode 12% and prompts 17% slower with them on the H100, BENCHMARKS.md).
    pub loop_bounds: bool,
    /// Have wgpu zero workgroup memory before each kernel runs, as WGSL promises. Off on GL:
    /// there naga writes the zeroing into the shader as one constructor per array, which
    /// took llvmpipe 17 s to compile for the prompt matmul's tiles (0.4 s without it), and
    /// the kernels that run there (no subgroups, no f16) write every workgroup element they
    /// read first.
    pub zero_workgroup_memory: bool,
    /// Prompt matmuls on tensor cores (16×16×16 f16 cooperative matrices, subgroups of 32).
    pub coop: bool,
    /// Prompt attention on tensor cores too (VIBRANT_COOP_ATTENTION=0 keeps the FMA kernel).
    pub coop_attention: bool,
    /// The longest row (a multiple of 4096) whose activations a decode matvec can quantize to
    /// 8 bits in workgroup memory, for the integer dot product path of Q4_K and Q6_K; 0 where
    /// that path is off (no subgroups, or VIBRANT_INT8=0).
    pub int8_max_cols: u32,
    /// 8-bit products whose workgroups would read at least this many bytes of activations
    /// between them read activations quantized once instead ([`MatvecForm::global_acts`];
    /// VIBRANT_INT8_GLOBAL_BYTES, for measurements): below it the extra launch costs more
    /// than each workgroup quantizing x itself.
    pub int8_global_min_bytes: usize,
}

impl Tuning {
    pub fn for_device(gpu: &super::device::Gpu) -> Self {
        let (min, max) = (gpu.info.subgroup_min_size, gpu.info.subgroup_max_size);
        let subgroup_size =
            (gpu.features.subgroups && min == max && (4..=128).contains(&min)).then_some(min);
        let matvec_wg = if subgroup_size.is_some_and(|s| s >= 32) {
            256
        } else {
            64
        }
        .min(gpu.limits.max_compute_invocations_per_workgroup);
        let switches = Switches::get();
        let team = switches.matvec_team.filter(|t| *t <= matvec_wg);
        // shaders/attention.wgsl's attention_tiled: 16 KB of queries, 512 bytes per key of a
        // tile and 512 bytes more.
        let attention_keys = [32, 16]
            .into_iter()
            .find(|k| 16896 + 640 * k <= gpu.limits.max_compute_workgroup_storage_size)
            .unwrap_or(0);
        let bounds_checks = switches
            .unchecked_shaders
            .map_or(gpu.info.backend != wgpu::Backend::Vulkan, |unchecked| {
                !unchecked
            });
        let loop_bounds = switches.unchecked_shaders == Some(false);
        let zero_workgroup_memory = gpu.info.backend != wgpu::Backend::Gl;
        let coop = switches.coop
            && gpu.features.cooperative_matrix
            && gpu.features.shader_f16
            && subgroup_size == Some(32);
        let int8_max_cols = match subgroup_size {
            Some(s) if switches.int8 && s >= 4 => {
                Self::int8_capacity(gpu.limits.max_compute_workgroup_storage_size, matvec_wg)
            }
            _ => 0,
        };
        Self {
            subgroup_size,
            team,
            matvec_wg,
            rows_per_team: switches.matvec_rows,
            fuse_norm: switches.fuse_norm,
            matvec_width: switches.matvec_width,
            attention_keys,
            bounds_checks,
            loop_bounds,
            zero_workgroup_memory,
            coop,
            coop_attention: coop && switches.coop_attention,
            int8_max_cols,
            int8_global_min_bytes: gpu
                .options
                .int8_global_min_bytes
                .or(switches.int8_global_bytes)
                .unwrap_or(INT8_GLOBAL_MIN_BYTES),
        }
    }

    /// The longest row, a multiple of 4096, whose 8-bit activations fit beside the matvec's
    /// other workgroup arrays: per element a byte and, per 16, an f32 scale and an i32 sum
    /// (1.5 bytes); an f32 partial sum per thread, and one per subgroup (subgroups of at
    /// least 4: a byte per thread).
    fn int8_capacity(workgroup_bytes: u32, matvec_wg: u32) -> u32 {
        let free = workgroup_bytes.saturating_sub(5 * matvec_wg);
        free * 2 / 3 / 4096 * 4096
    }

    pub fn describe(&self) -> String {
        format!(
            "matvec {} threads × {} rows{}, {} prompt matmul",
            self.team
                .map_or("per-matrix".to_string(), |t| t.to_string()),
            self.rows_per_team
                .map_or("per-matrix".to_string(), |r| r.to_string()),
            if self.subgroup_size.is_some() {
                " (subgroups)"
            } else {
                ""
            },
            if self.coop { "tensor-core" } else { "FMA" }
        )
    }

    /// Weights each matvec thread decodes at a time: 16 where one scale covers them (Q4_K,
    /// Q6_K: the scale is decoded once; decode 6% faster on the H100 than 8), else 8 (types
    /// whose 8-weight decoder is already cheap lose with 16, BENCHMARKS.md).
    pub fn matvec_width_for(&self, ty: GgmlType) -> u32 {
        self.matvec_width.unwrap_or(match ty {
            GgmlType::Q4K | GgmlType::Q6K => 16,
            _ => 8,
        })
    }

    /// The decode matvec for `rows` rows of type `ty`, `cols` wide, writing `output`: 8-bit
    /// activations where [`Tuning::int8_cols_for`] allows, its rows per team and its team.
    pub fn matvec_form(
        &self,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        output: MatvecOutput,
    ) -> MatvecForm {
        let int8_cols = self.int8_cols_for(ty, cols);
        let chosen = self
            .rows_per_team
            .unwrap_or(if int8_cols > 0 { 4 } else { 2 });
        let rows_per_team = match output {
            MatvecOutput::Plain => chosen,
            MatvecOutput::Glu => chosen.next_multiple_of(2),
            MatvecOutput::Qkv => 4,
        };
        // The integer path's threads take units of 32 weights.
        let width = match int8_cols {
            0 => self.matvec_width_for(ty),
            _ => 32,
        };
        let team = self.team_for(width, rows, cols, rows_per_team);
        let workgroups = rows.div_ceil((self.matvec_wg / team * rows_per_team) as usize);
        MatvecForm {
            team,
            rows: rows_per_team,
            int8_cols,
            global_acts: int8_cols > 0 && 4 * cols * workgroups >= self.int8_global_min_bytes,
        }
    }

    /// The 8-bit activation capacity of a matvec over rows `cols` long of type `ty`: `cols`
    /// rounded up to a multiple of 4096 (few variants, little workgroup memory) for Q4_K and
    /// Q6_K rows that fit, else 0 (f32 activations).
    pub fn int8_cols_for(&self, ty: GgmlType, cols: usize) -> u32 {
        let capacity = (cols as u32).next_multiple_of(4096);
        let fits = cols.is_multiple_of(256) && capacity <= self.int8_max_cols;
        match ty {
            GgmlType::Q4K | GgmlType::Q6K if fits => capacity,
            _ => 0,
        }
    }

    /// Threads per row for `rows` rows `cols` wide, a thread decoding `width` weights at a
    /// time, `rows_per_team` rows to a team: about four chunks per thread, from one
    /// subgroup up to 128 threads. Fewer threads per row leave each a longer loop (latency,
    /// for short matrices); more make each workgroup's life short (launch and reduction
    /// overhead, for the large ones). Measured on the H100 across 32..256 (BENCHMARKS.md).
    /// Matrices of few rows spread each row over more threads, up to the workgroup, until the
    /// launch has MIN_GROUPS workgroups.
    fn team_for(&self, width: u32, rows: usize, cols: usize, rows_per_team: u32) -> u32 {
        const MIN_GROUPS: usize = 256;
        if let Some(team) = self.team {
            return team;
        }
        let chunks = cols.div_ceil(4 * width as usize).next_power_of_two() as u32;
        let mut team = chunks.clamp(self.subgroup_size.unwrap_or(32), 128.min(self.matvec_wg));
        while team < self.matvec_wg
            && rows.div_ceil((self.matvec_wg / team * rows_per_team) as usize) < MIN_GROUPS
        {
            team *= 2;
        }
        team
    }

    fn team_sum(&self, team: u32) -> &'static str {
        if self.subgroup_size == Some(team) {
            "    return subgroupAdd(v);"
        } else if self.subgroup_size.is_some_and(|s| s < team) {
            // Teams of several subgroups (consecutive invocations): subgroup sums, then the
            // team's first lane adds them up in workgroup memory.
            "    partial[li] = subgroupAdd(v);
    workgroupBarrier();
    var s = 0.0;
    if (li % TEAM == 0u) {
        for (var i = 0u; i < TEAM; i += SUBGROUP) {
            s += partial[li + i];
        }
    }
    workgroupBarrier();
    return s;"
        } else if self.subgroup_size.is_some() {
            // Teams smaller than a subgroup: a butterfly over the team's aligned lanes.
            "    var s = v;
    for (var offset = TEAM / 2u; offset > 0u; offset >>= 1u) {
        s += subgroupShuffleXor(s, offset);
    }
    return s;"
        } else {
            "    partial[li] = v;
    workgroupBarrier();
    var s = 0.0;
    if (li % TEAM == 0u) {
        for (var i = 0u; i < TEAM; i++) {
            s += partial[li + i];
        }
    }
    workgroupBarrier();
    return s;"
        }
    }

    pub(super) fn apply(&self, text: &str, kernel: Kernel) -> String {
        let form = kernel.matvec_form().unwrap_or(MatvecForm {
            team: 32,
            rows: 1,
            int8_cols: 0,
            global_acts: false,
        });
        let (team, rows_per_team) = (form.team, form.rows);
        let width = kernel.weight_type().map_or(8, |t| self.matvec_width_for(t));
        let (coop_tokens, y_stride) = match kernel {
            Kernel::MatmulCoop(tokens, y_stride) => (tokens, y_stride),
            _ => (64, 0),
        };
        text.replace("{{WG}}", &self.matvec_wg.to_string())
            .replace("{{TEAM}}", &team.to_string())
            .replace("{{MATVEC_WIDTH}}", &width.to_string())
            .replace("{{LOAD_WIDTH}}", &format!("load{width}"))
            .replace(
                "{{ATTENTION_KEYS}}",
                &self.attention_keys.max(16).to_string(),
            )
            .replace("{{SUBGROUP}}", &self.subgroup_size.unwrap_or(1).to_string())
            .replace("{{ROWS_PER_TEAM}}", &rows_per_team.to_string())
            .replace("{{TEAM_SUM}}", self.team_sum(team))
            .replace("{{INT8_COLS}}", &form.int8_cols.to_string())
            .replace("{{COOP_TOKENS}}", &coop_tokens.to_string())
            .replace("{{COOP_Y_STRIDE}}", &y_stride.to_string())
    }
}
