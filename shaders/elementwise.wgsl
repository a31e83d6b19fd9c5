// Element-wise ops over the first `len` elements: residual add, SwiGLU, row copy.
// Large launches spill into y; `index` rebuilds the linear element index.

struct Params {
    len: u32,
    // copy_row: first element of the source row.
    offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read> C: array<f32>;

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

// A = silu(B) * C
@compute @workgroup_size(256)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i < p.len) {
        let g = B[i];
        A[i] = g / (1.0 + exp(-g)) * C[i];
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

// A[i] = silu(B[2i]) * B[2i + 1]: SwiGLU over interleaved gate/up products (rows of B are
// twice as wide as rows of A, so the flat indices line up).
@compute @workgroup_size(256)
fn swiglu_pairs(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i < p.len) {
        let g = B[2u * i];
        A[i] = g / (1.0 + exp(-g)) * B[2u * i + 1u];
    }
}
