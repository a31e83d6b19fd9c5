//! GGUF: the file format of ggml models (versions 2 and 3), read zero-copy from a memory map.
//!
//! Layout: magic `GGUF`, version u32, tensor count u64, metadata count u64, the metadata
//! key/value pairs, the tensor infos, padding to `general.alignment`, then the tensor data.
//! Every count, length and offset is checked against the file's length before it is used,
//! so a corrupt file is an error, never a panic or an allocation sized by the file.

mod value;
mod writer;

pub use value::{Value, ValueType};
pub use writer::GgufWriter;

use crate::quant::GgmlType;
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: u32 = 4;
/// Nested arrays deeper than this are refused (real files nest at most once).
const MAX_ARRAY_DEPTH: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open model file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (magic bytes {found:02x?}, expected \"GGUF\")")]
    BadMagic { path: PathBuf, found: Vec<u8> },
    #[error("{path}: unsupported GGUF version {version} (vibrant reads versions 2 and 3)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: corrupt GGUF file: {what} (at byte {offset})")]
    Corrupt {
        path: PathBuf,
        what: String,
        offset: u64,
    },
    #[error("{path}: tensor '{tensor}': {what}")]
    BadTensor {
        path: PathBuf,
        tensor: String,
        what: String,
    },
    #[error("{path}: metadata key '{key}' {what}")]
    Metadata {
        path: PathBuf,
        key: String,
        what: String,
    },
}

pub type Result<T> = std::result::Result<T, GgufError>;

/// Where a tensor lives in the file and what it holds.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension, the row length.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the tensor data section.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Elements per row (the contiguous dimension).
    pub fn row_len(&self) -> usize {
        self.dims[0] as usize
    }

    /// Rows = product of all dimensions but the first.
    pub fn n_rows(&self) -> usize {
        self.dims[1..].iter().product::<u64>() as usize
    }
}

/// An open GGUF file: its metadata and tensor table, with the data memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    map: Storage,
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    pub alignment: u64,
    pub data_offset: u64,
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only; vibrant does not modify model files while they are
        // open, and a file truncated underneath us by another process is outside what we guard.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, Storage::Mapped(map))
    }

    /// Parses a GGUF image held in memory; `name` stands for the file in messages.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(name.into(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, map: Storage) -> Result<Self> {
        let mut r = Reader {
            bytes: &map[..],
            pos: 0,
            path: &path,
        };
        let magic = r.take(4).map_err(|_| GgufError::BadMagic {
            path: path.clone(),
            found: map.to_vec(),
        })?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                path: path.clone(),
                found: magic.to_vec(),
            });
        }
        let version = r.u32()?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion {
                path: path.clone(),
                version,
            });
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        // Each key/value needs at least 8 (key length) + 4 (type) bytes, each tensor info 8+4+4+8.
        r.check_count(n_kv, 12, "metadata count")?;
        r.check_count(n_tensors, 24, "tensor count")?;

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut index = HashMap::with_capacity(n_kv as usize);
        for _ in 0..n_kv {
            let at = r.pos;
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty, 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(r.corrupt_at(format!("duplicate metadata key '{key}'"), at));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(GgufError::Metadata {
                        path: path.clone(),
                        key: "general.alignment".into(),
                        what: format!("must be a power of two up to 1 MiB, found {v}"),
                    })
                }
            },
        };

        let mut infos = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            infos.push(r.tensor_info()?);
        }
        let data_offset = r.pos.next_multiple_of(alignment);
        let file_len = map.len() as u64;
        // A file without tensors (a vocab-only GGUF) may end right after its metadata,
        // without the padding that would start the (empty) data section.
        if data_offset > file_len && !infos.is_empty() {
            return Err(r.corrupt_at("file ends before the tensor data section".into(), r.pos));
        }
        let data_len = file_len.saturating_sub(data_offset);

        let mut tensors = Vec::with_capacity(infos.len());
        let mut tensor_index = HashMap::with_capacity(infos.len());
        for (name, dims, type_id, offset) in infos {
            let bad = |what: String| GgufError::BadTensor {
                path: path.clone(),
                tensor: name.clone(),
                what,
            };
            let ggml_type = GgmlType::from_id(type_id).map_err(|known| match known {
                Some(n) => bad(format!(
                    "type {n} (ggml id {type_id}) is not supported by vibrant"
                )),
                None => bad(format!("unknown tensor type id {type_id}")),
            })?;
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
            if dims.contains(&0) {
                return Err(bad(format!("has an empty dimension: {dims:?}")));
            }
            if dims[0] % ggml_type.block_size() as u64 != 0 {
                return Err(bad(format!(
                    "row length {} is not a multiple of the {} block size {}",
                    dims[0],
                    ggml_type,
                    ggml_type.block_size()
                )));
            }
            let n_bytes = ggml_type
                .bytes_for(n_elements)
                .ok_or_else(|| bad(format!("size of {dims:?} elements overflows")))?;
            if offset % alignment != 0 {
                return Err(bad(format!(
                    "data offset {offset} is not aligned to {alignment}"
                )));
            }
            match offset.checked_add(n_bytes) {
                Some(end) if end <= data_len => {}
                _ => {
                    return Err(bad(format!(
                        "data [{offset}, +{n_bytes}) lies past the end of the file ({data_len} data bytes)"
                    )))
                }
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(bad("appears twice".into()));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                n_bytes,
            });
        }

        Ok(Self {
            path,
            map,
            version,
            metadata,
            index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor, straight from the map (bounds were checked at open).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.map[start..start + info.n_bytes as usize]
    }

    fn metadata_error(&self, key: &str, what: impl Into<String>) -> GgufError {
        GgufError::Metadata {
            path: self.path.clone(),
            key: key.into(),
            what: what.into(),
        }
    }

    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| self.metadata_error(key, "is missing"))
    }

    pub fn u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| {
            self.metadata_error(key, format!("should be an unsigned integer, found {v}"))
        })
    }

    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64> {
        match self.get(key) {
            None => Ok(default),
            Some(_) => self.u64(key),
        }
    }

    pub fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f32()
                .ok_or_else(|| self.metadata_error(key, format!("should be a number, found {v}"))),
        }
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str()
            .ok_or_else(|| self.metadata_error(key, format!("should be a string, found {v}")))
    }

    pub fn str_opt(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn array(&self, key: &str) -> Result<&[Value]> {
        let v = self.require(key)?;
        v.as_array()
            .ok_or_else(|| self.metadata_error(key, format!("should be an array, found {v}")))
    }
}

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

