// Element-wise ops over the first `len` elements: residual add, GLUs, scaling and soft-caps,
// row copy. Large launches spill into y; `index` rebuilds the linear element index.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// A += B
@compute @workgroup_size(256)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i < p.len) {
        A[i] += B[i];
    }
}

// A[t][j] = act(B[t][j]) * B[t][w + j], w = offset: the gate and up products of a row side by
// side.
@compute @workgroup_size(256)
fn glu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i < p.len) {
        let w = p.offset;
        let gate = 2u * w * (i / w) + i % w;
        A[i] = activate(p.kind, B[gate]) * B[gate + w];
    }
}

// A[i] = B[offset + i]
@compute @workgroup_size(256)
fn copy_row(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i < p.len) {
        A[i] = B[p.offset + i];
    }
}

// A[i] = act(B[2i]) * B[2i + 1]: the GLU over interleaved gate/up products (rows of B are
// twice as wide as rows of A, so the flat indices line up).
@compute @workgroup_size(256)
fn glu_pairs(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i < p.len) {
        A[i] = activate(p.kind, B[2u * i]) * B[2u * i + 1u];
    }
}

// A[i] = value * A[i] (kind 1), or value * tanh(A[i] / value) (kind 2).
@compute @workgroup_size(256)
fn pointwise(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i < p.len) {
        let x = A[i];
        A[i] = select(p.value * x, p.value * tanh(x / p.value), p.kind == 2u);
    }
}
