//! Every CUDA kernel file compiles with NVRTC for the H100/H200's architecture (sm_90), has
//! every kernel the backend launches, and each of its kernels waits for the kernel before it
//! before touching memory. NVRTC needs no GPU nor driver, so this runs on any machine with
//! libnvrtc on the library path (the `nvidia-cuda-nvrtc` wheel's lib folder will do); without
//! it the tests fail.
#![cfg(feature = "cuda")]

use vibrant::backend::cuda::compile;

#[test]
fn every_kernel_file_compiles_for_sm_90() {
    assert!(
        compile::nvrtc_present(),
        "libnvrtc.so.13 is not on the library path (LD_LIBRARY_PATH): this test needs it"
    );
    let mut failures = Vec::new();
    for (name, _) in compile::SOURCES {
        match compile::compile(name, (9, 0), None) {
            Ok(ptx) => assert!(
                String::from_utf8_lossy(&ptx).contains(".entry"),
                "cuda/{name}.cu: PTX without a kernel entry"
            ),
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_kernel_the_backend_launches_is_an_entry_of_its_file() {
    assert!(
        compile::nvrtc_present(),
        "libnvrtc.so.13 is not on the library path"
    );
    for (file, function) in vibrant::backend::cuda::entry_points() {
        let ptx = compile::compile(file, (9, 0), None).expect("compiles");
        let ptx = String::from_utf8_lossy(&ptx);
        assert!(
            ptx.contains(&format!(".entry {function}(")),
            "cuda/{file}.cu has no kernel {function}"
        );
    }
}

/// The instructions of each kernel's body in `ptx`, by kernel name.
fn kernel_bodies(ptx: &str) -> Vec<(String, Vec<String>)> {
    ptx.split(".entry ")
        .skip(1)
        .map(|entry| {
            let name = entry.split('(').next().unwrap_or_default().to_string();
            let body = entry.split_once('{').map_or("", |(_, b)| b);
            let instructions = body
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty() && !l.starts_with("//"))
                .collect();
            (name, instructions)
        })
        .collect()
}

/// Whether an instruction touches memory that another kernel may write or read (parameters,
/// prefetches and the read-only path's loads do not: kernels read weights, which nothing
/// writes, through it before they wait).
fn touches_memory(instruction: &str) -> bool {
    // A predicated instruction (`@%p1 ld.global …`) names its predicate first.
    let mut words = instruction
        .split_whitespace()
        .skip_while(|w| w.starts_with('@'));
    let op = words.next().unwrap_or_default();
    ["ld.", "st.", "atom.", "red.", "cp.async"]
        .iter()
        .any(|p| op.starts_with(p))
        && !op.starts_with("ld.param")
        && !op.starts_with("ld.global.nc")
}

/// In a decode step's graph, each kernel may start before the one before it ends (graph.rs):
/// one that touched memory before `griddepcontrol.wait` (cuda/common.cuh's
/// wait_for_prior_grids) could read what that kernel has not written yet. Checked in the PTX,
/// after inlining, for every kernel of every file.
#[test]
fn every_kernel_waits_for_the_kernel_before_it_before_touching_memory() {
    assert!(
        compile::nvrtc_present(),
        "libnvrtc.so.13 is not on the library path"
    );
    let mut kernels = 0;
    for (name, _) in compile::SOURCES {
        let ptx = compile::compile(name, (9, 0), None).expect("compiles");
        for (kernel, instructions) in kernel_bodies(&String::from_utf8_lossy(&ptx)) {
            kernels += 1;
            let wait = instructions
                .iter()
                .position(|i| i.starts_with("griddepcontrol.wait"))
                .unwrap_or_else(|| panic!("cuda/{name}.cu: {kernel} never waits"));
            if let Some(early) = instructions[..wait].iter().find(|i| touches_memory(i)) {
                panic!("cuda/{name}.cu: {kernel} runs `{early}` before it waits");
            }
        }
    }
    assert!(kernels >= 25, "only {kernels} kernels found");
}

#[test]
fn an_access_before_the_wait_is_caught() {
    let ptx = ".entry k(\n.param .u64 k_param_0\n)\n{\nld.param.u64 %rd1, [k_param_0];\n\
               prefetch.global.L2 [%rd1];\nld.global.nc.f32 %f2, [%rd1];\n\
               @%p1 ld.global.f32 %f1, [%rd1];\n\
               griddepcontrol.wait;\nst.global.f32 [%rd1], %f1;\n}\n";
    let bodies = kernel_bodies(ptx);
    assert_eq!(bodies.len(), 1);
    let (name, instructions) = &bodies[0];
    assert_eq!(name, "k");
    let early: Vec<&String> = instructions
        .iter()
        .take_while(|i| !i.starts_with("griddepcontrol.wait"))
        .filter(|i| touches_memory(i))
        .collect();
    assert_eq!(early, ["@%p1 ld.global.f32 %f1, [%rd1];"]);
}
