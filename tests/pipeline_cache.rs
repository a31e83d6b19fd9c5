//! Compiled kernels kept on disk (wgpu's pipeline cache): written after a first load, read
//! back by the next, and a damaged, truncated or unwritable file never fails a run. On an
//! adapter whose API keeps no pipeline cache (OpenGL), nothing is written and kernels build
//! as before.

// Only some helpers of common are used here.
#[allow(dead_code)]
mod common;

use common::*;
use std::path::{Path, PathBuf};
use vibrant::backend::gpu::pipeline_cache::{self, CacheSetting};
use vibrant::backend::gpu::{Gpu, GpuOptions, WgpuBackend};
use vibrant::quant::GgmlType;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vibrant-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Opens a device caching kernels as `setting` says, builds a few kernels by uploading and
/// decoding a matrix (checking the result), and returns the bytes read from the cache at open
/// and whether the device keeps a cache at all. The device is closed (and the cache saved)
/// on return.
fn load_once(setting: CacheSetting) -> (usize, bool) {
    let mut gpu = WgpuBackend::new(GpuOptions {
        pipeline_cache: setting,
        ..gpu_options()
    })
    .expect("a GPU adapter");
    let w = Weights::random(&mut rng(7), GgmlType::Q6K, 9, 256);
    let m = w.upload(&mut gpu, "w");
    let got = gpu.dequantize(&m).expect("dequantize");
    assert_eq!(got.len(), w.decoded().len());
    assert!(got
        .iter()
        .zip(w.decoded())
        .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0)));
    let cache = gpu.gpu().pipeline_cache.as_ref();
    (cache.map_or(0, |c| c.loaded), cache.is_some())
}

fn keeps_a_cache() -> bool {
    let gpu = Gpu::open(GpuOptions {
        pipeline_cache: CacheSetting::Off,
        ..gpu_options()
    })
    .expect("a GPU adapter");
    gpu.features.pipeline_cache && wgpu::util::pipeline_cache_key(&gpu.info).is_some()
}

fn driver_data(path: &Path) -> Vec<u8> {
    let file = std::fs::read(path).expect("the cache file");
    pipeline_cache::decode(&file)
        .expect("a valid cache")
        .to_vec()
}

/// One test, in order: the steps share a file.
#[test]
fn kernels_are_cached_on_disk_and_bad_files_are_rebuilt() {
    let dir = temp_dir("pipeline-cache");
    let path = dir.join("kernels");
    let setting = CacheSetting::File(path.clone());
    if !keeps_a_cache() {
        let (loaded, kept) = load_once(setting);
        assert_eq!((loaded, kept), (0, false));
        assert!(!path.exists(), "no cache file where the API keeps none");
        return;
    }

    // First load: no file, an empty cache, a file written when kernels were built.
    assert_eq!(load_once(setting.clone()), (0, true));
    let first = driver_data(&path);
    assert!(!first.is_empty());

    // Second load: the driver gets the file's data back.
    assert_eq!(load_once(setting.clone()), (first.len(), true));
    assert!(driver_data(&path).len() >= first.len());

    // Garbage, a file cut short and a flipped byte: ignored (with a warning), the run goes on,
    // and a valid cache replaces the file.
    let valid = std::fs::read(&path).unwrap();
    let mut flipped = valid.clone();
    *flipped.last_mut().unwrap() ^= 0x55;
    for bad in [
        b"not a cache at all".to_vec(),
        valid[..valid.len() / 2].to_vec(),
        flipped,
    ] {
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(load_once(setting.clone()), (0, true));
        assert!(!driver_data(&path).is_empty(), "the bad file is replaced");
    }

    // A cache file that cannot be written (a directory stands there): the run goes on.
    let blocked = dir.join("blocked");
    std::fs::create_dir_all(blocked.join("inside")).unwrap();
    assert_eq!(load_once(CacheSetting::File(blocked.clone())), (0, true));
    assert!(blocked.is_dir());

    // Off: no cache, nothing written.
    let off = dir.join("off");
    assert_eq!(load_once(CacheSetting::Off), (0, false));
    assert!(!off.exists());

    std::fs::remove_dir_all(&dir).unwrap();
}
