//! The kernels' CUDA C (one file per op family in the top-level `cuda/` folder, each with
//! `cuda/common.cuh` prepended, and `cuda/kv.cuh` for the cache's, `cuda/decode.cuh` for the
//! products), compiled at run time by NVRTC to PTX for the device's
//! architecture, and kept on disk under the user's cache directory, keyed by a hash of the
//! source, the options, the architecture and the driver: the driver JIT-compiles PTX at load.

use super::KERNEL_CONSTANTS;
use crate::backend::{BackendError, Result};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

const COMMON: &str = include_str!("../../../cuda/common.cuh");
/// The KV cache's encodings, for the files that write or read the cache.
const KV: &str = include_str!("../../../cuda/kv.cuh");
/// The weight blocks' decoding 32 at a time, for the products.
const DECODE: &str = include_str!("../../../cuda/decode.cuh");

/// Every kernel file: its name and its source (without the headers of [`full_source`]).
pub const SOURCES: [(&str, &str); 9] = [
    ("matmul", include_str!("../../../cuda/matmul.cu")),
    ("matmul_q8", include_str!("../../../cuda/matmul_q8.cu")),
    ("norm", include_str!("../../../cuda/norm.cu")),
    ("elementwise", include_str!("../../../cuda/elementwise.cu")),
    ("rope", include_str!("../../../cuda/rope.cu")),
    ("attention", include_str!("../../../cuda/attention.cu")),
    ("moe", include_str!("../../../cuda/moe.cu")),
    ("tokens", include_str!("../../../cuda/tokens.cu")),
    ("hang", include_str!("../../../cuda/hang.cu")),
];

/// Whether libnvrtc loads (cudarc panics on the first call into a library it cannot find).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { nvrtc_sys::is_culib_present() }
}

/// A file's full source as NVRTC compiles it.
pub fn full_source(name: &str) -> Option<String> {
    let (_, body) = SOURCES.iter().find(|(n, _)| *n == name)?;
    let header = match name {
        "rope" | "attention" => KV,
        "matmul" => DECODE,
        _ => "",
    };
    Some(format!("{COMMON}\n{header}\n{body}"))
}

/// The NVRTC options of every file: PTX for the virtual architecture of compute capability
/// `major.minor`, which the driver compiles for the device itself. No fused multiply-adds: the
/// kernels then round as the CPU reference does (RoPE's rotations bit for bit, so that a key
/// never rounds to another f16 or q8_0 step in the cache than on the CPU); the kernels are
/// bound by memory, not by arithmetic.
fn options(cc: (i32, i32)) -> Vec<String> {
    let constants = KERNEL_CONSTANTS
        .iter()
        .map(|(name, v)| format!("-D{name}={v}"));
    [
        format!("--gpu-architecture=compute_{}{}", cc.0, cc.1),
        "--std=c++17".into(),
        "--fmad=false".into(),
    ]
    .into_iter()
    .chain(constants)
    .collect()
}

/// The PTX of kernel file `name` for compute capability `cc`, NUL-terminated (as the driver
/// loads it), or NVRTC's log of what failed. The on-disk cache is skipped where `cache_key`
/// (the driver's version, which the PTX must suit) is `None`.
pub fn compile(name: &str, cc: (i32, i32), cache_key: Option<i32>) -> Result<Arc<Vec<u8>>> {
    type Compiled = HashMap<(String, (i32, i32)), Arc<Vec<u8>>>;
    static MEMORY: OnceLock<Mutex<Compiled>> = OnceLock::new();
    let memory = MEMORY.get_or_init(Default::default);
    let key = (name.to_string(), cc);
    if let Some(ptx) = memory.lock().expect("kernel cache lock").get(&key) {
        return Ok(ptx.clone());
    }
    if !nvrtc_present() {
        return Err(BackendError::Unsupported(
            "NVRTC (libnvrtc.so.13) is not on the library path: CUDA kernels cannot be compiled"
                .into(),
        ));
    }
    let source = full_source(name)
        .ok_or_else(|| BackendError::Unsupported(format!("no CUDA kernel file '{name}'")))?;
    let options = options(cc);
    let file = cache_key.and_then(|driver| cache_file(name, &source, &options, driver));
    let cached = file
        .as_ref()
        .and_then(|f| std::fs::read(f).ok())
        .filter(|ptx| ptx.last() == Some(&0));
    let ptx = match cached {
        Some(ptx) => ptx,
        None => {
            let ptx = nvrtc_compile(name, &source, &options)?;
            if let Some(f) = &file {
                // A cache that cannot be written costs the next run a compilation, no more.
                let _ = std::fs::create_dir_all(f.parent().expect("a file in a folder"))
                    .and_then(|()| std::fs::write(f, &ptx));
            }
            ptx
        }
    };
    let ptx = Arc::new(ptx);
    memory
        .lock()
        .expect("kernel cache lock")
        .insert(key, ptx.clone());
    Ok(ptx)
}

/// `$XDG_CACHE_HOME/vibrant/cuda/`, else `~/.cache/vibrant/cuda/`, a file per source, options
/// and driver; `None` where there is no home.
fn cache_file(name: &str, source: &str, options: &[String], driver: i32) -> Option<PathBuf> {
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    let mut h = FNV_OFFSET;
    for part in [
        source,
        &options.join(" "),
        &driver.to_string(),
        nvrtc_version(),
    ] {
        h = fnv(part.as_bytes(), h);
    }
    Some(
        dir.join("vibrant")
            .join("cuda")
            .join(format!("{name}-{h:016x}.ptx")),
    )
}

/// NVRTC's version, part of the cache key (another NVRTC may write other PTX).
fn nvrtc_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: writes two ints; the library is present (checked before any backend opens).
        unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
        format!("nvrtc {major}.{minor}")
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(data: &[u8], mut h: u64) -> u64 {
    for &b in data {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// NVRTC's PTX of one source (NUL-terminated), or its log.
fn nvrtc_compile(name: &str, source: &str, options: &[String]) -> Result<Vec<u8>> {
    let failed = |what: &str, detail: String| {
        BackendError::Unsupported(format!(
            "NVRTC {what} cuda/{name}.cu ({}): {detail}",
            options.join(" ")
        ))
    };
    let src = CString::new(source).expect("kernel sources hold no NUL");
    let file = CString::new(format!("{name}.cu")).expect("no NUL");
    let prog = nvrtc::create_program(&src, Some(&file))
        .map_err(|e| failed("could not take", format!("{e:?}")))?;
    // SAFETY: a program just created, destroyed once below whatever happens.
    let outcome = unsafe {
        match nvrtc::compile_program(prog, options) {
            Ok(()) => nvrtc::get_ptx(prog).map_err(|e| failed("gave no PTX for", format!("{e:?}"))),
            Err(e) => {
                let log = nvrtc::get_program_log(prog)
                    .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
                    .unwrap_or_default();
                Err(failed("failed to compile", format!("{e:?}\n{log}")))
            }
        }
    };
    // SAFETY: created above, destroyed once.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    // NVRTC's PTX ends with its NUL, which the driver's loader needs.
    Ok(outcome?.into_iter().map(|c| c as u8).collect())
}
