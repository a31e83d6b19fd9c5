//! Host bodies of the provided ops that a backend without kernels of its own for them runs
//! between a `read` and a `write` (see [`super::Backend::moe_route`]).

use super::{Activation, Routing};

/// `act(gate) · up` of each row of `gate_up` (`[n, 2w]`, the gate's `w` values then the up's).
pub(super) fn glu(act: Activation, gate_up: &[f32], w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks(2 * w) {
        let (gate, up) = row.split_at(w);
        out.extend(gate.iter().zip(up).map(|(g, u)| act.apply(*g) * u));
    }
    out
}

/// Each of the `n` rows' routes (`[n, 2k]`) from its router logits (`[n, n_expert]`).
pub(super) fn routes(routing: Routing, logits: &[f32], n: usize) -> Vec<f32> {
    let width = 2 * routing.k;
    let mut routes = vec![0.0; n * width];
    let n_expert = logits.len() / n.max(1);
    for (l, r) in logits.chunks(n_expert).zip(routes.chunks_mut(width)) {
        routing.route(l, r);
    }
    routes
}

/// acc[t] += Σ_j weight[t][j] · y[t·k + j] for each row of `acc` (`[n, d]`), with the `k`
/// experts' ids and weights of `routes` (`[n, 2k]`) and their outputs `y` (`[n·k, d]`).
pub(super) fn combine_experts_add(y: &[f32], routes: &[f32], acc: &mut [f32], k: usize) {
    let n = routes.len() / (2 * k);
    let d = acc.len() / n.max(1);
    assert_eq!(
        y.len(),
        n * k * d,
        "moe_combine_add: experts' outputs of the residual's width"
    );
    let mut mix = vec![0f32; d];
    for (t, (a, route)) in acc.chunks_mut(d).zip(routes.chunks(2 * k)).enumerate() {
        // The experts' sum first, then the residual add, as llama.cpp orders them.
        mix.fill(0.0);
        for (j, &weight) in route[k..].iter().enumerate() {
            let out = &y[(t * k + j) * d..][..d];
            mix.iter_mut().zip(out).for_each(|(m, o)| *m += weight * o);
        }
        a.iter_mut().zip(&mix).for_each(|(a, m)| *a += m);
    }
}
