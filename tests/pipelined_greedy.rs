//! Decoding a token ahead with each token picked on the device ([`Transformer::greedy`],
//! [`Transformer::sampled`]) gives what picking on the host one token at a time gives: the
//! same tokens, the same stops, and the same KV cache afterwards, greedy or sampled, on both
//! backends (the GPU one on lavapipe where there is no GPU). On SmolLM2-135M
//! (`scripts/fetch_model.py smollm2-135m`), with a small context so that it fills.

// Only the shared backends of common are used here.
#[allow(dead_code)]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use vibrant::backend::Backend;
use vibrant::generate::{
    GenerateOptions, Generation, Picking, Sampler, SamplerConfig, Session, StopStrings,
};
use vibrant::model::{LoadOptions, Transformer};

const N_CTX: usize = 24;

fn session<B: Backend>(backend: B) -> Session<B> {
    let (file, tokenizer) = common::models::open("smollm2-135m");
    let options = LoadOptions {
        n_ctx: N_CTX,
        n_batch: 8,
        ..LoadOptions::default()
    };
    Session::new(
        Transformer::load(&file, backend, &options).unwrap(),
        tokenizer,
    )
}

/// What a generation leaves: its answer, and the tokens in the cache after it. It is
/// cancelled after `cancel_after` tokens.
fn generate<B: Backend>(
    session: &mut Session<B>,
    sampler: &mut Sampler,
    picking: Picking,
    prompt: &[u32],
    (max_tokens, stop, cancel_after): (usize, &str, usize),
) -> (Generation, usize) {
    let cancel = AtomicBool::new(false);
    let options = GenerateOptions {
        max_tokens,
        stops: StopStrings::new([stop.to_string()]),
        cancel: Some(&cancel),
        picking,
    };
    let mut pieces = 0;
    let on_text = |_: &str| {
        pieces += 1;
        cancel.store(pieces >= cancel_after, Ordering::Relaxed);
    };
    let generation = session
        .generate(prompt, sampler, &options, on_text)
        .unwrap();
    (generation, session.model.n_past())
}

/// A conversation of several generations, each continuing the last (reusing the cache),
/// under `config`, picking where `picking` says: every stop reason (greedy), and prompts that
/// fill the context.
fn conversation<B: Backend>(
    session: &mut Session<B>,
    config: &SamplerConfig,
    picking: Picking,
) -> Vec<String> {
    let mut sampler = Sampler::new(config.clone());
    session.reset();
    let chat =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let prompt = session.tokenize_prompt(chat).unwrap();
    let mut seen = Vec::new();
    let mut record = |(g, n_past): (Generation, usize)| {
        seen.push(format!(
            "{:?} {:?} {:?} n_past {n_past}",
            g.tokens, g.text, g.stop
        ));
        g.tokens
    };
    let never = usize::MAX;
    // Stopped by max tokens, then continued from where it stopped.
    let first = record(generate(
        session,
        &mut sampler,
        picking,
        &prompt,
        (3, "", never),
    ));
    let longer = [prompt.clone(), first].concat();
    // The answer's end of turn.
    record(generate(
        session,
        &mut sampler,
        picking,
        &longer,
        (16, "", never),
    ));
    // A stop string, on a prompt that is not a continuation of the cache.
    record(generate(
        session,
        &mut sampler,
        picking,
        &prompt,
        (16, " of", never),
    ));
    // Cancelled after two tokens.
    record(generate(
        session,
        &mut sampler,
        picking,
        &longer,
        (16, "", 2),
    ));
    // The context fills: from a prompt 3 tokens short of it, then from a full one.
    let text = session
        .tokenize_prompt("Once upon a time, in a land far away, there")
        .unwrap();
    let long = [text.clone(), text].concat();
    record(generate(
        session,
        &mut sampler,
        picking,
        &long[..N_CTX - 3],
        (16, "", never),
    ));
    record(generate(
        session,
        &mut sampler,
        picking,
        &long[..N_CTX],
        (16, "", never),
    ));
    seen
}

