//! Continuous batching on the model's thread: up to `n_seq` requests hold a cache slot each;
//! every step runs one token of every answer being written plus, in the rows left, chunks of
//! the prompts waiting (oldest first), so that reading new prompts never stalls the streams
//! already running.

use super::grammar::Grammar;
use super::metrics::Metrics;
use super::wire::Settings;
use crate::backend::{Backend, BackendError};
use crate::generate::{Sampler, StopStrings};
use crate::model::{ModelError, SeqChunk, Transformer};
use crate::tokenizer::{DecodeOptions, StreamDecoder, Tokenizer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// What the scheduler needs of a loaded model: object-safe, so that the server does not
/// depend on the backend's type.
pub trait StepModel {
    fn step(&mut self, chunks: &[SeqChunk]) -> Result<Vec<Vec<f32>>, ModelError>;
    fn truncate_slot(&mut self, slot: usize, n: usize);
    fn limits(&self) -> Limits;
}

impl<B: Backend> StepModel for Transformer<B> {
    fn step(&mut self, chunks: &[SeqChunk]) -> Result<Vec<Vec<f32>>, ModelError> {
        Transformer::step(self, chunks)
    }

    fn truncate_slot(&mut self, slot: usize, n: usize) {
        Transformer::truncate_slot(self, slot, n)
    }

    fn limits(&self) -> Limits {
        Limits {
            n_ctx: self.n_ctx(),
            n_batch: self.n_batch(),
            n_seq: self.n_seq(),
        }
    }
}

/// The sizes a loaded model was given.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Tokens of each slot's context.
    pub n_ctx: usize,
    /// Rows of one step.
    pub n_batch: usize,
    /// Slots: requests served at once.
    pub n_seq: usize,
}

/// A request for the model: its prompt's tokens, how to answer, and where the answer goes.
pub struct Job {
    pub prompt: Vec<u32>,
    pub settings: Settings,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
}

/// What the model thread sends back to a request's handler.
#[derive(Debug)]
pub enum Event {
    /// Text of the answer, with the log-probabilities of the tokens it completes where they
    /// were asked for (text held back for a possible stop string comes later, with its own).
    Text(String, Vec<TokenLogprob>),
    Done(Finish),
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn, or a stop string came.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
}

impl FinishReason {
    pub fn name(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// From arrival to the first token, and from there to the end.
    pub prompt_time: Duration,
    pub gen_time: Duration,
}

/// A token's log-probability under the model (before any sampling setting), with the most
/// likely alternatives, most likely first.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    fn new(logits: &[f32], token: u32, top: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_z = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if top > 0 && top < ids.len() {
            ids.select_nth_unstable_by(top - 1, by_logit);
        }
        ids.truncate(top);
        ids.sort_by(by_logit);
        Self {
            token,
            logprob: logits[token as usize] - log_z,
            top: ids
                .into_iter()
                .map(|t| (t, logits[t as usize] - log_z))
                .collect(),
        }
    }
}

/// A request holding a slot.
struct Active<'t> {
    job: Job,
    sampler: Sampler,
    decoder: StreamDecoder<'t>,
    stops: StopStrings,
    /// Prompt tokens in the slot's cache.
    prompt_done: usize,
    /// The token picked last, to run in the next step.
    next: Option<u32>,
    generated: usize,
    first_token: Option<Instant>,
    /// Log-probabilities of tokens whose text was not sent yet.
    logprobs: Vec<TokenLogprob>,
    /// The JSON the answer must be, where `response_format` asks for one.
    grammar: Option<Grammar>,
}

#[derive(Default)]
struct Slot<'t> {
    /// The tokens in this slot's cache, kept after a request ends for the next one to reuse.
    cached: Vec<u32>,
    active: Option<Active<'t>>,
}

pub struct Scheduler<'t> {
    tokenizer: &'t Tokenizer,
    /// Each token's text, for grammars; None where it is a control token or not whole
    /// UTF-8. Made when a request first needs it.
    texts: Option<Vec<Option<String>>>,
    limits: Limits,
    metrics: &'t Metrics,
    slots: Vec<Slot<'t>>,
    /// Set when the device is lost: nothing more can run.
    lost: Option<String>,
}

impl<'t> Scheduler<'t> {
    pub fn new(tokenizer: &'t Tokenizer, limits: Limits, metrics: &'t Metrics) -> Self {
        let slots = (0..limits.n_seq).map(|_| Slot::default()).collect();
        Self {
            tokenizer,
            texts: None,
            limits,
            metrics,
            slots,
            lost: None,
        }
    }

