//! Counters for `GET /metrics`, in Prometheus' text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    /// Whether the model's thread is serving: false before the model is loaded and after the
    /// thread ended (a panic included).
    pub model_up: AtomicBool,
    /// Requests accepted into the queue.
    pub requests: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected: AtomicU64,
    /// Requests answered with a 4xx.
    pub invalid: AtomicU64,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
    /// Prompt tokens run through the model (those reused from a slot's cache are not).
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub queue_depth: AtomicI64,
    pub active: AtomicU64,
    pub steps: AtomicU64,
    /// Rows of all steps: divided by `steps`, the mean batch size.
    pub batch_rows: AtomicU64,
    pub last_batch_rows: AtomicU64,
    pub step_micros: AtomicU64,
    pub ttft_micros: AtomicU64,
    pub ttft_count: AtomicU64,
    /// Decoded tokens per second of the last step, as f64 bits.
    pub decode_rate_bits: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Relaxed);
    }

    pub fn first_token(&self, after: Duration) {
        self.ttft_micros
            .fetch_add(after.as_micros() as u64, Relaxed);
        self.ttft_count.fetch_add(1, Relaxed);
    }

    /// A step of `rows` rows, `decoded` of them tokens of running answers, that took `took`.
    pub fn step(&self, rows: usize, decoded: usize, took: Duration) {
        self.steps.fetch_add(1, Relaxed);
        Self::add(&self.batch_rows, rows);
        self.last_batch_rows.store(rows as u64, Relaxed);
        self.step_micros.fetch_add(took.as_micros() as u64, Relaxed);
        let rate = decoded as f64 / took.as_secs_f64().max(1e-9);
        self.decode_rate_bits.store(rate.to_bits(), Relaxed);
    }

    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Relaxed);
        let micros = |c: &AtomicU64| get(c) as f64 / 1e6;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP vibrant_{name} {help}\n# TYPE vibrant_{name} {kind}\nvibrant_{name} {value}"
            );
        };
        let counters = [
            (
                "requests_total",
                "Requests accepted into the queue.",
                &self.requests,
            ),
            (
                "requests_rejected_total",
                "Requests refused with 503: the queue was full.",
                &self.rejected,
            ),
            (
                "requests_invalid_total",
                "Requests answered with a 4xx.",
                &self.invalid,
            ),
            (
                "requests_completed_total",
                "Requests answered in full.",
                &self.completed,
            ),
            (
                "requests_cancelled_total",
                "Requests whose client went away.",
                &self.cancelled,
            ),
            (
                "requests_failed_total",
                "Requests failed by a model error.",
                &self.failed,
            ),
            (
                "prompt_tokens_total",
                "Prompt tokens run through the model.",
                &self.prompt_tokens,
            ),
            (
                "generated_tokens_total",
                "Tokens generated.",
                &self.generated_tokens,
            ),
            ("steps_total", "Forward steps.", &self.steps),
            (
                "batch_rows_total",
                "Rows of all forward steps.",
                &self.batch_rows,
            ),
        ];
        for (name, help, c) in counters {
            metric(name, "counter", help, get(c).to_string());
        }
        let gauges = [
            (
                "model_up",
                "1 while the model's thread serves.",
                u8::from(self.model_up.load(Relaxed)).to_string(),
            ),
            (
                "queue_depth",
                "Requests waiting for a slot.",
                self.queue_depth.load(Relaxed).to_string(),
            ),
            (
                "requests_active",
                "Requests holding a slot.",
                get(&self.active).to_string(),
            ),
            (
                "batch_size",
                "Rows of the last forward step.",
                get(&self.last_batch_rows).to_string(),
            ),
            (
                "tokens_per_second",
                "Generated tokens per second over the last step.",
                f64::from_bits(get(&self.decode_rate_bits)).to_string(),
            ),
        ];
        for (name, help, value) in gauges {
            metric(name, "gauge", help, value);
        }
        metric(
            "step_seconds_total",
            "counter",
            "Time spent in forward steps.",
            micros(&self.step_micros).to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP vibrant_time_to_first_token_seconds From a request's arrival to its first token.\n\
             # TYPE vibrant_time_to_first_token_seconds summary\n\
             vibrant_time_to_first_token_seconds_sum {}\n\
             vibrant_time_to_first_token_seconds_count {}",
            micros(&self.ttft_micros),
            get(&self.ttft_count)
        );
        out
    }
}
