//! Token sampling: repetition penalty, top-k, top-p, min-p and temperature, in llama.cpp's order.

use crate::rng::SplitMix64;
use std::collections::VecDeque;

#[derive(Clone, Debug)]
pub struct SamplerConfig {
    /// 0 (or less) means greedy: always the most likely token.
    pub temperature: f32,
    /// 0 keeps every token.
    pub top_k: usize,
    /// 1.0 keeps every token.
    pub top_p: f32,
    /// 0.0 keeps every token.
    pub min_p: f32,
    /// 1.0 is no penalty.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
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
            repeat_last_n: 64,
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

    /// Greedy without penalties: the argmax can be taken on the device.
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature <= 0.0 && self.repeat_penalty == 1.0
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
        )
    }
}

/// A sampler setting that [`SamplerConfig::validate`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Temperature,
    TopP,
    MinP,
    RepeatPenalty,
}

impl Setting {
    pub fn name(self) -> &'static str {
        match self {
            Self::Temperature => "temperature",
            Self::TopP => "top_p",
            Self::MinP => "min_p",
            Self::RepeatPenalty => "repeat_penalty",
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

pub struct Sampler {
    config: SamplerConfig,
    rng: SplitMix64,
    recent: VecDeque<u32>,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Self {
        Self {
            rng: SplitMix64(config.seed),
            recent: VecDeque::with_capacity(config.repeat_last_n),
            config,
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Remembers a token for the repetition penalty (prompt tokens and sampled ones).
    pub fn accept(&mut self, token: u32) {
        if self.config.repeat_last_n == 0 {
            return;
        }
        if self.recent.len() == self.config.repeat_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    pub fn reset(&mut self) {
        self.recent.clear();
    }

    /// Picks the next token from the logits of the last position.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.apply_repeat_penalty(logits);
        if self.config.temperature <= 0.0 {
            return crate::backend::cpu::argmax(logits) as u32;
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        if candidates.is_empty() {
            return 0;
        }
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
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
        let r = self.rng.next_f32();
        let mut cumulative = 0.0;
        for (&(id, _), p) in candidates.iter().zip(&probs) {
            cumulative += p;
            if r < cumulative {
                return id;
            }
        }
        candidates.last().expect("non-empty").0
    }

    fn apply_repeat_penalty(&self, logits: &mut [f32]) {
        let penalty = self.config.repeat_penalty;
        if penalty == 1.0 {
            return;
        }
        let mut seen: Vec<u32> = self.recent.iter().copied().collect();
        seen.sort_unstable();
        seen.dedup();
        for id in seen {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
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
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&mut logits()), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 5.0,
            top_k: 1,
            ..SamplerConfig::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits()), 1);
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let probs = [0.5, 0.3, 0.15, 0.05];
        assert_eq!(top_p_len(&probs, 0.8), 2);
        assert_eq!(top_p_len(&probs, 0.81), 3);
        assert_eq!(top_p_len(&probs, 1.0), 4);
        assert_eq!(min_p_len(&probs, 0.5), 2);
        assert_eq!(min_p_len(&probs, 0.0), 4);
        assert_eq!(min_p_len(&probs, 2.0), 1);
    }

    #[test]
    fn sampling_is_seeded_and_follows_the_distribution() {
        let config = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            ..SamplerConfig::default()
        };
        let draw = |config: &SamplerConfig| {
            let mut s = Sampler::new(config.clone());
            (0..2000)
                .map(|_| s.sample(&mut logits()))
                .collect::<Vec<_>>()
        };
        let a = draw(&config);
        assert_eq!(a, draw(&config));
        let ones = a.iter().filter(|&&t| t == 1).count() as f32 / a.len() as f32;
        // softmax([1,3,2,0.5,2.9])[1] ≈ 0.392
        assert!((ones - 0.392).abs() < 0.04, "{ones}");
        assert!(a.contains(&3));
    }

    #[test]
    fn validate_rejects_out_of_range_settings() {
        assert_eq!(SamplerConfig::default().validate(), Ok(()));
        assert_eq!(SamplerConfig::greedy().validate(), Ok(()));
        let edges = SamplerConfig {
            top_p: 0.0,
            min_p: 1.0,
            repeat_penalty: 0.01,
            ..SamplerConfig::default()
        };
        assert_eq!(edges.validate(), Ok(()));
        let bad = [
            (Setting::Temperature, -0.1),
            (Setting::Temperature, f32::NAN),
            (Setting::Temperature, f32::INFINITY),
            (Setting::TopP, 1.01),
            (Setting::TopP, -0.5),
            (Setting::MinP, 2.0),
            (Setting::MinP, f32::NAN),
            (Setting::RepeatPenalty, 0.0),
            (Setting::RepeatPenalty, -1.0),
            (Setting::RepeatPenalty, f32::INFINITY),
        ];
        for (setting, value) in bad {
            let mut config = SamplerConfig::default();
            *match setting {
                Setting::Temperature => &mut config.temperature,
                Setting::TopP => &mut config.top_p,
                Setting::MinP => &mut config.min_p,
                Setting::RepeatPenalty => &mut config.repeat_penalty,
            } = value;
            let err = config.validate().expect_err("out of range");
            assert_eq!(err.setting, setting, "{value}");
            assert!(err.to_string().contains(setting.name()), "{err}");
        }
    }

    #[test]
    fn repeat_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 2.0,
            ..SamplerConfig::greedy()
        });
        s.accept(1);
        assert_eq!(s.sample(&mut logits()), 4);
    }
}