/// A bounds-checked little-endian cursor over the file.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: u64,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn corrupt_at(&self, what: String, offset: u64) -> GgufError {
        GgufError::Corrupt {
            path: self.path.to_path_buf(),
            what,
            offset,
        }
    }

    fn remaining(&self) -> u64 {
        self.bytes.len() as u64 - self.pos
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.corrupt_at(
                format!(
                    "file ends early: {n} bytes needed, {} left",
                    self.remaining()
                ),
                self.pos,
            ));
        }
        let start = self.pos as usize;
        self.pos += n;
        Ok(&self.bytes[start..start + n as usize])
    }

    /// Refuses a count whose minimal encoding would not fit in the rest of the file.
    fn check_count(&self, count: u64, min_bytes_each: u64, what: &str) -> Result<()> {
        if count.saturating_mul(min_bytes_each) > self.remaining() {
            return Err(self.corrupt_at(
                format!(
                    "{what} {count} cannot fit in the {} bytes left",
                    self.remaining()
                ),
                self.pos,
            ));
        }
        Ok(())
    }

    fn array_bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self
            .take(N as u64)?
            .try_into()
            .expect("take returned N bytes"))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array_bytes::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array_bytes()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array_bytes()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array_bytes()?))
    }

    fn string(&mut self) -> Result<String> {
        let at = self.pos;
        let len = self.u64()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.corrupt_at("string is not valid UTF-8".into(), at))
    }

    fn value(&mut self, type_id: u32, depth: u32) -> Result<Value> {
        let at = self.pos;
        let ty = ValueType::from_id(type_id)
            .ok_or_else(|| self.corrupt_at(format!("unknown metadata value type {type_id}"), at))?;
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8()?),
            ValueType::I8 => Value::I8(self.u8()? as i8),
            ValueType::U16 => Value::U16(self.u16()?),
            ValueType::I16 => Value::I16(self.u16()? as i16),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(self.u32()? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32()?)),
            ValueType::Bool => match self.u8()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(self.corrupt_at(format!("boolean byte {b} is neither 0 nor 1"), at))
                }
            },
            ValueType::String => Value::String(self.string()?),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(self.u64()? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64()?)),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.corrupt_at("arrays nested too deeply".into(), at));
                }
                let elem_type = self.u32()?;
                let elem = ValueType::from_id(elem_type).ok_or_else(|| {
                    self.corrupt_at(format!("unknown array element type {elem_type}"), at)
                })?;
                let len = self.u64()?;
                self.check_count(len, elem.min_encoded_size(), "array length")?;
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(elem_type, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }

    fn tensor_info(&mut self) -> Result<(String, Vec<u64>, u32, u64)> {
        let name = self.string()?;
        let at = self.pos;
        let n_dims = self.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.corrupt_at(
                format!("tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"),
                at,
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64()?);
        }
        let type_id = self.u32()?;
        let offset = self.u64()?;
        Ok((name, dims, type_id, offset))
    }
}

#[cfg(test)]
mod tests;
