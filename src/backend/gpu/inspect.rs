//! Reading the device's state back for tests and tools: weights as uploaded, decoded, softmax
//! of a row, host data written into a tensor.

use super::*;

impl WgpuBackend {
    /// Each part of an uploaded matrix as the device holds it: its rows, and its buffer's
    /// bytes (tests compare them with the file's).
    pub fn weight_parts(&mut self, m: &GpuMatrix) -> Result<Vec<(usize, Vec<u8>)>> {
        self.stage = format!("reading {}", m.name);
        m.runs
            .iter()
            .flat_map(|run| &run.parts)
            .map(|p| {
                Ok((
                    p.rows as usize,
                    self.read_bytes(&p.buf, p.buf.buffer.size())?,
                ))
            })
            .collect()
    }

    /// Dequantizes a whole matrix on the device (the standalone dequant kernel), its rows in
    /// the device's order.
    pub fn dequantize(&mut self, m: &GpuMatrix) -> Result<Vec<f32>> {
        let out = self.storage("dequantized", (m.rows * m.cols * 4) as u64)?;
        for run in &m.runs {
            for part in &run.parts {
                let params = DequantParams::new(run, part, m.cols, part.rows);
                let groups = (m.cols as u32).div_ceil(8).div_ceil(64);
                let (y, z) = (part.rows.min(MAX_GROUPS), part.rows.div_ceil(MAX_GROUPS));
                let bytes = part.buf.buffer.size() + (part.rows as usize * m.cols * 4) as u64;
                // Bound to the kernel's bindings 1 and 3: it has no token list.
                self.dispatch(
                    Kernel::Dequant(run.ggml_type),
                    &params,
                    &[&part.buf, &out],
                    (groups, y, z),
                    Cost::bytes(bytes),
                );
            }
        }
        self.stage = format!("dequantizing {}", m.name);
        let bytes = self.read_bytes(&out, (m.rows * m.cols * 4) as u64)?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    /// Softmax of row 0 of `x` at a temperature, in place.
    pub fn softmax(&mut self, x: &GpuTensor, temperature: f32) {
        let params = ReduceParams {
            len: x.cols as u32,
            temperature,
        };
        let result = self.result.clone();
        self.dispatch(
            Kernel::Softmax,
            &params,
            &[&x.buf, &result],
            (1, 1, 1),
            Cost::bytes(8 * x.cols as u64),
        );
    }
}
