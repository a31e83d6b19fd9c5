//! Token sampling, in llama.cpp's order: logit bias, repetition/frequency/presence penalties
//! over the recent tokens, top-k, top-p, min-p, temperature, one seeded draw.
//!
//! [`Sampler`] is the reference: backends that sample on the device ([`crate::backend::Backend::start_sampling`])
//! follow it step for step, so that the same seed and the same logits give the same token on
//! both (up to the last bits of the exponentials, which only a near-tie can see). For that the
//! order is fixed everywhere: candidates are ranked by logit, then by id; the draws come from a
//! counter-based generator (the n-th draw of a seed is a hash of both), so a device can make
//! them as well as the host.

use std::collections::VecDeque;

/// Most recent tokens a device's penalties can look at, most candidates its top-k can keep,
/// most logit biases it takes: settings beyond these sample on the host.
pub const DEVICE_WINDOW: usize = 256;
pub const DEVICE_TOP_K: usize = 256;
pub const DEVICE_BIASES: usize = 1024;

#[derive(Clone, Debug)]
pub struct SamplerConfig {
    /// 0 means greedy: always the most likely token.
    pub temperature: f32,
    /// 0 keeps every token.
    pub top_k: usize,
    /// 1.0 keeps every token.
    pub top_p: f32,
    /// 0.0 keeps every token.
    pub min_p: f32,
    /// 1.0 is no penalty: seen tokens' positive logits are divided by it, others multiplied.
    pub repeat_penalty: f32,
    /// Subtracted from a seen token's logit once per time it was seen.
    pub frequency_penalty: f32,
    /// Subtracted from a seen token's logit once.
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub repeat_last_n: usize,
    /// Added to the logits of these tokens before anything else.
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repeat_last_n: 64,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplerConfig {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    fn penalizes(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }

    /// Greedy with nothing to adjust the logits: the argmax can be taken on the device.
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature <= 0.0 && !self.penalizes() && self.logit_bias.is_empty()
    }

    /// Whether a device sampler can follow these settings (a bounded top-k, window and bias
    /// list); others sample on the host from the logits read back.
    pub fn fits_device(&self) -> bool {
        let top_k_bounded = self.temperature <= 0.0 || (1..=DEVICE_TOP_K).contains(&self.top_k);
        top_k_bounded
            && self.repeat_last_n <= DEVICE_WINDOW
            && self.logit_bias.len() <= DEVICE_BIASES
    }

    /// Checks that every setting is in its range: a NaN, infinite or out-of-range value
    /// would otherwise sample garbage (or always the same token) without a word.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let check = |setting, value: f32, ok: bool, expected| match ok {
            true => Ok(()),
            false => Err(InvalidSetting {
                setting,
                value,
                expected,
            }),
        };
        let unit = |v: f32| (0.0..=1.0).contains(&v);
        check(
            Setting::Temperature,
            self.temperature,
            self.temperature.is_finite() && self.temperature >= 0.0,
            "a finite number ≥ 0 (0 is greedy)",
        )?;
        check(
            Setting::TopP,
            self.top_p,
            unit(self.top_p),
            "between 0 and 1",
        )?;
        check(
            Setting::MinP,
            self.min_p,
            unit(self.min_p),
            "between 0 and 1",
        )?;
        check(
            Setting::RepeatPenalty,
            self.repeat_penalty,
            self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0,
            "a finite number > 0 (1 is no penalty)",
        )?;
        check(
            Setting::FrequencyPenalty,
            self.frequency_penalty,
            self.frequency_penalty.is_finite(),
            "a finite number (0 is no penalty)",
        )?;
        check(
            Setting::PresencePenalty,
            self.presence_penalty,
            self.presence_penalty.is_finite(),
            "a finite number (0 is no penalty)",
        )?;
        for &(_, bias) in &self.logit_bias {
            check(
                Setting::LogitBias,
                bias,
                !bias.is_nan(),
                "a number (-inf bans the token)",
            )?;
        }
        Ok(())
    }
}

/// A sampler setting that [`SamplerConfig::validate`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Temperature,
    TopP,
    MinP,
    RepeatPenalty,
    FrequencyPenalty,
    PresencePenalty,
    LogitBias,
}

impl Setting {
    pub fn name(self) -> &'static str {
        match self {
            Self::Temperature => "temperature",
            Self::TopP => "top_p",
            Self::MinP => "min_p",
            Self::RepeatPenalty => "repeat_penalty",
            Self::FrequencyPenalty => "frequency_penalty",
            Self::PresencePenalty => "presence_penalty",
            Self::LogitBias => "logit_bias",
        }
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("sampler setting {} must be {expected}, got {value}", setting.name())]
pub struct InvalidSetting {
    pub setting: Setting,
    pub value: f32,
    pub expected: &'static str,
}

