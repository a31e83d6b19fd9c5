//! Ranked BPE merges applied to one word, as llama.cpp does: the lowest-ranked adjacent pair
//! merges first, the leftmost of equal ranks first, until no pair of the word is a merge.

use super::hash::FastMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// `tokenizer.ggml.merges` as a pair → (rank, merged token) map over token ids.
pub(super) struct Merges {
    pairs: FastMap<(u32, u32), (u32, u32)>,
}

/// A run of the word: a token, or a character outside the vocabulary (`id` is `None`).
struct Symbol {
    start: usize,
    end: usize,
    id: Option<u32>,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge: rank, then left position (the heap pops the smallest), and the ids
/// the two symbols had, so that a pair one of whose sides has changed since is skipped.
type Candidate = Reverse<(u32, usize, usize, u32, u32)>;

impl Merges {
    /// Builds the map from "left right" entries, highest priority first. Each side and their
    /// concatenation must be tokens; the error names the entry. A repeated pair keeps its
    /// first rank, as in llama.cpp.
    pub fn new<'m>(
        entries: &[(&'m str, &'m str)],
        ids: &FastMap<String, u32>,
    ) -> Result<Self, String> {
        let mut pairs = FastMap::with_capacity_and_hasher(entries.len(), Default::default());
        let mut joined = String::new();
        for (rank, &(left, right)) in (0u32..).zip(entries) {
            let id = |text: &str| {
                ids.get(text).copied().ok_or_else(|| {
                    format!("entry {rank} \"{left} {right}\": {text:?} is not a token")
                })
            };
            let pair = (id(left)?, id(right)?);
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let merged = id(&joined)?;
            pairs.entry(pair).or_insert((rank, merged));
        }
        Ok(Self { pairs })
    }

    /// Merges the characters of `word` and appends the resulting runs to `out`, each with
    /// its token id (`None` for a character outside the vocabulary).
    pub fn apply<'w>(
        &self,
        word: &'w str,
        ids: &FastMap<String, u32>,
        out: &mut Vec<(&'w str, Option<u32>)>,
    ) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(word.len());
        for (start, c) in word.char_indices() {
            let end = start + c.len_utf8();
            let index = symbols.len();
            symbols.push(Symbol {
                start,
                end,
                id: ids.get(&word[start..end]).copied(),
                prev: index.checked_sub(1),
                next: (end < word.len()).then_some(index + 1),
            });
        }
        let mut queue = BinaryHeap::new();
        for left in 1..symbols.len() {
            self.push_candidate(&symbols, Some(left - 1), Some(left), &mut queue);
        }
        while let Some(Reverse((_, left, right, left_id, right_id))) = queue.pop() {
            let current = (symbols[left].id, symbols[right].id, symbols[left].next);
            if current != (Some(left_id), Some(right_id), Some(right)) {
                continue;
            }
            let (_, merged) = self.pairs[&(left_id, right_id)];
            let next = symbols[right].next;
            symbols[left].end = symbols[right].end;
            symbols[left].id = Some(merged);
            symbols[left].next = next;
            symbols[right].id = None;
            symbols[right].next = None;
            if let Some(next) = next {
                symbols[next].prev = Some(left);
            }
            self.push_candidate(&symbols, symbols[left].prev, Some(left), &mut queue);
            self.push_candidate(&symbols, Some(left), next, &mut queue);
        }
        let mut at = (!symbols.is_empty()).then_some(0);
        while let Some(i) = at {
            let symbol = &symbols[i];
            out.push((&word[symbol.start..symbol.end], symbol.id));
            at = symbol.next;
        }
    }

    fn push_candidate(
        &self,
        symbols: &[Symbol],
        left: Option<usize>,
        right: Option<usize>,
        queue: &mut BinaryHeap<Candidate>,
    ) {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let (Some(left_id), Some(right_id)) = (symbols[left].id, symbols[right].id) else {
            return;
        };
        if let Some(&(rank, _)) = self.pairs.get(&(left_id, right_id)) {
            queue.push(Reverse((rank, left, right, left_id, right_id)));
        }
    }
}
