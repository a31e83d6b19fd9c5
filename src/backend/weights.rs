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

/// The experts a matrix for `usage` holds (1 unless it is [`MatrixUse::Experts`]), refusing
/// experts whose count does not divide the matrix's `rows`, or with biases.
pub(crate) fn expert_count(
    name: &str,
    rows: usize,
    usage: MatrixUse,
    has_bias: bool,
) -> Result<usize> {
    match usage {
        MatrixUse::Experts(n) if n == 0 || !rows.is_multiple_of(n) || has_bias => {
            Err(BackendError::Unsupported(format!(
                "{name}: {rows} rows{} are not {n} experts' blocks of rows",
                if has_bias { " with biases" } else { "" }
            )))
        }
        MatrixUse::Experts(n) => Ok(n),
        _ => Ok(1),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expert_counts_must_divide_the_rows_and_come_without_biases() {
        assert_eq!(
            expert_count("w", 12, MatrixUse::Experts(4), false).unwrap(),
            4
        );
        assert_eq!(expert_count("w", 7, MatrixUse::Plain, true).unwrap(), 1);
        for (rows, n, bias) in [(12, 5, false), (12, 0, false), (12, 4, true)] {
            let e = expert_count("blk.0.ffn_up_exps", rows, MatrixUse::Experts(n), bias);
            let message = e.unwrap_err().to_string();
            assert!(
                message.starts_with("blk.0.ffn_up_exps: 12 rows") && message.contains("experts'"),
                "{message}"
            );
        }
    }
}
