//! The device's sampler (shaders/sample.wgsl, through [`Backend::queue_sample`]) against the
//! host's reference [`Sampler`]: the same settings, seed and logits give the same token, draw
//! after draw (the device keeps its own draw counter and window of recent tokens), and many
//! draws follow the distribution the settings define. On logits drawn so that no draw falls
//! on a near-tie, over vocabularies of awkward sizes, with ties to rank by id.

// Only some helpers of common are used here.
#[allow(dead_code)]
mod common;

use common::Load;
use rand::Rng;
use vibrant::backend::Backend;
use vibrant::sampling::{Sampler, SamplerConfig, DEVICE_TOP_K};

/// `n` logits spread over ±`spread` on a grid of quarters, so that many are equal, among
/// the largest too, and ranking ties by id matters.
fn logits(seed: u64, n: usize, spread: f32) -> Vec<f32> {
    let mut rng = common::rng(seed);
    let mut l = common::random_values(&mut rng, n, spread);
    l.iter_mut().for_each(|v| *v = (*v * 4.0).round() / 4.0);
    // Some of the largest logits go elsewhere too.
    let top = l.iter().copied().fold(f32::MIN, f32::max);
    for _ in 0..3 {
        let at = rng.random_range(0..n);
        l[at] = top;
    }
    l
}

/// The ids of the `k` largest logits: tokens the penalties then weigh on.
fn leaders(l: &[f32], k: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..l.len() as u32).collect();
    ids.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
    ids.truncate(k);
    ids
}

/// Draws `steps` tokens from fresh copies of `base` on the backend's sampler and on the host
/// reference, feeding each drawn token back into both windows.
fn draws_agree<B: Load>(b: &mut B, config: &SamplerConfig, base: &[f32], steps: usize) {
    let mut host = Sampler::new(config.clone());
    let leading = leaders(base, 3);
    for t in [leading[0], leading[1], leading[0], leading[2]] {
        host.accept(t);
    }
    b.start_sampling(&host).unwrap();
    for step in 0..steps {
        let x = b.load("logits", 1, base.len(), base);
        b.queue_sample(&x, step % 2);
        let got = b.read_argmax(step % 2).unwrap();
        let want = host.sample(&mut base.to_vec());
        host.accept(want);
        assert_eq!(
            got,
            want,
            "step {step} of {config:?} over {} logits",
            base.len()
        );
    }
}

fn configs() -> Vec<SamplerConfig> {
    let d = SamplerConfig {
        seed: 0xdead_beef_0123,
        ..SamplerConfig::default()
    };
    vec![
        d.clone(),
        SamplerConfig::greedy(),
        SamplerConfig {
            repeat_penalty: 1.4,
            ..SamplerConfig::greedy()
        },
        SamplerConfig {
            top_k: 1,
            temperature: 3.0,
            ..d.clone()
        },
        SamplerConfig {
            top_k: DEVICE_TOP_K,
            top_p: 1.0,
            min_p: 0.0,
            temperature: 1.5,
            ..d.clone()
        },
        SamplerConfig {
            top_k: 7,
            top_p: 0.5,
            min_p: 0.0,
            temperature: 0.7,
            ..d.clone()
        },
        SamplerConfig {
            top_k: 100,
            top_p: 1.0,
            min_p: 0.2,
            temperature: 2.0,
            repeat_penalty: 1.3,
            frequency_penalty: 0.4,
            presence_penalty: 0.6,
            repeat_last_n: 5,
            logit_bias: vec![(3, 6.0), (9, f32::NEG_INFINITY), (3, 1.0)],
            seed: 99,
        },
    ]
}

fn device_sampler_draws_what_the_host_sampler_draws<B: Load>(mut b: B) {
    for (i, n) in [300, 4099, 49_157].into_iter().enumerate() {
        let base = logits(i as u64, n, 8.0);
        for config in configs() {
            draws_agree(&mut b, &config, &base, 24);
        }
    }
}

#[test]
fn device_sampler_draws_what_the_host_sampler_draws_on_the_gpu() {
    device_sampler_draws_what_the_host_sampler_draws(common::gpu());
}

#[test]
fn device_sampler_draws_what_the_host_sampler_draws_on_the_cpu() {
    device_sampler_draws_what_the_host_sampler_draws(common::cpu());
}

/// Many draws from one distribution: each candidate's share is its probability under the
/// settings (top-k 3 of the softmax at the temperature), within a few standard errors.
#[test]
fn device_draws_follow_the_distribution() {
    let mut b = common::gpu();
    let mut base = vec![-30.0f32; 1000];
    (base[10], base[500], base[999], base[3]) = (2.0, 1.5, 1.0, 0.0);
    let config = SamplerConfig {
        top_k: 3,
        top_p: 1.0,
        min_p: 0.0,
        temperature: 1.0,
        repeat_last_n: 0,
        seed: 2024,
        ..SamplerConfig::default()
    };
    b.start_sampling(&Sampler::new(config)).unwrap();
    let n = 3000;
    let mut counts = std::collections::HashMap::new();
    for i in 0..n {
        let x = b.load("logits", 1, base.len(), &base);
        b.queue_sample(&x, i % 2);
        *counts
            .entry(b.read_argmax(i % 2).unwrap())
            .or_insert(0usize) += 1;
    }
    let z: f32 = [2.0f32, 1.5, 1.0].iter().map(|l| l.exp()).sum();
    for (id, logit) in [(10u32, 2.0f32), (500, 1.5), (999, 1.0)] {
        let p = logit.exp() / z;
        let share = counts.get(&id).copied().unwrap_or(0) as f32 / n as f32;
        let error = (p * (1.0 - p) / n as f32).sqrt();
        assert!(
            (share - p).abs() < 4.0 * error,
            "token {id}: {share} drawn, {p} expected ({counts:?})"
        );
    }
    assert_eq!(counts.len(), 3, "only the top 3 are drawn: {counts:?}");
}
