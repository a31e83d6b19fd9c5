//! Mixtures of experts on the device: routing (each row's top experts and weights), the
//! products with the chosen experts (ggml's `mul_mat_id`), and their weighted sum into the
//! residual stream. Routing stays on the device: no step waits on the host.

use super::*;
use params::{IdParams, MoeParams};

impl WgpuBackend {
    pub(super) fn route_experts(
        &mut self,
        logits: &GpuTensor,
        routing: Routing,
        routes: &GpuTensor,
        n: usize,
    ) {
        assert_eq!(
            routes.cols,
            2 * routing.k,
            "moe_route: ids and weights of k experts"
        );
        let params = MoeParams {
            n: n as u32,
            width: logits.cols as u32,
            k: routing.k as u32,
            normalize: routing.normalize as u32,
        };
        let (x, y) = grid((n as u64).div_ceil(64));
        let cost = Cost::bytes(4 * (n * (logits.cols + routes.cols)) as u64);
        let buffers = [&routes.buf, &logits.buf];
        self.dispatch(Kernel::MoeRoute, &params, &buffers, (x, y, 1), cost);
    }

    /// A dispatch per part of each run, over the part's experts: decoding, every choice's
    /// workgroups read their expert id and those of the part's experts compute their rows;
    /// prompts (or choices past a grid dimension), each expert's tiles over its list of
    /// choices, made first.
    pub(super) fn expert_products(
        &mut self,
        x: &GpuTensor,
        w: &GpuMatrix,
        routes: &GpuTensor,
        input: ExpertInput,
        out: &GpuTensor,
        n: usize,
    ) {
        let k = routes.cols / 2;
        let block = w.rows / w.experts;
        assert_eq!((x.cols, out.cols), (w.cols, block), "{}: shape", w.name);
        let choices = (n * k) as u32;
        let tiled = n >= TILED_MIN_TOKENS || choices > u16::MAX as u32;
        let lists = tiled.then(|| self.expert_lists(w.experts, routes, n));
        let (gx, gy) = grid(block as u64);
        for run in &w.runs {
            for part in &run.parts {
                let first = run.offset + part.row_start as usize;
                let params = IdParams {
                    w_k: w.cols as u32,
                    w_bpr: part.layout.blocks_per_row,
                    w_scales: part.layout.scales_offset,
                    rows: block as u32,
                    k: k as u32,
                    expert_start: (first / block) as u32,
                    experts: part.rows / block as u32,
                    per_choice: (input == ExpertInput::Choice) as u32,
                    n: n as u32,
                };
                let cost = expert_cost(w, part, &params, choices, n * k);
                let ty = run.ggml_type;
                match &lists {
                    Some(lists) => {
                        let buffers = [&part.buf, &x.buf, &routes.buf, &out.buf, &lists.buf];
                        // Tiles of 64 rows × 64 listed choices (an expert has at most n).
                        let groups = (
                            (block as u32).div_ceil(64),
                            (n as u32).div_ceil(64),
                            params.experts,
                        );
                        self.dispatch(Kernel::MatmulId(ty), &params, &buffers, groups, cost);
                    }
                    None => {
                        let buffers = [&part.buf, &x.buf, &routes.buf, &out.buf];
                        let groups = (gx, gy, choices);
                        self.dispatch(Kernel::MatvecId(ty), &params, &buffers, groups, cost);
                    }
                }
            }
        }
    }

    /// Each expert's list of the choices routed to it, for the tiled prompt products.
    fn expert_lists(&mut self, experts: usize, routes: &GpuTensor, n: usize) -> GpuTensor {
        let lists = self.scratch(Scratch::ExpertLists, experts, n + 1);
        let k = routes.cols / 2;
        let params = MoeParams {
            n: n as u32,
            width: experts as u32,
            k: k as u32,
            normalize: 0,
        };
        let (gx, gy) = grid(experts as u64);
        let cost = Cost::bytes(4 * (experts * n * k * 2) as u64);
        let buffers = [&lists.buf, &routes.buf];
        self.dispatch(Kernel::MoeLists, &params, &buffers, (gx, gy, 1), cost);
        lists
    }

    pub(super) fn combine_experts(
        &mut self,
        y: &GpuTensor,
        routes: &GpuTensor,
        acc: &GpuTensor,
        n: usize,
    ) {
        assert_eq!(
            y.cols, acc.cols,
            "moe_combine_add: experts' outputs of the residual's width"
        );
        let k = routes.cols / 2;
        let params = MoeParams {
            n: n as u32,
            width: acc.cols as u32,
            k: k as u32,
            normalize: 0,
        };
        let groups = grid(((n * acc.cols) as u64).div_ceil(64));
        let cost = Cost::bytes(4 * (n * acc.cols * (k + 2)) as u64);
        let buffers = [&acc.buf, &y.buf, &routes.buf];
        let dims = (groups.0, groups.1, 1);
        self.dispatch(Kernel::MoeCombineAdd, &params, &buffers, dims, cost);
    }
}

/// As if the choices spread evenly over the experts: a part's share of them, reading each
/// chosen expert's rows once.
fn expert_cost(
    w: &GpuMatrix,
    part: &MatrixPart,
    params: &IdParams,
    choices: u32,
    rows_in: usize,
) -> Cost {
    let block = params.rows as usize;
    let share = params.experts as f64 / w.experts as f64;
    let read = (choices as f64 * share).min(params.experts as f64) / params.experts as f64;
    Cost {
        bytes: (part.buf.buffer.size() as f64 * read) as u64
            + 4 * (rows_in * (w.cols + block)) as u64,
        flops: (2.0 * (rows_in * block * w.cols) as f64 * share) as u64,
    }
}
