//! How far one engine's next-token distributions are from a base engine's: KL divergence,
//! agreement of the most likely token, and the change of the probability of the token that
//! came, summed as llama-perplexity's `--kl-divergence` sums them.

use super::logprobs::StoredRow;

/// Sums over the scored tokens, and each token's KL divergence and Δp for the percentiles.
#[derive(Clone, Debug, Default)]
pub struct KlStats {
    nll: Sums,
    nll_base: Sums,
    sum_nll_nll_base: f64,
    kld: Sums,
    p_diff: Sums,
    sum_p_diff4: f64,
    max_abs_p_diff: f32,
    same_top: usize,
    klds: Vec<f32>,
    p_diffs: Vec<f32>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Sums {
    sum: f64,
    sum2: f64,
}

impl Sums {
    fn add(&mut self, x: f64) {
        self.sum += x;
        self.sum2 += x * x;
    }
}

/// A value and its standard error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub error: f64,
}

/// What `--kl-divergence` reports.
#[derive(Clone, Debug)]
pub struct KlSummary {
    pub count: usize,
    pub ppl: Estimate,
    pub ppl_base: Estimate,
    /// Correlation of the two engines' per-token log-likelihoods.
    pub ppl_correlation: f64,
    pub ln_ppl_ratio: Estimate,
    pub kld_mean: Estimate,
    pub kld_max: f64,
    pub kld_median: f64,
    /// KL divergence at the 99th and 99.9th percentiles.
    pub kld_p99: f64,
    pub kld_p999: f64,
    pub p_diff_mean: Estimate,
    pub p_diff_max_abs: f64,
    pub p_diff_rms: Estimate,
    /// Fraction of positions where both engines rank the same token first.
    pub same_top: Estimate,
}

/// Mean and standard error from sums, as llama.cpp computes them (no error below 11 values).
fn mean_and_error(sum: f64, sum2: f64, count: usize) -> Estimate {
    if count == 0 {
        return Estimate {
            value: 0.0,
            error: 0.0,
        };
    }
    let n = count as f64;
    let value = sum / n;
    let var = sum2 / n - value * value;
    let error = if var > 0.0 && count > 10 {
        (var / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Estimate { value, error }
}

/// Linear interpolation between the ranks of sorted `values`.
fn percentile(values: &[f32], fraction: f64) -> f64 {
    let p = fraction * (values.len() - 1) as f64;
    let (i, frac) = (p as usize, p.fract());
    let next = values[(i + 1).min(values.len() - 1)] as f64;
    (1.0 - frac) * values[i] as f64 + frac * next
}

impl KlStats {
    /// Compares one position's logits with the base's stored log-probabilities; `token` is
    /// the token that followed.
    pub fn add(&mut self, logits: &[f32], base: &StoredRow, token: u32) {
        let (mut max, mut top) = (logits[0], 0);
        for (i, &l) in logits.iter().enumerate().skip(1) {
            if l > max {
                (max, top) = (l, i);
            }
        }
        let sum_exp: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
        let log_norm = max + sum_exp.ln() as f32;
        let nll = log_norm - logits[token as usize];
        let nll_base = -base.log_prob(token as usize);
        self.nll.add(nll as f64);
        self.nll_base.add(nll_base as f64);
        self.sum_nll_nll_base += nll as f64 * nll_base as f64;

        let (mut top_base, mut top_base_lp) = (0, f32::NEG_INFINITY);
        let mut kld = 0f64;
        for (i, &l) in logits.iter().enumerate().take(base.len()) {
            let lp_base = base.log_prob(i);
            if i == 0 || lp_base > top_base_lp {
                (top_base, top_base_lp) = (i, lp_base);
            }
            // As llama.cpp: tokens the base gives less than e^-16 add nothing.
            if lp_base > -16.0 {
                kld += lp_base.exp() as f64 * (lp_base - (l - log_norm)) as f64;
            }
        }
        self.kld.add(kld);
        self.same_top += usize::from(top == top_base);
        let p_diff = (-nll).exp() - (-nll_base).exp();
        self.p_diff.add(p_diff as f64);
        self.sum_p_diff4 += (p_diff as f64).powi(4);
        self.max_abs_p_diff = self.max_abs_p_diff.max(p_diff.abs());
        self.klds.push(kld as f32);
        self.p_diffs.push(p_diff);
    }

    pub fn count(&self) -> usize {
        self.klds.len()
    }

    /// Mean KL divergence so far.
    pub fn mean_kld(&self) -> f64 {
        self.kld.sum / self.count().max(1) as f64
    }

    /// Fraction of positions so far where the two engines rank the same token first.
    pub fn same_top_fraction(&self) -> f64 {
        self.same_top as f64 / self.count().max(1) as f64
    }

    /// Perplexity of this engine and of the base so far.
    pub fn perplexities(&self) -> (f64, f64) {
        let n = self.count().max(1) as f64;
        ((self.nll.sum / n).exp(), (self.nll_base.sum / n).exp())
    }

    /// The report, or `None` before any position was added.
    pub fn summary(&self) -> Option<KlSummary> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let n = count as f64;
        let log_ppl = mean_and_error(self.nll.sum, self.nll.sum2, count);
        let log_ppl_base = mean_and_error(self.nll_base.sum, self.nll_base.sum2, count);
        let covariance = if count < 10 {
            0.0
        } else {
            (self.sum_nll_nll_base / n - log_ppl.value * log_ppl_base.value) / (n - 1.0)
        };
        let exp = |e: Estimate| Estimate {
            value: e.value.exp(),
            error: e.value.exp() * e.error,
        };
        let p_diff_mse = mean_and_error(self.p_diff.sum2, self.sum_p_diff4, count);
        let rms = p_diff_mse.value.sqrt();
        let same_top = self.same_top_fraction();
        let mut klds = self.klds.clone();
        klds.sort_by(f32::total_cmp);
        let median = if count.is_multiple_of(2) {
            0.5 * (klds[count / 2] + klds[count / 2 - 1]) as f64
        } else {
            klds[count / 2] as f64
        };
        Some(KlSummary {
            count,
            ppl: exp(log_ppl),
            ppl_base: exp(log_ppl_base),
            ppl_correlation: covariance / (log_ppl.error * log_ppl_base.error),
            ln_ppl_ratio: Estimate {
                value: log_ppl.value - log_ppl_base.value,
                error: (log_ppl.error.powi(2) + log_ppl_base.error.powi(2) - 2.0 * covariance)
                    .max(0.0)
                    .sqrt(),
            },
            kld_mean: mean_and_error(self.kld.sum, self.kld.sum2, count),
            kld_max: klds[count - 1] as f64,
            kld_median: median,
            kld_p99: percentile(&klds, 0.99),
            kld_p999: percentile(&klds, 0.999),
            p_diff_mean: mean_and_error(self.p_diff.sum, self.p_diff.sum2, count),
            p_diff_max_abs: self.max_abs_p_diff as f64,
            p_diff_rms: Estimate {
                value: rms,
                error: if rms > 0.0 {
                    0.5 / rms * p_diff_mse.error
                } else {
                    0.0
                },
            },
            same_top: Estimate {
                value: same_top,
                error: (same_top * (1.0 - same_top) / (n - 1.0).max(1.0)).sqrt(),
            },
        })
    }
}
