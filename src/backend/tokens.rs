//! Token selection on the host, for backends without their own: the state the provided
//! token ops of [`super::Backend`] keep between queueing a pick and reading it.

use super::{BackendError, ARGMAX_SLOTS};
use crate::sampling::Sampler;

/// The ids picked into each slot (or the error reading the logits gave), the last of them,
/// and the sampler of [`super::Backend::start_sampling`].
pub struct HostTokens {
    slots: [Result<u32, Box<BackendError>>; ARGMAX_SLOTS],
    last: u32,
    /// Boxed: a CPU backend carries this whether it samples or not.
    sampler: Option<Box<Sampler>>,
}

impl Default for HostTokens {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| Ok(0)),
            last: 0,
            sampler: None,
        }
    }
}

impl HostTokens {
    pub(super) fn put(&mut self, slot: usize, id: Result<u32, BackendError>) {
        if let Ok(id) = id {
            self.last = id;
        }
        self.slots[slot] = id.map_err(Box::new);
    }

    pub(super) fn get(&self, slot: usize) -> Result<u32, BackendError> {
        self.slots[slot].clone().map_err(|e| *e)
    }

    pub(super) fn last(&self) -> u32 {
        self.last
    }

    pub(super) fn start(&mut self, sampler: &Sampler) {
        self.sampler = Some(Box::new(sampler.clone()));
    }

    /// The started sampler's draw from `logits` (adjusted in place by its bias and
    /// penalties), which it then counts and remembers.
    pub(super) fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let sampler = self
            .sampler
            .as_mut()
            .expect("start_sampling comes before queue_sample");
        let id = sampler.sample(logits);
        sampler.accept(id);
        id
    }
}

/// Index of the first largest value; NaNs never win (an all-NaN row gives 0).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if !v.is_nan() && (v > x[best] || x[best].is_nan()) {
            best = i;
        }
    }
    best
}
