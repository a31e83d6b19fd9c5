//! Writes GGUF version 3 files: used by `vibrant synth` and by tests.

use super::{Value, DEFAULT_ALIGNMENT, MAGIC};
use crate::quant::GgmlType;
use std::io::{self, Write};

/// A tensor's bytes, or how to make them when the file is written (so that a multi-gigabyte
/// synthetic model is never held in memory at once).
enum TensorData {
    Ready(Vec<u8>),
    Lazy(Box<dyn FnOnce() -> Vec<u8> + Send>),
}

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    n_bytes: u64,
    data: std::cell::Cell<Option<TensorData>>,
}

/// Collects metadata and tensors, then writes them out in one go.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        let key = key.into();
        self.metadata.retain(|(k, _)| *k != key);
        self.metadata.push((key, value));
        self
    }

    /// Adds a tensor; `dims` in ggml order (row length first), `data` already encoded.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> &mut Self {
        let name = name.into();
        let n_bytes = self.check_size(&name, dims, ggml_type);
        assert_eq!(
            n_bytes,
            data.len() as u64,
            "{name}: data size does not match its shape and type"
        );
        self.push(name, dims, ggml_type, n_bytes, TensorData::Ready(data))
    }

    /// Adds a tensor whose bytes `make` produces while the file is written.
    pub fn add_lazy_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        make: impl FnOnce() -> Vec<u8> + Send + 'static,
    ) -> &mut Self {
        let name = name.into();
        let n_bytes = self.check_size(&name, dims, ggml_type);
        self.push(
            name,
            dims,
            ggml_type,
            n_bytes,
            TensorData::Lazy(Box::new(make)),
        )
    }

    fn check_size(&self, name: &str, dims: &[u64], ggml_type: GgmlType) -> u64 {
        let n: u64 = dims.iter().product();
        ggml_type
            .bytes_for(n)
            .unwrap_or_else(|| panic!("{name}: {n} elements are not whole {ggml_type} blocks"))
    }

    fn push(
        &mut self,
        name: String,
        dims: &[u64],
        ggml_type: GgmlType,
        n_bytes: u64,
        data: TensorData,
    ) -> &mut Self {
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ggml_type,
            n_bytes,
            data: std::cell::Cell::new(Some(data)),
        });
        self
    }

    /// Writes the file; lazy tensors are generated now, so a writer writes once.
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let mut header = Vec::new();
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut header, key);
            header.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut header, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_string(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.n_bytes).next_multiple_of(DEFAULT_ALIGNMENT);
        }
        let padded = (header.len() as u64).next_multiple_of(DEFAULT_ALIGNMENT);
        header.resize(padded as usize, 0);
        out.write_all(&header)?;
        let mut written = 0u64;
        for t in &self.tensors {
            let data = match t.data.take().expect("a writer writes its tensors once") {
                TensorData::Ready(bytes) => bytes,
                TensorData::Lazy(make) => make(),
            };
            assert_eq!(data.len() as u64, t.n_bytes, "{}: generated size", t.name);
            out.write_all(&data)?;
            written += data.len() as u64;
            let padded = written.next_multiple_of(DEFAULT_ALIGNMENT);
            out.write_all(&vec![0u8; (padded - written) as usize])?;
            written = padded;
        }
        Ok(())
    }

    pub fn write_file(&self, path: impl AsRef<std::path::Path>) -> io::Result<()> {
        let mut out = io::BufWriter::new(std::fs::File::create(path)?);
        self.write(&mut out)?;
        out.flush()
    }
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => buf.push(*v),
        Value::I8(v) => buf.push(*v as u8),
        Value::U16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => buf.push(*v as u8),
        Value::String(s) => put_string(buf, s),
        Value::U64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::Array(ty, items) => {
            buf.extend_from_slice(&ty.id().to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                debug_assert_eq!(item.value_type(), *ty, "mixed-type GGUF array");
                // A nested array writes its own element type and length: that is the format.
                put_value(buf, item);
            }
        }
    }
}
