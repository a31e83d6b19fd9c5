//! llama.cpp's `--kl-divergence-base` file: the log-probabilities of every scored token of a
//! perplexity run, 16 bits a value, so that another engine (or another build) can be compared
//! with them later.
//!
//! Layout (little-endian): `_logits_`, n_ctx (u32), n_vocab (i32), n_chunk (i32), the
//! `n_chunk * n_ctx` tokens (i32); then for each chunk, for each of its
//! `n_ctx - 1 - n_ctx / 2` scored positions, a row of `2 * ((n_vocab + 1) / 2) + 4` u16: the
//! row's scale and smallest log-probability as two f32, then one u16 a token, padded to an
//! even count.

use super::{first_scored, PerplexityError, Result};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"_logits_";
/// Log-probabilities more than this far below the row's largest are stored as the floor.
const RANGE: f32 = 16.0;

/// u16 values of one stored row.
pub fn row_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// Rows stored per chunk: its scored positions.
pub fn rows_per_chunk(n_ctx: usize) -> usize {
    n_ctx - 1 - first_scored(n_ctx)
}

/// One row of logits encoded as llama.cpp encodes it; returns the negative log-likelihood of
/// `token`.
pub fn encode_row(logits: &[f32], token: u32, row: &mut [u16]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = logits.iter().copied().fold(f32::INFINITY, f32::min);
    let min = min.max(max - RANGE);
    let sum_exp: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = min - max - log_sum_exp;
    let scale = (max - min) / 65535.0;
    row[..2].copy_from_slice(&halves(scale));
    row[2..4].copy_from_slice(&halves(min_log_prob));
    let values = &mut row[4..];
    values.fill(0);
    if scale != 0.0 {
        let inv_scale = 1.0 / scale;
        for (v, &l) in values.iter_mut().zip(logits) {
            if l > min {
                *v = (inv_scale * (l - min)).round_ties_even() as u16;
            }
        }
    }
    (max + log_sum_exp - logits[token as usize]) as f64
}

/// A stored row's log-probabilities: `scale * value + min_log_prob` for each token.
pub struct StoredRow<'a> {
    scale: f32,
    min_log_prob: f32,
    values: &'a [u16],
}

impl<'a> StoredRow<'a> {
    pub fn new(row: &'a [u16], n_vocab: usize) -> Self {
        Self {
            scale: whole(&row[..2]),
            min_log_prob: whole(&row[2..4]),
            values: &row[4..4 + n_vocab],
        }
    }

    pub fn log_prob(&self, token: usize) -> f32 {
        self.scale * self.values[token] as f32 + self.min_log_prob
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// An f32 as the two u16 it occupies in a row.
fn halves(x: f32) -> [u16; 2] {
    let b = x.to_le_bytes();
    [
        u16::from_le_bytes([b[0], b[1]]),
        u16::from_le_bytes([b[2], b[3]]),
    ]
}

fn whole(h: &[u16]) -> f32 {
    let (a, b) = (h[0].to_le_bytes(), h[1].to_le_bytes());
    f32::from_le_bytes([a[0], a[1], b[0], b[1]])
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> PerplexityError {
    PerplexityError::File {
        path: path.display().to_string(),
        what: e.to_string(),
    }
}

/// Writes a base file chunk by chunk, as the perplexity run scores them.
pub struct LogProbWriter {
    path: PathBuf,
    out: BufWriter<File>,
    n_vocab: usize,
    row: Vec<u16>,
}

impl LogProbWriter {
    /// Starts the file with its header and the first `n_chunk * n_ctx` of `tokens`.
    pub fn create(
        path: &Path,
        n_ctx: usize,
        n_vocab: usize,
        n_chunk: usize,
        tokens: &[u32],
    ) -> Result<Self> {
        let file = File::create(path).map_err(|e| io_error(path, e))?;
        let mut out = BufWriter::new(file);
        let mut header = MAGIC.to_vec();
        header.extend((n_ctx as u32).to_le_bytes());
        header.extend((n_vocab as i32).to_le_bytes());
        header.extend((n_chunk as i32).to_le_bytes());
        for &t in &tokens[..n_chunk * n_ctx] {
            header.extend((t as i32).to_le_bytes());
        }
        out.write_all(&header).map_err(|e| io_error(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            out,
            n_vocab,
            row: vec![0; row_len(n_vocab)],
        })
    }

    /// Stores one scored position's logits; returns the nll of the token that followed.
    pub fn write_row(&mut self, logits: &[f32], token: u32) -> Result<f64> {
        let nll = encode_row(&logits[..self.n_vocab], token, &mut self.row);
        let bytes: Vec<u8> = self.row.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.out
            .write_all(&bytes)
            .map_err(|e| io_error(&self.path, e))?;
        Ok(nll)
    }

    pub fn finish(mut self) -> Result<()> {
        self.out.flush().map_err(|e| io_error(&self.path, e))
    }
}

/// Reads a base file: its header and tokens at once, then one chunk of rows at a time.
pub struct LogProbReader {
    path: PathBuf,
    input: BufReader<File>,
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunk: usize,
    pub tokens: Vec<u32>,
}

impl LogProbReader {
    /// Opens a base file, checking its header and that its length matches it exactly.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |what: String| io_error(path, what);
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let len = file.metadata().map_err(|e| io_error(path, e))?.len();
        let mut input = BufReader::new(file);
        let mut header = [0u8; 20];
        input
            .read_exact(&mut header)
            .map_err(|_| bad("too short for a log-probability file".into()))?;
        if &header[..8] != MAGIC {
            return Err(bad(
                "is not a log-probability file (no _logits_ header): make one with --kl-divergence-base".into(),
            ));
        }
        let field = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
        let (n_ctx, n_vocab, n_chunk) = (field(8) as usize, field(12), field(16));
        if n_ctx < 4 || n_vocab == 0 || n_vocab > i32::MAX as u32 || n_chunk > i32::MAX as u32 {
            return Err(bad(format!(
                "has an impossible header (n_ctx {n_ctx}, n_vocab {n_vocab}, {n_chunk} chunks)"
            )));
        }
        let (n_vocab, n_chunk) = (n_vocab as usize, n_chunk as usize);
        let expected = 20
            + 4 * (n_chunk * n_ctx) as u64
            + 2 * (n_chunk * rows_per_chunk(n_ctx) * row_len(n_vocab)) as u64;
        if len != expected {
            return Err(bad(format!(
                "is {len} bytes, but its header (n_ctx {n_ctx}, n_vocab {n_vocab}, {n_chunk} chunks) needs {expected}: the file is cut or damaged"
            )));
        }
        let mut raw = vec![0u8; 4 * n_chunk * n_ctx];
        input.read_exact(&mut raw).map_err(|e| io_error(path, e))?;
        let tokens = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            input,
            n_ctx,
            n_vocab,
            n_chunk,
            tokens,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored rows of the next chunk, `rows_per_chunk(n_ctx) * row_len(n_vocab)` values.
    pub fn next_chunk(&mut self) -> Result<Vec<u16>> {
        let mut raw = vec![0u8; 2 * rows_per_chunk(self.n_ctx) * row_len(self.n_vocab)];
        self.input
            .read_exact(&mut raw)
            .map_err(|e| io_error(&self.path, e))?;
        Ok(raw
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect())
    }
}
