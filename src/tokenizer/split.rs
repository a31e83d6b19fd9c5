//! Cutting text into words with a pre-tokenizer's steps: regexes (run by Oniguruma, through
//! the `tokenizers` crate) and llama.cpp's one hand-written digit splitter.
//!
//! llama.cpp matches its regexes on a stand-in for the text, and this module reproduces
//! what that changes: every non-ASCII whitespace character is seen as `\v` (so a literal
//! range such as CJK's `ࠀ-一` does not match U+2028 or U+3000), letters are letters
//! whatever their case category (`\p{Lu}` and `\p{Ll}` both mean `\p{L}`), and `\d` only
//! matches ASCII digits.

use super::pre::Step;
use tokenizers::utils::SysRegex;

enum Rule {
    Regex(SysRegex),
    DigitGroups,
}

/// A pre-tokenizer's compiled steps, applied one after the other.
pub(super) struct Splitter {
    rules: Vec<Rule>,
}

impl Splitter {
    /// Compiles `steps`; the error names the regex that does not compile.
    pub fn new(steps: &[Step]) -> Result<Self, String> {
        let rules = steps
            .iter()
            .map(|step| match step {
                Step::Regex(pattern) => SysRegex::new(&as_llama_cpp_reads_it(pattern))
                    .map(Rule::Regex)
                    .map_err(|e| format!("regex {pattern:?} does not compile: {e}")),
                Step::DigitGroups => Ok(Rule::DigitGroups),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// The words of `text`, in order and covering it: each step cuts every piece the
    /// previous one left. A regex cuts a piece into its matches and the runs between them;
    /// an empty match only marks a cut.
    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = Vec::new();
        if !text.is_empty() {
            pieces.push(text);
        }
        for rule in &self.rules {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                match rule {
                    Rule::Regex(regex) => cut(regex, piece, &mut next),
                    Rule::DigitGroups => cut_digit_groups(piece, &mut next),
                }
            }
            pieces = next;
        }
        pieces
    }
}

/// `pattern` with llama.cpp's category collapse: letter subcategories are letters, and
/// `\d` is an ASCII digit.
fn as_llama_cpp_reads_it(pattern: &str) -> String {
    let mut out = pattern.to_string();
    for letters in [r"\p{Lu}", r"\p{Ll}", r"\p{Lt}", r"\p{Lm}", r"\p{Lo}"] {
        out = out.replace(letters, r"\p{L}");
    }
    out.replace(r"\d", "[0-9]")
}

fn is_non_ascii_space(c: char) -> bool {
    !c.is_ascii() && c.is_whitespace()
}

fn cut<'t>(regex: &SysRegex, piece: &'t str, out: &mut Vec<&'t str>) {
    if !piece.chars().any(is_non_ascii_space) {
        return cut_at_matches(regex.find_iter(piece), piece, out);
    }
    // Match on a copy with `\v` for each non-ASCII space; `origin[i]` is where byte `i` of
    // the copy came from.
    let mut seen = String::with_capacity(piece.len());
    let mut origin = Vec::with_capacity(piece.len() + 1);
    for (at, c) in piece.char_indices() {
        let c = if is_non_ascii_space(c) { '\u{b}' } else { c };
        origin.extend((at..).take(c.len_utf8()));
        seen.push(c);
    }
    origin.push(piece.len());
    let matches = regex
        .find_iter(&seen)
        .map(|(start, end)| (origin[start], origin[end]));
    cut_at_matches(matches, piece, out);
}

fn cut_at_matches<'t>(
    matches: impl Iterator<Item = (usize, usize)>,
    piece: &'t str,
    out: &mut Vec<&'t str>,
) {
    let mut rest = 0;
    for (start, end) in matches {
        if start > rest {
            out.push(&piece[rest..start]);
        }
        if end > start {
            out.push(&piece[start..end]);
        }
        rest = rest.max(end);
    }
    if rest < piece.len() {
        out.push(&piece[rest..]);
    }
}

/// llama.cpp's AFMoE digit splitter: a run of digits (`\p{N}`) is cut into its leading one
/// or two digits, if the length is not a multiple of three, then threes. The text before a
/// run stays joined to the run's first group (llama.cpp's code emits it so; later steps cut
/// it off again).
fn cut_digit_groups<'t>(piece: &'t str, out: &mut Vec<&'t str>) {
    let chars: Vec<(usize, char)> = piece.char_indices().collect();
    let byte_at = |i: usize| chars.get(i).map_or(piece.len(), |&(at, _)| at);
    let mut emitted = 0;
    let mut emit = |end: usize, out: &mut Vec<&'t str>| {
        if end > emitted {
            out.push(&piece[emitted..end]);
            emitted = end;
        }
    };
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].1.is_numeric() {
            i += 1;
            continue;
        }
        let run = i;
        while i < chars.len() && chars[i].1.is_numeric() {
            i += 1;
        }
        let mut group_end = run + (i - run) % 3;
        if group_end > run {
            emit(byte_at(group_end), out);
        }
        while group_end < i {
            group_end += 3;
            emit(byte_at(group_end), out);
        }
    }
    emit(piece.len(), out);
}
