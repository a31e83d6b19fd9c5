//! User stop strings over streamed text: text that might be the start of a stop string is
//! held back until it is known not to be one.

#[derive(Clone, Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    pending: String,
}

impl StopStrings {
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Adds streamed text; returns the text safe to show, and whether a stop string was hit
    /// (the returned text then ends right before it).
    pub fn feed(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let ready = self.pending[..at].to_string();
            self.pending.clear();
            return (ready, true);
        }
        let keep = self.longest_partial_suffix();
        let split = self.pending.len() - keep;
        let ready = self.pending[..split].to_string();
        self.pending.drain(..split);
        (ready, false)
    }

    /// Whatever is still held back, once the stream has ended.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of the pending text that begins some stop string.
    fn longest_partial_suffix(&self) -> usize {
        let p = &self.pending;
        (1..=p.len())
            .rev()
            .filter(|&n| p.is_char_boundary(p.len() - n))
            .find(|&n| self.stops.iter().any(|s| s.starts_with(&p[p.len() - n..])))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopStrings::new(stops.iter().map(|s| s.to_string()));
        let mut out = String::new();
        for p in pieces {
            let (ready, hit) = s.feed(p);
            out.push_str(&ready);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&s.flush());
        (out, false)
    }

    #[test]
    fn stops_across_pieces() {
        assert_eq!(
            run(&["END"], &["abc E", "N", "D more"]),
            ("abc ".into(), true)
        );
        assert_eq!(run(&["END"], &["abc EN", "x"]), ("abc ENx".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(
            run(&["\n\n", "User:"], &["hi\n", "\nUser:"]),
            ("hi".into(), true)
        );
    }

    #[test]
    fn holds_back_only_possible_prefixes() {
        let mut s = StopStrings::new(["stop".to_string()]);
        assert_eq!(s.feed("ab st"), ("ab ".to_string(), false));
        assert_eq!(s.feed("é"), ("sté".to_string(), false));
    }
}
