//! Weights as a backend receives them: the encoded bytes of a file's tensors, rows of one or
//! more tensors gathered into one matrix, and what the matrix's products feed.

use super::{AttentionShape, BackendError, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::quant::GgmlType;
use std::sync::Arc;

/// The encoded bytes of one weight tensor: still inside its (memory-mapped) file, so that a
/// backend that computes from host memory keeps them without copying, or owned (tests,
/// generated weights).
#[derive(Clone)]
pub struct WeightBytes(WeightSource);

#[derive(Clone)]
enum WeightSource {
    File {
        file: Arc<GgufFile>,
        start: usize,
        len: usize,
    },
    Owned(Arc<[u8]>),
}

impl WeightBytes {
    pub fn new(file: &Arc<GgufFile>, info: &TensorInfo) -> Self {
        Self(WeightSource::File {
            file: Arc::clone(file),
            start: (file.data_offset + info.offset) as usize,
            len: info.n_bytes as usize,
        })
    }

    pub fn owned(bytes: Vec<u8>) -> Self {
        Self(WeightSource::Owned(bytes.into()))
    }

    /// `len` bytes from `start` of these (one expert's rows of a 3-D tensor).
    pub fn slice(&self, start: usize, len: usize) -> Self {
        assert!(
            start + len <= self.bytes().len(),
            "a slice within the bytes"
        );
        Self(match &self.0 {
            WeightSource::File { file, start: s, .. } => WeightSource::File {
                file: Arc::clone(file),
                start: s + start,
                len,
            },
            WeightSource::Owned(bytes) => WeightSource::Owned(bytes[start..start + len].into()),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.0 {
            WeightSource::File { file, start, len } => &file.bytes()[*start..start + len],
            WeightSource::Owned(bytes) => bytes,
        }
    }
}

/// Rows of a weight matrix as a file stores them (one tensor, or all of a fused one), with
/// their bias where they have one. A matrix is one or more of these, its rows in order.
pub struct WeightRows {
    pub ggml_type: GgmlType,
    pub rows: usize,
    pub data: WeightBytes,
    pub bias: Option<Vec<f32>>,
}

impl WeightRows {
    /// Rows without a bias.
    pub fn new(ggml_type: GgmlType, rows: usize, data: WeightBytes) -> Self {
        Self {
            ggml_type,
            rows,
            data,
            bias: None,
        }
    }

    pub fn with_bias(self, bias: Option<Vec<f32>>) -> Self {
        Self { bias, ..self }
    }
}

/// Checks that each part of the matrix `name` holds whole rows of `cols` values of its type,
/// and a bias (where it has one) of a value per row. Returns each part's row size in bytes,
/// and every row's bias (0 where its part has none) where some part has one.
pub(crate) fn check_parts(
    name: &str,
    cols: usize,
    parts: &[WeightRows],
) -> Result<(Vec<usize>, Option<Vec<f32>>)> {
    let invalid = |what: String| BackendError::Unsupported(format!("{name}: {what}"));
    let mut row_bytes = Vec::with_capacity(parts.len());
    let mut bias = Vec::new();
    for part in parts {
        let bytes = part
            .ggml_type
            .row_bytes(cols)
            .map_err(|e| invalid(format!("rows of {cols} values: {e}")))?;
        if part.data.bytes().len() != bytes * part.rows {
            return Err(invalid(format!(
                "{} bytes are not {} rows of {bytes}",
                part.data.bytes().len(),
                part.rows
            )));
        }
        match &part.bias {
            Some(b) if b.len() == part.rows => bias.extend_from_slice(b),
            Some(b) => {
                return Err(invalid(format!(
                    "a bias of {} values for {} rows",
                    b.len(),
                    part.rows
                )))
            }
            None => bias.resize(bias.len() + part.rows, 0.0),
        }
        row_bytes.push(bytes);
    }
    let has_bias = parts.iter().any(|p| p.bias.is_some());
    Ok((row_bytes, has_bias.then_some(bias)))
}

/// What a matrix's products feed. A backend may keep the rows of a `GateUp` or `Qkv` matrix
/// in an order of its own for a fused kernel; such a matrix then goes only to the op that
/// takes it ([`super::Backend::norm_glu`], [`super::Backend::attention_inputs`]), which that
/// backend overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatrixUse {
    /// Products in row order, for any op.
    Plain,
    /// A gated linear unit's input: gate rows, then as many up rows.
    GateUp,
    /// Attention's inputs: query rows, then key rows, then value rows, of heads `shape`.
    Qkv(AttentionShape),
    /// This many experts' matrices, one block of equal rows each, in expert order, for
    /// [`super::Backend::matmul_id`] only.
    Experts(usize),
}
