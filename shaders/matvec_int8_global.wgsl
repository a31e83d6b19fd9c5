// matvec_int8.wgsl's activations, read from memory where quantize_acts.wgsl left them (the
// norm, where fused, already applied), with no workgroup memory, so that the workgroups
// start their weight loads at once and more of them fit on a multiprocessor.

const GLOBAL_ACTS: bool = true;

@group(0) @binding(11) var<storage, read> XQ: array<vec4<u32>>;

fn acts16(t: u32, g: u32) -> Acts16 {
    let groups = p.w_k / 16u;
    let base = acts_base(t, p.w_k) / 4u;
    let d = XQ[base + groups + g / 4u][g % 4u];
    let s = XQ[base + groups + groups / 4u + g / 4u][g % 4u];
    return Acts16(XQ[base + g], bitcast<f32>(d), bitcast<i32>(s));
}

fn prepare_acts(t: u32, li: u32) -> f32 {
    return 0.0;
}
