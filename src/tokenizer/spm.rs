//! SentencePiece BPE, as llama.cpp runs it: starting from characters, the adjacent pair
//! whose concatenation is the highest-scoring token merges first (the leftmost of equal
//! scores first), until no adjacent pair forms a token.

use super::hash::FastMap;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

struct Symbol {
    start: usize,
    end: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A pair that forms a token; `size` is their joint length when it was found, so that a
/// pair one of whose sides has grown since is skipped.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

/// Appends the runs `text` merges into to `out`, each with its token id (`None` for a
/// character outside the vocabulary, which the caller spells in byte tokens).
pub(super) fn tokenize<'t>(
    text: &'t str,
    ids: &FastMap<String, u32>,
    scores: &[f32],
    out: &mut Vec<(&'t str, Option<u32>)>,
) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (start, c) in text.char_indices() {
        let end = start + c.len_utf8();
        let index = symbols.len();
        symbols.push(Symbol {
            start,
            end,
            prev: index.checked_sub(1),
            next: (end < text.len()).then_some(index + 1),
        });
    }
    let mut queue = BinaryHeap::new();
    let pair = |symbols: &[Symbol], left: Option<usize>, right: Option<usize>| {
        let (left, right) = (left?, right?);
        let joined = &text[symbols[left].start..symbols[right].end];
        let id = *ids.get(joined)?;
        Some(Bigram {
            score: scores[id as usize],
            left,
            right,
            size: joined.len(),
        })
    };
    for right in 1..symbols.len() {
        queue.extend(pair(&symbols, Some(right - 1), Some(right)));
    }
    let len = |s: &Symbol| s.end - s.start;
    while let Some(bigram) = queue.pop() {
        let (left, right) = (&symbols[bigram.left], &symbols[bigram.right]);
        if len(left) == 0 || len(right) == 0 || len(left) + len(right) != bigram.size {
            continue;
        }
        let next = right.next;
        symbols[bigram.left].end = symbols[bigram.right].end;
        symbols[bigram.left].next = next;
        symbols[bigram.right].end = symbols[bigram.right].start;
        if let Some(next) = next {
            symbols[next].prev = Some(bigram.left);
        }
        let prev = symbols[bigram.left].prev;
        queue.extend(pair(&symbols, prev, Some(bigram.left)));
        queue.extend(pair(&symbols, Some(bigram.left), next));
    }
    let mut at = (!symbols.is_empty()).then_some(0);
    while let Some(i) = at {
        let piece = &text[symbols[i].start..symbols[i].end];
        out.push((piece, ids.get(piece).copied()));
        at = symbols[i].next;
    }
}
