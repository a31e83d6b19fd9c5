// RMSNorm: y = x / sqrt(mean(x²) + eps) * w, one workgroup per row.

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(256)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let base = wid.x * p.cols;
    var sum = 0.0;
    for (var i = li; i < p.cols; i += WG) {
        let v = X[base + i];
        sum += v * v;
    }
    partial[li] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(partial[0] / f32(p.cols) + p.eps);
    for (var i = li; i < p.cols; i += WG) {
        Y[base + i] = X[base + i] * scale * weight[i];
    }
}