fn device_matches_host<B: Backend>(backend: B, config: &SamplerConfig) -> Vec<String> {
    let mut session = session(backend);
    let want = conversation(&mut session, config, Picking::Host);
    let got = conversation(&mut session, config, Picking::Device);
    for (got, want) in got.iter().zip(&want) {
        eprintln!("{got}");
        assert_eq!(got, want);
    }
    want
}

fn pipelined_matches_host_greedy<B: Backend>(backend: B) {
    let want = device_matches_host(backend, &SamplerConfig::greedy());
    for stop in [
        "MaxTokens",
        "EndOfTurn",
        "StopString",
        "Cancelled",
        "ContextFull",
    ] {
        assert!(
            want.iter().any(|g| g.contains(stop)),
            "no {stop} in {want:?}"
        );
    }
}

/// The sampler `vibrant ask` uses by default, with penalties and a bias on top, at a
/// temperature where the draws matter.
fn sampling() -> SamplerConfig {
    SamplerConfig {
        temperature: 1.2,
        repeat_penalty: 1.3,
        frequency_penalty: 0.2,
        presence_penalty: 0.3,
        logit_bias: vec![(28, 1.5), (30, -2.0)],
        seed: 12345,
        ..SamplerConfig::default()
    }
}

#[test]
fn pipelined_greedy_generations_match_host_greedy_on_the_cpu() {
    pipelined_matches_host_greedy(common::cpu());
}

#[test]
fn pipelined_greedy_generations_match_host_greedy_on_the_gpu() {
    pipelined_matches_host_greedy(common::gpu());
}

#[test]
fn pipelined_sampled_generations_match_host_sampling_on_the_cpu() {
    device_matches_host(common::cpu(), &sampling());
}

#[test]
fn pipelined_sampled_generations_match_host_sampling_on_the_gpu() {
    device_matches_host(common::gpu(), &sampling());
}

/// Stopping a greedy run leaves the cache without the token run ahead: the next step, of a
/// token other than the one greedy would take, sees exactly what it sees after decoding one
/// token at a time.
fn stop_and_continue<B: Backend>(backend: B) {
    let mut model = session(backend).model;
    let prompt = [1, 504, 3575, 282];
    let other = 42;
    model.forward(&prompt).unwrap();
    let mut want = vec![model.argmax().unwrap()];
    for _ in 0..4 {
        model.forward(&[want[want.len() - 1]]).unwrap();
        want.push(model.argmax().unwrap());
    }
    let want_n_past = model.n_past();
    model.forward(&[other]).unwrap();
    let want_logits = model.logits().unwrap();

    model.truncate(0);
    model.forward(&prompt).unwrap();
    let mut greedy = model.greedy();
    let got: Vec<u32> = (0..5).map(|_| greedy.next_token().unwrap()).collect();
    drop(greedy);
    assert_eq!(got, want);
    assert_eq!(model.n_past(), want_n_past);
    model.forward(&[other]).unwrap();
    assert_eq!(model.logits().unwrap(), want_logits);
}

#[test]
fn a_stopped_greedy_run_leaves_the_cache_as_before_on_the_cpu() {
    stop_and_continue(common::cpu());
}

#[test]
fn a_stopped_greedy_run_leaves_the_cache_as_before_on_the_gpu() {
    stop_and_continue(common::gpu());
}

/// Past a token that did not fit, there is no next one: the context is full.
#[test]
fn greedy_past_a_full_context_is_an_error() {
    let mut model = session(common::cpu()).model;
    model.forward(&[1; N_CTX - 1]).unwrap();
    let mut greedy = model.greedy();
    greedy.next_token().unwrap();
    assert!(greedy.fits());
    greedy.next_token().unwrap();
    assert!(!greedy.fits());
    let error = greedy.next_token().unwrap_err().to_string();
    assert!(error.contains("context is full"), "{error}");
    drop(greedy);
    assert_eq!(model.n_past(), N_CTX);
}
