// The products of matvec.wgsl with f32 activations, for every weight type: each thread takes
// WIDTH activations at a time and dots them with WIDTH weights of each of its team's rows;
// consecutive lanes take consecutive groups, so that the loads of a subgroup, of activations
// and of weights, fall on few cache lines (8 at a time, with bounds, where the row length is
// not a multiple of WIDTH). With `norm`, a team covers all of x, so it sums x² in the same
// loop.

// Weights each thread decodes at a time (8, 16 or 32), and the vectors that hold them.
const WIDTH: u32 = {{MATVEC_WIDTH}}u;
const V: u32 = WIDTH / 4u;

fn x_at(i: u32) -> f32 {
    return X[i / 4u][i % 4u];
}

// Elements e..e+3 of x[t], zero past the row's end (rows of any length).
fn x4(t: u32, e: u32) -> vec4<f32> {
    let b = t * p.w_k + e;
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if (e + i < p.w_k) {
            v[i] = x_at(b + i);
        }
    }
    return v;
}

// Weights WIDTH * g .. WIDTH * (g + 1) of a row.
fn load_width(row: u32, g: u32) -> array<vec4<f32>, V> {
    return {{LOAD_WIDTH}}(row, g);
}

// The products of this thread's team's R rows with x[t], complete in the team's first lane.
fn team_products(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> array<f32, R> {
    let lane = li % TEAM;
    let row0 = linear_group(wid, nwg) * ROWS + (li / TEAM) * R;
    let t = wid.z;
    var acc: array<f32, R>;
    var squares = 0.0;
    if (p.w_k % WIDTH == 0u) {
        let xt = t * p.w_k / 4u;
        for (var g = lane; g < p.w_k / WIDTH; g += TEAM) {
            var x: array<vec4<f32>, V>;
            for (var i = 0u; i < V; i++) {
                x[i] = X[xt + V * g + i];
            }
            if (p.norm != 0u) {
                for (var i = 0u; i < V; i++) {
                    squares += dot(x[i], x[i]);
                    x[i] *= NW[V * g + i];
                }
            }
            for (var r = 0u; r < R; r++) {
                if (row0 + r < p.rows) {
                    let w = load_width(row0 + r, g);
                    var d = 0.0;
                    for (var i = 0u; i < V; i++) {
                        d += dot(w[i], x[i]);
                    }
                    acc[r] += d;
                }
            }
        }
    } else {
        for (var g = lane; g < (p.w_k + 7u) / 8u; g += TEAM) {
            let xa = x4(t, 8u * g);
            let xb = x4(t, 8u * g + 4u);
            for (var r = 0u; r < R; r++) {
                if (row0 + r < p.rows) {
                    let w = load8(row0 + r, g);
                    acc[r] += dot(w[0], xa) + dot(w[1], xb);
                }
            }
        }
    }
    // The norm's scale is common to the whole row (the host fuses the norm only into rows
    // that are a multiple of 32 long).
    var scale = 1.0;
    if (p.norm != 0u) {
        scale = inverseSqrt(team_sum(squares, li) / f32(p.w_k) + p.eps);
    }
    var sums: array<f32, R>;
    for (var r = 0u; r < R; r++) {
        sums[r] = team_sum(acc[r], li) * scale;
    }
    return sums;
}