    /// Serves jobs until `stop` is set, the queue closes while nothing runs, or the device
    /// is lost (whose error it returns); requests still running then are answered with an
    /// error.
    pub fn run(
        &mut self,
        model: &mut dyn StepModel,
        jobs: &Receiver<Job>,
        stop: &AtomicBool,
    ) -> Option<String> {
        while !stop.load(Ordering::Relaxed) && self.lost.is_none() {
            self.drop_cancelled();
            if !self.admit(model, jobs) {
                break;
            }
            if self.active() > 0 {
                self.step(model);
            }
        }
        let why = self
            .lost
            .as_deref()
            .unwrap_or("the server is shutting down");
        for slot in &mut self.slots {
            if let Some(a) = slot.active.take() {
                let _ = a.job.events.send(Event::Failed(why.to_string()));
            }
        }
        self.lost.take()
    }

    fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.active.is_some()).count()
    }

    /// Frees the slots of requests whose client went away.
    fn drop_cancelled(&mut self) {
        for slot in &mut self.slots {
            if slot
                .active
                .as_ref()
                .is_some_and(|a| a.job.events.is_closed())
            {
                slot.active = None;
                Metrics::add(&self.metrics.cancelled, 1);
            }
        }
        self.metrics
            .active
            .store(self.active() as u64, Ordering::Relaxed);
    }

    /// Gives waiting jobs the free slots, waiting a little for one when nothing runs;
    /// false once the queue is closed and nothing runs.
    fn admit(&mut self, model: &mut dyn StepModel, jobs: &Receiver<Job>) -> bool {
        while self.slots.iter().any(|s| s.active.is_none()) {
            let job = if self.active() == 0 {
                match jobs.recv_timeout(Duration::from_millis(100)) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => return true,
                    Err(RecvTimeoutError::Disconnected) => return false,
                }
            } else {
                match jobs.try_recv() {
                    Ok(job) => job,
                    // Closed or not, the running requests go on.
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return true,
                }
            };
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            self.start(model, job);
        }
        true
    }

    /// Puts `job` in the free slot whose cache shares the longest prefix with its prompt,
    /// keeping that prefix.
    fn start(&mut self, model: &mut dyn StepModel, job: Job) {
        if job.events.is_closed() {
            // Its client went away while it waited.
            Metrics::add(&self.metrics.cancelled, 1);
            return;
        }
        if job.prompt.is_empty() || job.prompt.len() > self.limits.n_ctx {
            let why = format!(
                "a prompt of {} tokens does not fit a context of {}",
                job.prompt.len(),
                self.limits.n_ctx
            );
            Metrics::add(&self.metrics.failed, 1);
            let _ = job.events.send(Event::Failed(why));
            return;
        }
        let (index, common) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active.is_none())
            .map(|(i, s)| (i, common_prefix(&s.cached, &job.prompt)))
            .max_by_key(|&(i, common)| (common, std::cmp::Reverse(i)))
            .expect("called with a free slot");
        // The last prompt token always runs, for its logits.
        let reuse = common.min(job.prompt.len() - 1);
        model.truncate_slot(index, reuse);
        let slot = &mut self.slots[index];
        slot.cached.truncate(reuse);
        let mut sampler = Sampler::new(job.settings.sampler.clone());
        job.prompt.iter().for_each(|&t| sampler.accept(t));
        let grammar = job.settings.grammar.clone().map(Grammar::new);
        let decode_options = DecodeOptions {
            show_special: job.settings.show_special,
            ..DecodeOptions::default()
        };
        slot.active = Some(Active {
            stops: StopStrings::new(job.settings.stops.clone()),
            job,
            sampler,
            decoder: StreamDecoder::new(self.tokenizer, decode_options),
            prompt_done: reuse,
            next: None,
            generated: 0,
            first_token: None,
            logprobs: Vec::new(),
            grammar,
        });
    }

    /// One forward step: a row for each answer being written, and in the rows left, chunks of
    /// the prompts that waited longest.
    fn step(&mut self, model: &mut dyn StepModel) {
        let decode: Vec<(usize, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.active.as_ref()?.next?)))
            .collect();
        let prefill = self.prefill_chunks(self.limits.n_batch.saturating_sub(decode.len()));
        let mut chunks: Vec<SeqChunk> = decode
            .iter()
            .map(|(slot, token)| SeqChunk {
                slot: *slot,
                tokens: std::slice::from_ref(token),
                want_logits: true,
            })
            .collect();
        chunks.extend(prefill.iter().map(|(slot, tokens, want_logits)| SeqChunk {
            slot: *slot,
            tokens,
            want_logits: *want_logits,
        }));
        if chunks.is_empty() {
            return;
        }
        let started = Instant::now();
        let result = model.step(&chunks);
        let rows = chunks.iter().map(|c| c.tokens.len()).sum();
        self.metrics.step(rows, decode.len(), started.elapsed());
        let logits = match result {
            Ok(logits) => logits,
            Err(e) => return self.fail(&chunks, &e),
        };
        let wanting: Vec<usize> = chunks
            .iter()
            .filter(|c| c.want_logits)
            .map(|c| c.slot)
            .collect();
        for chunk in &chunks {
            let slot = &mut self.slots[chunk.slot];
            slot.cached.extend_from_slice(chunk.tokens);
            let active = slot.active.as_mut().expect("stepped slots are active");
            if active.next.take().is_none() {
                active.prompt_done += chunk.tokens.len();
                Metrics::add(&self.metrics.prompt_tokens, chunk.tokens.len());
            }
        }
        for (slot, mut logits) in wanting.into_iter().zip(logits) {
            self.pick(slot, &mut logits);
        }
    }

    /// Chunks of the prompts still to be read, those that waited longest first, of at most
    /// `room` tokens in all: each chunk's slot, its tokens, and whether it ends its prompt.
    fn prefill_chunks(&self, mut room: usize) -> Vec<(usize, Vec<u32>, bool)> {
        let mut waiting: Vec<(usize, &Active)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.active.as_ref()?)))
            .filter(|(_, a)| a.prompt_done < a.job.prompt.len())
            .collect();
        waiting.sort_by_key(|(_, a)| a.job.arrived);
        let mut chunks = Vec::new();
        for (slot, a) in waiting {
            if room == 0 {
                break;
            }
            let prompt = &a.job.prompt;
            let end = prompt.len().min(a.prompt_done + room);
            room -= end - a.prompt_done;
            chunks.push((
                slot,
                prompt[a.prompt_done..end].to_vec(),
                end == prompt.len(),
            ));
        }
        chunks
    }

    /// A step failed: its requests fail, their slots' caches are forgotten, the rest go on
    /// (unless the device is lost).
    fn fail(&mut self, chunks: &[SeqChunk], error: &ModelError) {
        if let ModelError::Backend(BackendError::DeviceLost { .. }) = error {
            self.lost = Some(error.to_string());
        }
        for chunk in chunks {
            let slot = &mut self.slots[chunk.slot];
            slot.cached.clear();
            if let Some(a) = slot.active.take() {
                Metrics::add(&self.metrics.failed, 1);
                let _ = a.job.events.send(Event::Failed(error.to_string()));
            }
        }
    }

    /// Picks the next token of the answer in `slot` from its logits, and sends its text.
    fn pick(&mut self, slot: usize, logits: &mut [f32]) {
        let n_ctx = self.limits.n_ctx;
        let (tokenizer, metrics) = (self.tokenizer, self.metrics);
        if self.slots[slot]
            .active
            .as_ref()
            .is_some_and(|a| a.grammar.is_some())
            && self.texts.is_none()
        {
            self.texts = Some(token_texts(tokenizer));
        }
        let texts = self.texts.as_deref().unwrap_or_default();
        let s = &mut self.slots[slot];
        let a = s.active.as_mut().expect("picked slots are active");
        // Of the model's distribution, so from the logits before sampling adjusts them.
        let wanted = a.job.settings.logprobs;
        let raw = wanted.map(|_| logits.to_vec());
        if let Some(grammar) = &a.grammar {
            if !mask(grammar, texts, tokenizer, logits) {
                // No token can go on: the grammar is at a dead end.
                return self.finish(slot, FinishReason::Stop, true);
            }
        }
        let token = a.sampler.sample(logits);
        if a.first_token.is_none() {
            a.first_token = Some(Instant::now());
            metrics.first_token(a.job.arrived.elapsed());
        }
        if tokenizer.is_stop(token) {
            return self.finish(slot, FinishReason::Stop, true);
        }
        a.generated += 1;
        Metrics::add(&metrics.generated_tokens, 1);
        a.sampler.accept(token);
        if let (Some(grammar), Some(Some(text))) = (&mut a.grammar, texts.get(token as usize)) {
            grammar.feed_str(text);
        }
        if let (Some(top), Some(raw)) = (wanted, raw) {
            a.logprobs.push(TokenLogprob::new(&raw, token, top));
        }
        let (ready, hit) = a.stops.feed(&a.decoder.push(token));
        if !ready.is_empty() {
            let logprobs = std::mem::take(&mut a.logprobs);
            let _ = a.job.events.send(Event::Text(ready, logprobs));
        }
        if hit {
            return self.finish(slot, FinishReason::Stop, false);
        }
        let at_max = a.job.settings.max_tokens.is_some_and(|m| a.generated >= m);
        if at_max || s.cached.len() >= n_ctx {
            return self.finish(slot, FinishReason::Length, true);
        }
        a.next = Some(token);
    }

    /// Ends the request in `slot`, sending what text is left (unless a stop string cut it)
    /// and its usage; the slot is free at once.
    fn finish(&mut self, slot: usize, reason: FinishReason, flush: bool) {
        let a = self.slots[slot]
            .active
            .take()
            .expect("finished slots are active");
        let mut stops = a.stops;
        let mut rest = String::new();
        if flush {
            rest = stops.feed(&a.decoder.finish()).0;
            rest.push_str(&stops.flush());
        }
        if !rest.is_empty() || !a.logprobs.is_empty() {
            let _ = a.job.events.send(Event::Text(rest, a.logprobs));
        }
        let first = a.first_token.unwrap_or_else(Instant::now);
        let finish = Finish {
            reason,
            prompt_tokens: a.job.prompt.len(),
            completion_tokens: a.generated,
            prompt_time: first - a.job.arrived,
            gen_time: first.elapsed(),
        };
        // Counted first: a client that reads /metrics after its answer sees it counted.
        Metrics::add(&self.metrics.completed, 1);
        let _ = a.job.events.send(Event::Done(finish));
    }
}

