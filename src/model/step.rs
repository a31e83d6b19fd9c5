//! One forward step over chunks of several sequences, each in its own cache slot: the rows of
//! all of them go through every matrix product together, as a server batches its requests.

use super::{forward, ModelError, Result, Transformer};
use crate::backend::{Backend, Batch, Span};

/// One sequence's share of a [`Transformer::step`]: `tokens` appended to the sequence in
/// cache slot `slot`.
#[derive(Clone, Copy, Debug)]
pub struct SeqChunk<'a> {
    pub slot: usize,
    pub tokens: &'a [u32],
    /// Whether the step returns the logits of the chunk's last token.
    pub want_logits: bool,
}

impl<B: Backend> Transformer<B> {
    /// Runs the chunks through the model in one step, each appended to its own slot's
    /// cache, and returns the logits of the last token of each chunk that wants them, in
    /// the chunks' order. The chunks take at most `n_batch` tokens together, a slot at most
    /// once. The last-token logits of [`Self::logits`] are left undefined.
    pub fn step(&mut self, chunks: &[SeqChunk]) -> Result<Vec<Vec<f32>>> {
        self.check_step(chunks)?;
        // Rows of one-token chunks that want logits come first, so that their logits are
        // one product over the first rows of x; other chunks' last rows go one at a time.
        let mut order: Vec<usize> = (0..chunks.len()).collect();
        order.sort_by_key(|&i| !is_single(&chunks[i]));
        let tokens: Vec<u32> = order
            .iter()
            .flat_map(|&i| chunks[i].tokens.iter().copied())
            .collect();
        let spans = order.iter().map(|&i| Span {
            slot: chunks[i].slot,
            pos: self.past[chunks[i].slot],
            len: chunks[i].tokens.len(),
        });
        let batch = Batch::new(spans.collect());
        self.embed(&tokens);
        self.run_layers(&batch);

        let singles = order.iter().take_while(|&&i| is_single(&chunks[i])).count();
        let mut logits: Vec<Option<Vec<f32>>> = vec![None; chunks.len()];
        let n_vocab = self.config.n_vocab;
        for (&i, row) in order
            .iter()
            .zip(self.single_logits(singles)?.chunks(n_vocab))
        {
            logits[i] = Some(row.to_vec());
        }
        let mut row = 0;
        for &i in &order {
            let chunk = &chunks[i];
            row += chunk.tokens.len();
            if chunk.want_logits && logits[i].is_none() {
                self.last_logits_of(row);
                logits[i] = Some(self.logits()?);
            }
        }
        Ok(logits.into_iter().flatten().collect())
    }

    /// Refuses a step the activations or the cache cannot take.
    fn check_step(&self, chunks: &[SeqChunk]) -> Result<()> {
        let rows: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        if rows == 0 || rows > self.n_batch {
            return Err(ModelError::Step(format!(
                "{rows} tokens in one step (1 to the batch size {} are allowed)",
                self.n_batch
            )));
        }
        let mut seen = vec![false; self.n_seq()];
        for c in chunks {
            if c.slot >= self.n_seq() || std::mem::replace(&mut seen[c.slot], true) {
                return Err(ModelError::Step(format!(
                    "slot {} is out of range (the cache has {}) or given twice",
                    c.slot,
                    self.n_seq()
                )));
            }
            if c.tokens.is_empty() && c.want_logits {
                return Err(ModelError::Step(format!(
                    "the chunk of slot {} wants logits but has no tokens",
                    c.slot
                )));
            }
            self.check_room_of(c.slot, c.tokens.len())?;
        }
        Ok(())
    }

    /// The logits of the first `n` rows of x, read back row after row.
    fn single_logits(&mut self, n: usize) -> Result<Vec<f32>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        if self.step_logits.is_none() {
            let rows = self.n_seq();
            let t = self
                .backend
                .tensor("step_logits", rows, self.config.n_vocab)?;
            self.step_logits = Some(t);
        }
        let out = self.step_logits.as_ref().expect("allocated above");
        let (softcap, eps) = (self.spec.final_logit_softcap, self.spec.config.rms_eps);
        let b = &mut self.backend;
        forward::logits(b, &self.weights, softcap, eps, &self.acts.x, out, n);
        Ok(b.read(out, n)?)
    }

    /// The logits of row `end - 1` of x, into `acts.logits`.
    fn last_logits_of(&mut self, end: usize) {
        let (b, a) = (&mut self.backend, &self.acts);
        b.copy_row(&a.x, end - 1, &a.last);
        let (softcap, eps) = (self.spec.final_logit_softcap, self.spec.config.rms_eps);
        forward::logits(b, &self.weights, softcap, eps, &a.last, &a.logits, 1);
    }
}

/// A one-token chunk that wants its logits: a decoding sequence.
fn is_single(chunk: &SeqChunk) -> bool {
    chunk.want_logits && chunk.tokens.len() == 1
}
