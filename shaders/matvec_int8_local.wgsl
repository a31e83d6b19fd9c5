// matvec_int8.wgsl's activations, quantized by each workgroup into workgroup memory (where
// the norm is fused, or rows are short enough that one more launch would cost more).

const GLOBAL_ACTS: bool = false;

// x[t] as bytes (16 per vector), and each 16-element group's scale and sum.
var<workgroup> xq: array<vec4<u32>, INT8_COLS / 16u>;
var<workgroup> xd: array<f32, INT8_COLS / 16u>;
var<workgroup> xs: array<i32, INT8_COLS / 16u>;

fn acts16(t: u32, g: u32) -> Acts16 {
    return Acts16(xq[g], xd[g], xs[g]);
}

// Quantizes x[t] (times the norm weight with `norm`) into xq, xd and xs, one group of 16 per
// thread at a time (few registers, no exchange between threads); returns this thread's share
// of the sum of x².
fn prepare_acts(t: u32, li: u32) -> f32 {
    var squares = 0.0;
    let xt = t * p.w_k / 4u;
    for (var g = li; g < p.w_k / 16u; g += WG) {
        var v: array<vec4<f32>, 4>;
        for (var i = 0u; i < 4u; i++) {
            v[i] = X[xt + 4u * g + i];
            if (p.norm != 0u) {
                squares += dot(v[i], v[i]);
                v[i] *= NW[4u * g + i];
            }
        }
        let a = quantize16(v);
        xq[g] = a.q;
        xd[g] = a.d;
        xs[g] = a.s;
    }
    return squares;
}
