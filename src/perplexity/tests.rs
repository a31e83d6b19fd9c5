use super::logprobs::{encode_row, row_len, rows_per_chunk, StoredRow};
use super::*;

/// Log-softmax in f64, the textbook way.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln();
    logits.iter().map(|&l| l as f64 - max - lse).collect()
}

fn random_logits(seed: u64, n: usize, spread: f32) -> Vec<f32> {
    let mut rng = crate::rng::SplitMix64(seed);
    (0..n)
        .map(|_| (rng.next_f32() * 2.0 - 1.0) * spread)
        .collect()
}

#[test]
fn token_nll_is_the_negative_log_softmax() {
    let logits = random_logits(1, 1001, 9.0);
    let exact = log_softmax(&logits);
    for t in [0u32, 17, 500, 1000] {
        assert!((token_nll(&logits, t) + exact[t as usize]).abs() < 1e-5);
    }
}

#[test]
fn a_stored_row_gives_back_its_log_probabilities() {
    // An odd vocabulary exercises the padding of the row.
    let logits = random_logits(2, 777, 12.0);
    let exact = log_softmax(&logits);
    let mut row = vec![0u16; row_len(logits.len())];
    assert_eq!(row.len(), 777 + 1 + 4);
    let nll = encode_row(&logits, 5, &mut row);
    assert!((nll + exact[5]).abs() < 1e-5, "{nll} vs {}", -exact[5]);
    let stored = StoredRow::new(&row, logits.len());
    let top = exact.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // One step of the 16-bit grid is 16 / 65535 nats at most.
    for (i, &e) in exact.iter().enumerate() {
        let got = stored.log_prob(i) as f64;
        if e > top - 16.0 {
            assert!((got - e).abs() < 2e-4, "token {i}: {got} vs {e}");
        } else {
            assert!((got - (top - 16.0)).abs() < 2e-4, "token {i} is floored");
        }
    }
}

fn kl_of(new: &[f32], base: &[f32], token: u32) -> KlStats {
    let mut row = vec![0u16; row_len(base.len())];
    encode_row(base, token, &mut row);
    let mut stats = KlStats::default();
    stats.add(new, &StoredRow::new(&row, base.len()), token);
    stats
}

#[test]
fn kl_divergence_of_a_distribution_with_itself_is_nil() {
    let logits = random_logits(3, 4096, 10.0);
    // Logits shifted by a constant give the same distribution.
    let shifted: Vec<f32> = logits.iter().map(|l| l + 3.5).collect();
    let stats = kl_of(&shifted, &logits, 7);
    let s = stats.summary().unwrap();
    assert!(s.kld_mean.value.abs() < 1e-4, "{}", s.kld_mean.value);
    assert_eq!(s.same_top.value, 1.0);
    assert!(s.p_diff_max_abs < 1e-4);
}

#[test]
fn kl_divergence_matches_its_definition() {
    let base = random_logits(4, 3000, 6.0);
    let new: Vec<f32> = base
        .iter()
        .zip(random_logits(5, 3000, 1.0))
        .map(|(b, d)| b + d)
        .collect();
    let (lb, ln) = (log_softmax(&base), log_softmax(&new));
    let exact: f64 = lb.iter().zip(&ln).map(|(b, n)| b.exp() * (b - n)).sum();
    let s = kl_of(&new, &base, 11).summary().unwrap();
    assert!(exact > 0.05, "the test needs a real difference: {exact}");
    assert!(
        (s.kld_mean.value - exact).abs() < 1e-3 * exact,
        "{} vs {exact}",
        s.kld_mean.value
    );
    let p_diff = ln[11].exp() - lb[11].exp();
    assert!((s.p_diff_mean.value - p_diff).abs() < 1e-5);
}

#[test]
fn the_top_token_agreement_counts_positions() {
    let base = vec![0.0, 5.0, 1.0, 0.0];
    let mut stats = KlStats::default();
    let mut row = vec![0u16; row_len(4)];
    encode_row(&base, 1, &mut row);
    let stored = StoredRow::new(&row, 4);
    stats.add(&[0.0, 5.0, 1.0, 0.0], &stored, 1);
    stats.add(&[0.0, 1.0, 5.0, 0.0], &stored, 1);
    assert_eq!(stats.same_top_fraction(), 0.5);
}

#[test]
fn perplexity_estimate_is_exp_of_the_mean_nll_with_its_standard_error() {
    let mut stats = NllStats::default();
    for v in [1.0, 2.0, 3.0, 4.0] {
        stats.add(v);
    }
    let (ppl, err) = stats.estimate().unwrap();
    assert!((ppl - 2.5f64.exp()).abs() < 1e-12);
    // Population variance 1.25, over n - 1 = 3.
    assert!((err - (1.25f64 / 3.0).sqrt() * ppl).abs() < 1e-12);
    let mut one = NllStats::default();
    one.add(1.0);
    assert!(one.estimate().is_none());
}

#[test]
fn texts_shorter_than_two_chunks_are_refused() {
    assert!(matches!(
        chunk_count("t.txt", 1023, 512, None),
        Err(PerplexityError::TooShort { got: 1023, .. })
    ));
    assert_eq!(chunk_count("t.txt", 1024, 512, None).unwrap(), 2);
    assert_eq!(chunk_count("t.txt", 5000, 512, None).unwrap(), 9);
    assert_eq!(chunk_count("t.txt", 5000, 512, Some(3)).unwrap(), 3);
    assert!(chunk_count("t.txt", 5000, 2, None).is_err());
}

#[test]
fn a_base_file_reads_back_as_written_and_a_cut_one_is_refused() {
    let dir = std::env::temp_dir().join(format!("vibrant-kl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("base.kld");
    let (n_ctx, n_vocab, n_chunk) = (8, 5, 2);
    let tokens: Vec<u32> = (0..20).map(|t| t % 5).collect();
    let mut w = LogProbWriter::create(&path, n_ctx, n_vocab, n_chunk, &tokens).unwrap();
    let rows = rows_per_chunk(n_ctx);
    assert_eq!(rows, 3);
    for r in 0..n_chunk * rows {
        let logits = random_logits(10 + r as u64, n_vocab, 4.0);
        w.write_row(&logits, 2).unwrap();
    }
    w.finish().unwrap();
    let mut r = LogProbReader::open(&path).unwrap();
    assert_eq!((r.n_ctx, r.n_vocab, r.n_chunk), (n_ctx, n_vocab, n_chunk));
    assert_eq!(r.tokens, tokens[..16]);
    let chunk = r.next_chunk().unwrap();
    assert_eq!(chunk.len(), rows * row_len(n_vocab));
    let first = StoredRow::new(&chunk[..row_len(n_vocab)], n_vocab);
    let exact = log_softmax(&random_logits(10, n_vocab, 4.0));
    assert!((first.log_prob(3) as f64 - exact[3]).abs() < 2e-4);

    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
    let e = LogProbReader::open(&path).err().unwrap().to_string();
    assert!(e.contains("base.kld") && e.contains("cut"), "{e}");
    std::fs::write(&path, b"not a logits file at all").unwrap();
    let e = LogProbReader::open(&path).err().unwrap().to_string();
    assert!(e.contains("_logits_"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
