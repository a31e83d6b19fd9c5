//! The device's sampler (shaders/sample.wgsl): its settings, and the state it keeps between
//! tokens (the draw counter and the window of recent tokens), so that a sampled token's id
//! is all that comes back, as with greedy decoding.

use super::kernels::Kernel;
use super::params::SampleParams;
use super::profile::Cost;
use super::{GpuBuf, GpuTensor, WgpuBackend};
use crate::backend::Result;
use crate::sampling::{Sampler, DEVICE_BIASES, DEVICE_TOP_K, DEVICE_WINDOW};
use std::sync::Arc;

/// Logits per workgroup of the sampler's first stage (shaders/sample.wgsl SLICE): about 75
/// workgroups over a 152K vocabulary, whose candidates the second stage reads in a few
/// passes at top-k 40.
pub(super) const SAMPLE_SLICE: usize = 2048;

/// Words of the state buffer before the window: draws, window length, next window slot.
const STATE_HEADER: usize = 3;

pub(super) struct DeviceSampler {
    params: SampleParams,
    state: Arc<GpuBuf>,
    bias: Arc<GpuBuf>,
    /// The first stage's candidates, and how many slices of them it holds.
    cands: Option<(Arc<GpuBuf>, usize)>,
}

/// The state buffer's words for `sampler`: its draws so far and its recent tokens, oldest
/// first, with the next token to go where the oldest is (or after the last, while the window
/// is not full).
fn state_words(sampler: &Sampler) -> Vec<u32> {
    let window: Vec<u32> = sampler.recent().collect();
    let capacity = sampler.config().repeat_last_n.max(1);
    let head = window.len() % capacity;
    let mut words = vec![sampler.draws(), window.len() as u32, head as u32];
    words.extend(window);
    words
}

/// The biases as (token, bits of bias) words, those of one token summed: the kernel adds
/// each entry from a thread of its own.
fn bias_words(sampler: &Sampler) -> Vec<u32> {
    let mut merged: Vec<(u32, f32)> = Vec::new();
    for &(id, bias) in &sampler.config().logit_bias {
        match merged.iter_mut().find(|(t, _)| *t == id) {
            Some((_, b)) => *b += bias,
            None => merged.push((id, bias)),
        }
    }
    merged.iter().flat_map(|&(t, b)| [t, b.to_bits()]).collect()
}

impl WgpuBackend {
    pub(super) fn start_device_sampling(&mut self, sampler: &Sampler) -> Result<()> {
        let c = sampler.config();
        debug_assert!(c.fits_device(), "the caller checks fits_device");
        if self.sampler.is_none() {
            let state = self.storage("sampler state", 4 * (STATE_HEADER + DEVICE_WINDOW) as u64)?;
            let bias = self.storage("logit biases", 8 * DEVICE_BIASES as u64)?;
            self.sampler = Some(DeviceSampler {
                params: SampleParams::default(),
                state,
                bias,
                cands: None,
            });
        }
        let bias = bias_words(sampler);
        let device = self.sampler.as_mut().expect("made above");
        device.params = SampleParams {
            n_vocab: 0,
            top_k: c.top_k as u32,
            top_p: c.top_p,
            min_p: c.min_p,
            temperature: c.temperature,
            repeat_penalty: c.repeat_penalty,
            frequency_penalty: c.frequency_penalty,
            presence_penalty: c.presence_penalty,
            n_bias: (bias.len() / 2) as u32,
            repeat_last_n: c.repeat_last_n as u32,
            seed_lo: c.seed as u32,
            seed_hi: (c.seed >> 32) as u32,
            n_slices: 0,
        };
        let queue = &self.gpu.queue;
        queue.write_buffer(
            &device.state.buffer,
            0,
            bytemuck::cast_slice(&state_words(sampler)),
        );
        if !bias.is_empty() {
            queue.write_buffer(&device.bias.buffer, 0, bytemuck::cast_slice(&bias));
        }
        Ok(())
    }

    /// The candidates buffer, grown to hold `slices` slices of the most candidates.
    fn sample_candidates(&mut self, slices: usize) -> Result<Arc<GpuBuf>> {
        if let Some((buf, held)) = self.sampler.as_ref().and_then(|s| s.cands.clone()) {
            if held >= slices {
                return Ok(buf);
            }
        }
        let bytes = (slices * DEVICE_TOP_K * 8) as u64;
        let buf = self.storage("sampler candidates", bytes)?;
        let device = self.sampler.as_mut().expect("start_sampling made it");
        device.cands = Some((buf.clone(), slices));
        Ok(buf)
    }

    /// Records the sampler over row 0 of `x`; its id lands where the argmax's does.
    pub(super) fn record_sample(&mut self, x: &GpuTensor) {
        let slices = x.cols.div_ceil(SAMPLE_SLICE);
        let cands = self.sample_candidates(slices);
        let Some(cands) = self.recorded(cands) else {
            return;
        };
        let device = self
            .sampler
            .as_ref()
            .expect("start_sampling comes before queue_sample");
        let params = SampleParams {
            n_vocab: x.cols as u32,
            n_slices: slices as u32,
            ..device.params
        };
        let (state, bias, result) = (
            device.state.clone(),
            device.bias.clone(),
            self.result.clone(),
        );
        let buffers = [&x.buf, &result, &state, &bias, &cands];
        // Five passes over the logits: four of the selection and the gathering.
        let cost = Cost::bytes(5 * 4 * x.cols as u64);
        let groups = (slices as u32, 1, 1);
        self.dispatch(Kernel::SampleSlices, &params, &buffers, groups, cost);
        let kept = (params.top_k as usize).min(DEVICE_TOP_K);
        let cost = Cost::bytes((5 * 8 * slices * kept) as u64);
        self.dispatch(Kernel::Sample, &params, &buffers, (1, 1, 1), cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplerConfig;

    #[test]
    fn the_state_starts_from_the_hosts_window() {
        let mut s = Sampler::new(SamplerConfig {
            repeat_last_n: 3,
            ..SamplerConfig::default()
        });
        s.accept(7);
        assert_eq!(state_words(&s), [0, 1, 1, 7]);
        for t in [8, 9, 10] {
            s.accept(t);
        }
        // Full: the next token replaces the oldest, in slot 0.
        assert_eq!(state_words(&s), [0, 3, 0, 8, 9, 10]);
        s.count_device_draw();
        s.accept(11);
        assert_eq!(state_words(&s), [1, 3, 0, 9, 10, 11]);
    }

    #[test]
    fn biases_of_one_token_are_summed() {
        let s = Sampler::new(SamplerConfig {
            logit_bias: vec![(5, 1.0), (2, -1.0), (5, 0.5)],
            ..SamplerConfig::default()
        });
        assert_eq!(
            bias_words(&s),
            [5, 1.5f32.to_bits(), 2, (-1.0f32).to_bits()]
        );
    }
}
