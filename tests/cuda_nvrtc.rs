//! Every CUDA kernel file compiles with NVRTC for the H100/H200's architecture (sm_90). NVRTC
//! needs no GPU nor driver, so this runs on any machine with libnvrtc on the library path
//! (the `nvidia-cuda-nvrtc` wheel's lib folder will do); without it the test fails.
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
