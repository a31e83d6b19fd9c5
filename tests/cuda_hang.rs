//! A kernel that never ends is reported, not waited for: the wait ends in a timeout error
//! within seconds of `--gpu-timeout`, and the process can still exit. The planted hang runs in
//! a child process (this test binary again, running only the ignored `planted_hang` test), so
//! that the parent can time it and kill it if it does not end. Needs a CUDA device.
#![cfg(feature = "cuda")]

// The wgpu helpers there are not used here.
#[allow(dead_code)]
mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vibrant::backend::cuda::CudaOptions;
use vibrant::backend::{Backend, BackendError};

/// The child's wait timeout.
const TIMEOUT: Duration = Duration::from_secs(2);
/// What the child prints once its wait has failed as it should.
const REPORTED: &str = "planted hang reported:";

/// Run by the test below in a child process: plants the hang and waits on it.
#[test]
#[ignore = "run as a child process by a_kernel_that_never_ends_is_a_timeout_within_seconds"]
fn planted_hang() {
    let mut b = common::cuda::cuda_with(CudaOptions {
        timeout: TIMEOUT,
        ..CudaOptions::default()
    });
    b.plant_hang().expect("launching the never-ending kernel");
    let started = Instant::now();
    let e = b
        .sync()
        .expect_err("a kernel that never ends cannot finish");
    assert!(matches!(e, BackendError::Timeout { .. }), "{e:?}");
    // The error names the kernel that was running.
    assert!(e.to_string().contains("hang"), "{e}");
    assert!(started.elapsed() < TIMEOUT + Duration::from_secs(3));
    // Every wait after it fails at once with a timeout too.
    let again = b.sync().expect_err("still hung");
    assert!(matches!(again, BackendError::Timeout { .. }), "{again:?}");
    println!("{REPORTED} {e}");
    drop(b);
}

#[test]
fn a_kernel_that_never_ends_is_a_timeout_within_seconds() {
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--ignored",
            "--exact",
            "planted_hang",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the child test");
    // Loading the kernels (NVRTC, or the disk cache) takes a few seconds at most; the wait
    // then ends after TIMEOUT.
    let limit = Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child's status") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    let mut err = String::new();
    let _ = child.stdout.take().expect("piped").read_to_string(&mut out);
    let _ = child.stderr.take().expect("piped").read_to_string(&mut err);
    let reported = out.contains(REPORTED);
    match status {
        None if reported => panic!(
            "the timeout was reported, but the process did not exit within {limit:?} \
             (the driver waits for the kernel at exit?):\n{out}\n{err}"
        ),
        None => panic!("the child neither reported the hang nor ended in {limit:?}:\n{out}\n{err}"),
        Some(s) => assert!(
            s.success() && reported,
            "the child failed ({s}):\n{out}\n{err}"
        ),
    }
    eprintln!(
        "planted hang: reported and exited in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