/// Chris Wellons' lowbias32, the hash the draws are made of (shaders/sample.wgsl has it too).
pub fn hash32(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h
}

/// Draw number `n` of `seed`, uniform in [0, 1) with 24 bits.
pub fn uniform(seed: u64, n: u32) -> f32 {
    let (lo, hi) = (seed as u32, (seed >> 32) as u32);
    let h = hash32(lo ^ hash32(hi ^ hash32(n)));
    (h >> 8) as f32 / (1u32 << 24) as f32
}

#[derive(Clone, Debug)]
pub struct Sampler {
    config: SamplerConfig,
    /// Draws made so far: the next one is draw number `draws` of the seed.
    draws: u32,
    recent: VecDeque<u32>,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Self {
        Self {
            draws: 0,
            recent: VecDeque::with_capacity(config.repeat_last_n),
            config,
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Draws made so far.
    pub fn draws(&self) -> u32 {
        self.draws
    }

    /// The tokens the penalties look at, oldest first.
    pub fn recent(&self) -> impl ExactSizeIterator<Item = u32> + '_ {
        self.recent.iter().copied()
    }

    /// Remembers a token for the penalties (prompt tokens and sampled ones).
    pub fn accept(&mut self, token: u32) {
        if self.config.repeat_last_n == 0 {
            return;
        }
        if self.recent.len() == self.config.repeat_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    /// Counts the draw of a token a device sampler chose, as [`Self::sample`] counts its own
    /// (none when greedy).
    pub fn count_device_draw(&mut self) {
        if self.config.temperature > 0.0 {
            self.draws = self.draws.wrapping_add(1);
        }
    }

    pub fn reset(&mut self) {
        self.recent.clear();
    }

    /// Picks the next token from the logits of the last position (which it adjusts in place
    /// by the bias and the penalties).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.adjust(logits);
        if self.config.temperature <= 0.0 {
            return crate::backend::argmax(logits) as u32;
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        let r = uniform(self.config.seed, self.draws);
        self.draws = self.draws.wrapping_add(1);
        if candidates.is_empty() {
            return 0;
        }
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.config.top_k > 0 {
            candidates.truncate(self.config.top_k);
        }
        let mut probs = softmax_of(&candidates, 1.0);
        let keep = top_p_len(&probs, self.config.top_p);
        candidates.truncate(keep);
        probs.truncate(keep);
        let keep = min_p_len(&probs, self.config.min_p);
        candidates.truncate(keep);
        let probs = softmax_of(&candidates, self.config.temperature);
        let mut cumulative = 0.0;
        for (&(id, _), p) in candidates.iter().zip(&probs) {
            cumulative += p;
            if r < cumulative {
                return id;
            }
        }
        candidates.last().expect("non-empty").0
    }

    /// The bias, then the penalties: each token of the window once, with its count.
    fn adjust(&self, logits: &mut [f32]) {
        for &(id, bias) in &self.config.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        if !self.config.penalizes() {
            return;
        }
        let mut seen: Vec<u32> = self.recent.iter().copied().collect();
        seen.sort_unstable();
        for run in seen.chunk_by(|a, b| a == b) {
            if let Some(l) = logits.get_mut(run[0] as usize) {
                *l = penalize(&self.config, *l, run.len());
            }
        }
    }
}

/// llama.cpp's penalties of a token seen `count` times.
fn penalize(c: &SamplerConfig, logit: f32, count: usize) -> f32 {
    let l = if logit <= 0.0 {
        logit * c.repeat_penalty
    } else {
        logit / c.repeat_penalty
    };
    l - count as f32 * c.frequency_penalty - c.presence_penalty
}

/// Softmax of logits sorted in descending order, at a temperature.
fn softmax_of(sorted: &[(u32, f32)], temperature: f32) -> Vec<f32> {
    let max = sorted[0].1;
    let mut probs: Vec<f32> = sorted
        .iter()
        .map(|&(_, l)| ((l - max) / temperature).exp())
        .collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    probs
}

/// How many of the most likely tokens reach cumulative probability `top_p` (at least one).
fn top_p_len(sorted_probs: &[f32], top_p: f32) -> usize {
    if top_p >= 1.0 {
        return sorted_probs.len();
    }
    let mut cumulative = 0.0;
    for (i, p) in sorted_probs.iter().enumerate() {
        cumulative += p;
        if cumulative >= top_p {
            return i + 1;
        }
    }
    sorted_probs.len()
}

/// How many tokens have at least `min_p` times the top token's probability (at least one).
fn min_p_len(sorted_probs: &[f32], min_p: f32) -> usize {
    if min_p <= 0.0 {
        return sorted_probs.len();
    }
    let threshold = sorted_probs[0] * min_p;
    sorted_probs
        .iter()
        .take_while(|&&p| p >= threshold)
        .count()
        .max(1)
}

#[cfg(test)]
mod tests;
