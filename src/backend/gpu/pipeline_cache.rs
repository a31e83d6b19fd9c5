//! Compiled kernels kept on disk between runs: wgpu's pipeline cache (the driver's own
//! binaries, on Vulkan), read when the device opens and written back once kernels were
//! built. A missing, unreadable, stale or corrupt file only costs the compilation it would
//! have saved (with a warning where the file was there but unusable); a directory that
//! cannot be written costs a warning.

use std::path::{Path, PathBuf};

/// Where compiled kernels are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheSetting {
    /// `$XDG_CACHE_HOME/vibrant/`, else `~/.cache/vibrant/`, in a file named after the adapter.
    Default,
    /// This file.
    File(PathBuf),
    Off,
}

impl CacheSetting {
    /// From the value of `VIBRANT_PIPELINE_CACHE`: a file path, or `0` for none.
    pub fn parse(value: Option<std::ffi::OsString>) -> Self {
        match value {
            None => Self::Default,
            Some(v) if v.is_empty() => Self::Default,
            Some(v) if v == "0" => Self::Off,
            Some(v) => Self::File(v.into()),
        }
    }

    /// The cache file for an adapter; `None` when off, or where the adapter's API keeps no
    /// pipeline cache (wgpu names a file only for those that do).
    pub fn path(&self, info: &wgpu::AdapterInfo) -> Option<PathBuf> {
        let key = wgpu::util::pipeline_cache_key(info)?;
        match self {
            Self::Off => None,
            Self::File(path) => Some(path.clone()),
            Self::Default => {
                let home = std::env::var_os("HOME").filter(|h| !h.is_empty());
                let dir = std::env::var_os("XDG_CACHE_HOME")
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| home.map(|h| Path::new(&h).join(".cache")))?;
                Some(dir.join("vibrant").join(key))
            }
        }
    }
}

/// Marks vibrant's cache files (then the format's version).
const MAGIC: &[u8; 8] = b"VBRNTPC1";
/// Magic, build key, length and checksum of the data, then the data.
const HEADER: usize = 32;

/// Identifies the kernels a build compiles: a cache written by another build is dropped
/// rather than grown (the driver's cache keeps every pipeline it was ever given).
fn build_key() -> u64 {
    let mut h = fnv(env!("CARGO_PKG_VERSION").as_bytes(), FNV_OFFSET);
    for (_, text) in super::kernels::SOURCES {
        h = fnv(text.as_bytes(), h);
    }
    fnv(super::kernels::host_declarations().as_bytes(), h)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over 8-byte words (and the tail's bytes): a checksum against files cut short or
/// damaged, fast enough for the few MB a cache holds.
fn fnv(data: &[u8], mut h: u64) -> u64 {
    let words = data.chunks_exact(8);
    let tail = words.remainder();
    for w in words {
        h = (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(0x100_0000_01b3);
    }
    for &b in tail {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The file's contents for `data`.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&build_key().to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv(data, FNV_OFFSET).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Why a cache file is not used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("not a vibrant pipeline cache")]
    NotACache,
    #[error("written by another build of vibrant")]
    OtherBuild,
    #[error("cut short or damaged")]
    Damaged,
}

/// The driver's data in a cache file's contents.
pub fn decode(file: &[u8]) -> Result<&[u8], Unusable> {
    let word = |i: usize| u64::from_le_bytes(file[8 * i..8 * i + 8].try_into().expect("8 bytes"));
    if file.len() < HEADER || &file[..8] != MAGIC {
        return Err(Unusable::NotACache);
    }
    if word(1) != build_key() {
        return Err(Unusable::OtherBuild);
    }
    let data = &file[HEADER..];
    if word(2) != data.len() as u64 || word(3) != fnv(data, FNV_OFFSET) {
        return Err(Unusable::Damaged);
    }
    Ok(data)
}

/// The driver's data kept in `path`, or `None` (with a warning where a file was there but
/// unusable).
pub fn read(path: &Path) -> Option<Vec<u8>> {
    let file = match std::fs::read(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            eprintln!(
                "warning: not reading the kernel cache {}: {e}",
                path.display()
            );
            return None;
        }
    };
    match decode(&file) {
        Ok(data) => Some(data.to_vec()),
        // Another build's cache is expected after an upgrade: replaced without a word.
        Err(Unusable::OtherBuild) => None,
        Err(why) => {
            eprintln!(
                "warning: ignoring the kernel cache {}: {why}",
                path.display()
            );
            None
        }
    }
}

/// Replaces `path` with a cache of `data` atomically (a file beside it, then a rename), so
/// that a run reading it meanwhile sees the old file or the new one, never half of one.
pub fn write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Unique per process and per write: devices of one process may save at the same time.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".{}.{n}.tmp", std::process::id()));
    let temp = PathBuf::from(temp);
    let written = std::fs::write(&temp, encode(data)).and_then(|_| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vulkan(vendor: u32, device: u32) -> wgpu::AdapterInfo {
        wgpu::AdapterInfo {
            vendor,
            device,
            ..wgpu::AdapterInfo::new(wgpu::DeviceType::DiscreteGpu, wgpu::Backend::Vulkan)
        }
    }

    #[test]
    fn files_are_named_per_adapter_and_only_where_the_api_keeps_a_cache() {
        let info = vulkan(0x10de, 0x2335);
        let file = CacheSetting::File("/tmp/x".into());
        assert_eq!(file.path(&info), Some(PathBuf::from("/tmp/x")));
        assert_eq!(CacheSetting::Off.path(&info), None);
        let default = CacheSetting::Default.path(&info).expect("a default path");
        assert!(default.ends_with("vibrant/wgpu_pipeline_cache_vulkan_4318_9013"));
        let gl = wgpu::AdapterInfo {
            backend: wgpu::Backend::Gl,
            ..info
        };
        assert_eq!(file.path(&gl), None);
        assert_eq!(CacheSetting::Default.path(&gl), None);
    }

    #[test]
    fn damaged_truncated_or_foreign_files_are_refused() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let file = encode(&data);
        assert_eq!(decode(&file), Ok(&data[..]));
        assert_eq!(decode(&file[..file.len() - 1]), Err(Unusable::Damaged));
        assert_eq!(decode(&file[..HEADER - 1]), Err(Unusable::NotACache));
        assert_eq!(
            decode(b"garbage garbage garbage garbage garbage"),
            Err(Unusable::NotACache)
        );
        let mut flipped = file.clone();
        flipped[HEADER + 500] ^= 1;
        assert_eq!(decode(&flipped), Err(Unusable::Damaged));
        let mut other = file.clone();
        other[8] ^= 1;
        assert_eq!(decode(&other), Err(Unusable::OtherBuild));
        assert_eq!(decode(&encode(&[])), Ok(&[][..]));
    }

    #[test]
    fn writes_replace_the_file_whole_and_unwritable_places_are_errors() {
        let dir = std::env::temp_dir().join(format!("vibrant-cache-test-{}", std::process::id()));
        let path = dir.join("sub").join("cache");
        write(&path, b"first").expect("write");
        write(&path, b"second").expect("rewrite");
        assert_eq!(read(&path), Some(b"second".to_vec()));
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        std::fs::write(&path, b"garbage").unwrap();
        assert_eq!(read(&path), None);
        // A directory where the file should be: reading and writing fail, neither panics.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join("inner")).unwrap();
        assert_eq!(read(&blocked), None);
        assert!(write(&blocked, b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
