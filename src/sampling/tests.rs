use super::*;

fn logits() -> Vec<f32> {
    vec![1.0, 3.0, 2.0, 0.5, 2.9]
}

#[test]
fn greedy_takes_the_argmax() {
    let mut s = Sampler::new(SamplerConfig::greedy());
    assert_eq!(s.sample(&mut logits()), 1);
    assert_eq!(s.draws(), 0, "greedy draws nothing");
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
    let other = draw(&SamplerConfig { seed: 43, ..config });
    assert_ne!(a, other, "another seed draws otherwise");
}

#[test]
fn draws_are_uniform_and_depend_on_seed_and_number() {
    let n = 20_000;
    let mut buckets = [0u32; 10];
    for i in 0..n {
        let u = uniform(0x1234_5678_9abc_def0, i);
        assert!((0.0..1.0).contains(&u));
        buckets[(u * 10.0) as usize] += 1;
    }
    for b in buckets {
        assert!((b as f32 / n as f32 - 0.1).abs() < 0.01, "{buckets:?}");
    }
    assert_ne!(uniform(1, 0), uniform(2, 0));
    assert_ne!(uniform(1 << 32, 0), uniform(2 << 32, 0));
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

#[test]
fn frequency_and_presence_penalties_count_as_llama_cpp_does() {
    let mut s = Sampler::new(SamplerConfig {
        repeat_penalty: 1.5,
        frequency_penalty: 0.25,
        presence_penalty: 0.5,
        ..SamplerConfig::greedy()
    });
    for t in [1, 1, 3] {
        s.accept(t);
    }
    let mut l = logits();
    s.adjust(&mut l);
    // Token 1: 3.0 / 1.5 - 2 * 0.25 - 0.5; token 3: 0.5 / 1.5 - 0.25 - 0.5.
    assert!((l[1] - 1.0).abs() < 1e-6, "{l:?}");
    assert!((l[3] - (0.5 / 1.5 - 0.75)).abs() < 1e-6, "{l:?}");
    assert_eq!((l[0], l[2], l[4]), (1.0, 2.0, 2.9));
    // A negative logit is multiplied.
    let mut neg = vec![-2.0, 0.0];
    let mut s = Sampler::new(SamplerConfig {
        repeat_penalty: 1.5,
        ..SamplerConfig::greedy()
    });
    s.accept(0);
    s.adjust(&mut neg);
    assert_eq!(neg[0], -3.0);
}

#[test]
fn logit_bias_bans_and_favours() {
    let mut s = Sampler::new(SamplerConfig {
        logit_bias: vec![(1, f32::NEG_INFINITY), (3, 2.0)],
        ..SamplerConfig::greedy()
    });
    assert_eq!(s.sample(&mut logits()), 4);
    let mut s = Sampler::new(SamplerConfig {
        logit_bias: vec![(3, 2.6)],
        ..SamplerConfig::greedy()
    });
    assert_eq!(s.sample(&mut logits()), 3);
}

#[test]
fn equal_logits_rank_by_id() {
    // With top_k = 2 only the two lowest ids of four equal logits are candidates.
    let mut s = Sampler::new(SamplerConfig {
        temperature: 1.0,
        top_k: 2,
        top_p: 1.0,
        min_p: 0.0,
        seed: 7,
        ..SamplerConfig::default()
    });
    for _ in 0..200 {
        let t = s.sample(&mut [0.0, 1.0, 1.0, 1.0, 1.0]);
        assert!(t == 1 || t == 2, "{t}");
    }
}

#[test]
fn validate_rejects_out_of_range_settings() {
    assert_eq!(SamplerConfig::default().validate(), Ok(()));
    assert_eq!(SamplerConfig::greedy().validate(), Ok(()));
    let edges = SamplerConfig {
        top_p: 0.0,
        min_p: 1.0,
        repeat_penalty: 0.01,
        frequency_penalty: -1.0,
        logit_bias: vec![(3, f32::NEG_INFINITY)],
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
        (Setting::FrequencyPenalty, f32::NAN),
        (Setting::PresencePenalty, f32::INFINITY),
        (Setting::LogitBias, f32::NAN),
    ];
    for (setting, value) in bad {
        let mut config = SamplerConfig::default();
        match setting {
            Setting::Temperature => config.temperature = value,
            Setting::TopP => config.top_p = value,
            Setting::MinP => config.min_p = value,
            Setting::RepeatPenalty => config.repeat_penalty = value,
            Setting::FrequencyPenalty => config.frequency_penalty = value,
            Setting::PresencePenalty => config.presence_penalty = value,
            Setting::LogitBias => config.logit_bias = vec![(0, value)],
        }
        let err = config.validate().expect_err("out of range");
        assert_eq!(err.setting, setting, "{value}");
        assert!(err.to_string().contains(setting.name()), "{err}");
    }
}

#[test]
fn device_limits() {
    assert!(SamplerConfig::default().fits_device());
    assert!(!SamplerConfig {
        top_k: 0,
        ..SamplerConfig::default()
    }
    .fits_device());
    assert!(SamplerConfig {
        top_k: 0,
        ..SamplerConfig::greedy()
    }
    .fits_device());
    assert!(!SamplerConfig {
        repeat_last_n: 257,
        ..SamplerConfig::default()
    }
    .fits_device());
}