/// Each token's text as a grammar reads it.
fn token_texts(tokenizer: &Tokenizer) -> Vec<Option<String>> {
    (0..tokenizer.vocab_size() as u32)
        .map(|id| match tokenizer.is_control(id) {
            true => None,
            false => std::str::from_utf8(tokenizer.piece(id))
                .ok()
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        })
        .collect()
}

/// Bans the tokens that would break the grammar (and the end of the turn before the value
/// is whole); false when none is left.
fn mask(
    grammar: &Grammar,
    texts: &[Option<String>],
    tokenizer: &Tokenizer,
    logits: &mut [f32],
) -> bool {
    let complete = grammar.complete();
    // Most tokens fail on their first character: try each character once.
    let mut first_ok: std::collections::HashMap<char, bool> = Default::default();
    let mut takes = |text: &str| {
        let c = text.chars().next().expect("token texts are not empty");
        let first = *first_ok
            .entry(c)
            .or_insert_with(|| grammar.clone().feed_str(&text[..c.len_utf8()]));
        first && grammar.clone().feed_str(text)
    };
    let mut any = false;
    for (id, logit) in logits.iter_mut().enumerate() {
        let ok = match texts.get(id) {
            _ if tokenizer.is_stop(id as u32) => complete,
            Some(Some(text)) => takes(text),
            _ => false,
        };
        match ok {
            true => any = true,
            false => *logit = f32::NEG_INFINITY,
        }
    }
    any
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;
    use crate::sampling::SamplerConfig;
    use crate::synth::{preset, write_model, Mix};
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    /// A model whose steps fail as `errors` says, popped one per step (None: the step runs),
    /// and favour token 7 when they run; it keeps each step's chunks as (slot, tokens).
    struct Scripted {
        errors: Vec<Option<BackendError>>,
        n_vocab: usize,
        steps: Vec<Vec<(usize, usize)>>,
    }

    impl StepModel for Scripted {
        fn step(&mut self, chunks: &[SeqChunk]) -> Result<Vec<Vec<f32>>, ModelError> {
            self.steps
                .push(chunks.iter().map(|c| (c.slot, c.tokens.len())).collect());
            if let Some(Some(e)) = self.errors.pop() {
                return Err(e.into());
            }
            let mut logits = vec![0.0; self.n_vocab];
            logits[7] = 10.0;
            Ok(chunks
                .iter()
                .filter(|c| c.want_logits)
                .map(|_| logits.clone())
                .collect())
        }

        fn truncate_slot(&mut self, _: usize, _: usize) {}

        fn limits(&self) -> Limits {
            Limits {
                n_ctx: 64,
                n_batch: 16,
                n_seq: 2,
            }
        }
    }

    fn tokenizer() -> Tokenizer {
        // One file per call: the tests run side by side.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, Ordering::Relaxed);
        let name = format!("vibrant-scheduler-{}-{call}.gguf", std::process::id());
        let path = std::env::temp_dir().join(name);
        write_model(preset("llama-tiny").unwrap(), Mix::F16, 1, &path).unwrap();
        let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
        let _ = std::fs::remove_file(&path);
        tokenizer
    }

    fn job(max_tokens: usize) -> (Job, UnboundedReceiver<Event>) {
        let (events, receiver) = unbounded_channel();
        let settings = Settings {
            sampler: SamplerConfig::greedy(),
            max_tokens: Some(max_tokens),
            stops: Vec::new(),
            logprobs: None,
            grammar: None,
            show_special: false,
        };
        let job = Job {
            prompt: vec![1, 2, 3],
            settings,
            events,
            arrived: Instant::now(),
        };
        (job, receiver)
    }

    fn outcome(receiver: &mut UnboundedReceiver<Event>) -> Event {
        std::iter::from_fn(|| receiver.try_recv().ok())
            .find(|e| !matches!(e, Event::Text(..)))
            .expect("the request ended")
    }

    #[test]
    fn a_failed_step_fails_its_requests_and_a_lost_device_stops_the_scheduler() {
        let tokenizer = tokenizer();
        let metrics = Metrics::default();
        let gpu_error = BackendError::Gpu {
            stage: "a step".into(),
            message: "out of bounds".into(),
        };
        let lost = BackendError::DeviceLost {
            stage: "a step".into(),
            reason: "unplugged".into(),
        };
        // Popped from the end: the first step fails, the next two run, the fourth finds
        // the device lost.
        let mut model = Scripted {
            errors: vec![Some(lost), None, None, Some(gpu_error)],
            n_vocab: tokenizer.vocab_size(),
            steps: Vec::new(),
        };
        let mut scheduler = Scheduler::new(&tokenizer, model.limits(), &metrics);
        let (jobs_tx, jobs) = std::sync::mpsc::sync_channel(4);
        let (first, mut first_events) = job(2);
        jobs_tx.send(first).unwrap();
        metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        scheduler.drop_cancelled();
        assert!(scheduler.admit(&mut model, &jobs));
        scheduler.step(&mut model);
        assert!(
            matches!(outcome(&mut first_events), Event::Failed(e) if e.contains("out of bounds"))
        );
        assert_eq!(scheduler.active(), 0, "the failed request's slot is free");

        let (second, mut second_events) = job(2);
        jobs_tx.send(second).unwrap();
        metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        assert!(scheduler.admit(&mut model, &jobs));
        scheduler.step(&mut model);
        scheduler.step(&mut model);
        match outcome(&mut second_events) {
            Event::Done(finish) => assert_eq!(
                (finish.completion_tokens, finish.reason),
                (2, FinishReason::Length)
            ),
            other => panic!("{other:?}"),
        }

        let (third, mut third_events) = job(5);
        jobs_tx.send(third).unwrap();
        metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        let stop = AtomicBool::new(false);
        let why = scheduler.run(&mut model, &jobs, &stop);
        assert!(
            why.as_deref().is_some_and(|w| w.contains("unplugged")),
            "{why:?}"
        );
        assert!(matches!(outcome(&mut third_events), Event::Failed(e) if e.contains("unplugged")));
        assert_eq!(metrics.failed.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.completed.load(Ordering::Relaxed), 1);
    }

    /// Two prompts that arrive together are read in one step, the older one first, as far as
    /// the batch's 16 rows go; the next step decodes the first beside the rest of the second.
    #[test]
    fn prompts_waiting_together_share_a_step() {
        let tokenizer = tokenizer();
        let metrics = Metrics::default();
        let mut model = Scripted {
            errors: Vec::new(),
            n_vocab: tokenizer.vocab_size(),
            steps: Vec::new(),
        };
        let mut scheduler = Scheduler::new(&tokenizer, model.limits(), &metrics);
        let (jobs_tx, jobs) = std::sync::mpsc::sync_channel(4);
        let mut receivers = Vec::new();
        for len in [10, 9] {
            let (mut job, events) = job(2);
            job.prompt = (1..=len).collect();
            jobs_tx.send(job).unwrap();
            metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
            receivers.push(events);
        }
        assert!(scheduler.admit(&mut model, &jobs));
        scheduler.step(&mut model);
        scheduler.step(&mut model);
        assert_eq!(model.steps, [vec![(0, 10), (1, 6)], vec![(0, 1), (1, 3)]]);
    }

    #[test]
    fn logprobs_are_the_log_softmax_with_the_likeliest_first() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let lp = TokenLogprob::new(&logits, 2, 3);
        let log_z = logits.iter().map(|l| l.exp()).sum::<f32>().ln();
        assert!((lp.logprob - (2.0 - log_z)).abs() < 1e-6);
        // The tie between 1 and 3 keeps the lower id first.
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2]);
        assert!((lp.top[0].1 - (3.0 - log_z)).abs() < 1e-6);
        assert!(TokenLogprob::new(&logits, 0, 0).top.is_empty());
    }
}
