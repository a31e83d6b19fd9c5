//! Where `chat` reads its turns: a line editor in a terminal (arrow keys, history within the
//! session, `"""` blocks for multi-line messages), plain lines from a pipe.

use anyhow::{Context, Result};
use rustyline::config::{Behavior, Config};
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;
use std::io::{BufRead, Lines, StdinLock};

pub enum Input {
    Text(String),
    /// End of input: Ctrl-D at the prompt, or the pipe closed.
    End,
    /// Ctrl-C at the prompt.
    Interrupted,
}

pub enum LineInput {
    Terminal(Box<DefaultEditor>),
    Pipe(Lines<StdinLock<'static>>),
}

/// Opens and closes a multi-line message, as Ollama's prompt does.
const FENCE: &str = "\"\"\"";

impl LineInput {
    pub const TERMINAL_HELP: &str = "/reset clears the conversation, /exit quits; a line \
        starting with \"\"\" opens a multi-line message and a line ending with \"\"\" closes it; \
        ↑/↓ recall earlier messages; Ctrl-C stops an answer, and at the prompt (like Ctrl-D) \
        ends the chat";

    /// The line editor installs a SIGINT handler of its own when it is made: a Ctrl-C handler
    /// that should see Ctrl-C during answers must be installed after this.
    pub fn terminal() -> Result<Self> {
        // The prompt goes to the terminal itself, so stdout holds the answers alone.
        let config = Config::builder()
            .behavior(Behavior::PreferTerm)
            .auto_add_history(false)
            .build();
        let editor = DefaultEditor::with_config(config).context("opening the line editor")?;
        Ok(Self::Terminal(Box::new(editor)))
    }

    /// Lines as they come, one message each, with no prompt and no `"""` blocks.
    pub fn pipe() -> Self {
        Self::Pipe(std::io::stdin().lock().lines())
    }

    pub fn next(&mut self) -> Result<Input> {
        match self {
            Self::Pipe(lines) => match lines.next() {
                Some(line) => Ok(Input::Text(line.context("reading standard input")?)),
                None => Ok(Input::End),
            },
            Self::Terminal(editor) => {
                let input = read_message(editor)?;
                if let Input::Text(text) = &input {
                    if !text.trim().is_empty() {
                        editor.add_history_entry(text.as_str())?;
                    }
                }
                Ok(input)
            }
        }
    }
}

fn read_message(editor: &mut DefaultEditor) -> Result<Input> {
    let mut read = |prompt: &str| match editor.readline(prompt) {
        Ok(line) => Ok(Input::Text(line)),
        Err(ReadlineError::Eof) => Ok(Input::End),
        Err(ReadlineError::Interrupted) => Ok(Input::Interrupted),
        Err(e) => Err(e).context("reading from the terminal"),
    };
    let first = match read("> ")? {
        Input::Text(line) => line,
        other => return Ok(other),
    };
    let Some(mut block) = Block::open(&first) else {
        return Ok(Input::Text(first));
    };
    while !block.closed {
        match read("... ")? {
            Input::Text(line) => block.push(&line),
            other => return Ok(other),
        }
    }
    Ok(Input::Text(block.lines.join("\n")))
}

/// A multi-line message between `"""` fences, gathered a line at a time.
#[derive(Debug, PartialEq)]
struct Block {
    lines: Vec<String>,
    closed: bool,
}

impl Block {
    /// The block `line` opens, or `None` when it is an ordinary one-line message.
    fn open(line: &str) -> Option<Self> {
        let rest = line.trim_start().strip_prefix(FENCE)?;
        let mut block = Self {
            lines: Vec::new(),
            closed: false,
        };
        if !rest.trim().is_empty() {
            block.push(rest);
        }
        Some(block)
    }

    fn push(&mut self, line: &str) {
        match line.trim_end().strip_suffix(FENCE) {
            Some(last) => {
                if !last.is_empty() {
                    self.lines.push(last.to_string());
                }
                self.closed = true;
            }
            None => self.lines.push(line.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gather(lines: &[&str]) -> Option<(String, bool)> {
        let mut block = Block::open(lines[0])?;
        for line in &lines[1..] {
            assert!(!block.closed, "read past the closing fence");
            block.push(line);
        }
        Some((block.lines.join("\n"), block.closed))
    }

    #[test]
    fn fenced_lines_make_one_message() {
        assert_eq!(gather(&["hello"]), None);
        assert_eq!(
            gather(&["say \"\"\"hi\"\"\""]),
            None,
            "a fence opens only a line"
        );
        let poem = gather(&["\"\"\"", "roses", "", "  violets", "\"\"\""]);
        assert_eq!(poem, Some(("roses\n\n  violets".into(), true)));
        let inline = gather(&["\"\"\"first", "last\"\"\""]);
        assert_eq!(inline, Some(("first\nlast".into(), true)));
        assert_eq!(gather(&["\"\"\"one\"\"\""]), Some(("one".into(), true)));
        assert_eq!(gather(&["\"\"\"\"\"\""]), Some((String::new(), true)));
        assert_eq!(gather(&["\"\"\"", "open"]), Some(("open".into(), false)));
    }
}
