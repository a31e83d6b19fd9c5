//! `ask` and `chat`: load a model on the chosen device, then stream answers.

use super::args::{AnswerArgs, LoadArgs};
use super::line_input::{Input, LineInput};
use anyhow::{bail, Context, Result};
use std::io::{IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use vibrant::backend::Backend;
use vibrant::chat::{ChatError, ChatTemplate, Message};
use vibrant::generate::{
    GenerateOptions, Generation, Picking, Sampler, Session, StopReason, StopStrings,
};
use vibrant::gguf::GgufFile;
use vibrant::model::Transformer;
use vibrant::tokenizer::Tokenizer;

#[derive(clap::Args, Debug)]
pub struct AskArgs {
    // A subcommand's own arguments come before the groups it flattens, whose help headings
    // would otherwise carry over to them.
    /// The prompt ("-" or absent: read standard input).
    pub prompt: Option<String>,
    /// Send the prompt as it is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub answer: AnswerArgs,
}

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub answer: AnswerArgs,
}

/// A session on whichever backend was chosen, behind one object-safe face.
trait Engine {
    fn tokenize(&self, text: &str) -> Result<Vec<u32>>;
    fn generate(
        &mut self,
        prompt: &[u32],
        sampler: &mut Sampler,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation>;
    fn reset(&mut self);
    fn describe(&self) -> String;
    /// The KV cache's types and size, for --verbose.
    fn describe_cache(&self) -> String;
}

impl<B: Backend> Engine for Session<B> {
    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenize_prompt(text)?)
    }

    fn generate(
        &mut self,
        prompt: &[u32],
        sampler: &mut Sampler,
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        Ok(Session::generate(self, prompt, sampler, options, on_text)?)
    }

    fn reset(&mut self) {
        Session::reset(self)
    }

    fn describe(&self) -> String {
        self.model.backend.describe()
    }

    fn describe_cache(&self) -> String {
        let m = &self.model;
        format!(
            "KV cache: {} tokens, {}, {:.2} MiB",
            m.n_ctx(),
            m.kv_types(),
            m.kv_cache_bytes() as f64 / (1u64 << 20) as f64
        )
    }
}

struct Loaded {
    engine: Box<dyn Engine>,
    /// The chat template, or why the file has none: a base model (Gemma 3 270M) has none,
    /// and `ask` completes its prompt as it is.
    template: std::result::Result<ChatTemplate, ChatError>,
}

fn load(args: &LoadArgs, verbose: bool) -> Result<Loaded> {
    let started = Instant::now();
    let path = vibrant::catalog::resolve(&args.model.model)?;
    let file = Arc::new(GgufFile::open(&path)?);
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let template = match ChatTemplate::from_gguf(&file) {
        Err(e) if !matches!(e, ChatError::NoTemplate { .. }) => return Err(e.into()),
        template => template,
    };
    let opened = started.elapsed();
    let options = args.context.load_options();
    let device_started = Instant::now();
    let device = super::open_device(&args.device)?;
    let device_time = device_started.elapsed();
    let weights_started = Instant::now();
    let (engine, report): (Box<dyn Engine>, _) = match device {
        super::Device::Cpu(backend) => {
            let model = Transformer::load(&file, backend, &options)?;
            let report = model.backend.load_report();
            (Box::new(Session::new(model, tokenizer)), report)
        }
        super::Device::Gpu(backend) => {
            let model = Transformer::load(&file, *backend, &options)?;
            let report = model.backend.load_report();
            (Box::new(Session::new(model, tokenizer)), report)
        }
        #[cfg(feature = "cuda")]
        super::Device::Cuda(backend) => {
            let model = Transformer::load(&file, *backend, &options)?;
            let report = model.backend.load_report();
            (Box::new(Session::new(model, tokenizer)), report)
        }
    };
    if verbose {
        eprintln!(
            "loaded {} on {} in {:.2} s",
            path.display(),
            engine.describe(),
            started.elapsed().as_secs_f64()
        );
        let backend = report.map_or(String::new(), |r| format!(" ({r})"));
        eprintln!(
            "[load: file + tokenizer {:.2} s | device {:.2} s | model {:.2} s{backend}]",
            opened.as_secs_f64(),
            device_time.as_secs_f64(),
            weights_started.elapsed().as_secs_f64(),
        );
        eprintln!("{}", engine.describe_cache());
    }
    Ok(Loaded { engine, template })
}

fn read_prompt(prompt: Option<&str>) -> Result<String> {
    match prompt {
        Some("-") | None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the prompt from standard input")?;
            Ok(s)
        }
        Some(p) => Ok(p.to_string()),
    }
}

fn conversation(a: &AnswerArgs) -> Vec<Message> {
    a.system.iter().map(Message::system).collect()
}

pub fn ask(args: &AskArgs) -> Result<()> {
    let a = &args.answer;
    let mut sampler = Sampler::new(a.sampling.config()?);
    let prompt = read_prompt(args.prompt.as_deref())?;
    if prompt.trim().is_empty() {
        bail!("the prompt is empty");
    }
    let mut loaded = load(&args.load, a.verbose)?;
    let text = match &loaded.template {
        Ok(template) if !args.raw => {
            let mut messages = conversation(a);
            messages.push(Message::user(&prompt));
            template.render(&messages, true)?
        }
        _ => prompt,
    };
    let tokens = loaded.engine.tokenize(&text)?;
    let options = GenerateOptions {
        max_tokens: a.max_tokens,
        stops: StopStrings::new(a.stop.clone()),
        cancel: None,
        picking: Picking::Device,
    };
    let result = answer(
        &mut *loaded.engine,
        &tokens,
        &mut sampler,
        &options,
        a.verbose,
    )?;
    if result.stop == StopReason::ContextFull {
        bail!(
            "the context filled up ({} tokens) before the answer ended; raise --ctx-size",
            args.load.context.ctx_size
        );
    }
    Ok(())
}

/// Streams one answer to stdout and reports its speed with --verbose.
fn answer(
    engine: &mut dyn Engine,
    tokens: &[u32],
    sampler: &mut Sampler,
    options: &GenerateOptions,
    verbose: bool,
) -> Result<Generation> {
    let mut out = std::io::stdout().lock();
    let mut write_err = None;
    let result = engine.generate(tokens, sampler, options, &mut |piece| {
        if write_err.is_none() {
            if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                write_err = Some(e);
            }
        }
    })?;
    if let Some(e) = write_err {
        return Err(e).context("writing the answer to standard output");
    }
    writeln!(out)?;
    if verbose {
        eprintln!(
            "[prompt: {} tokens, {:.1} t/s, first token after {:.0} ms | answer: {} tokens, {:.1} t/s | stop: {:?}]",
            result.prompt_tokens,
            result.prompt_tokens_per_second(),
            result.prompt_time.as_secs_f64() * 1e3,
            result.tokens.len(),
            result.gen_tokens_per_second(),
            result.stop
        );
    }
    Ok(result)
}

pub fn chat(args: &ChatArgs) -> Result<()> {
    let a = &args.answer;
    let mut sampler = Sampler::new(a.sampling.config()?);
    let mut loaded = load(&args.load, a.verbose)?;
    let template = match &loaded.template {
        Ok(template) => template,
        Err(e) => bail!("{e}: chat needs one (`vibrant ask` completes a plain prompt)"),
    };
    let interactive = std::io::stdin().is_terminal();
    let mut input = if interactive {
        eprintln!(
            "vibrant chat on {}\n{}",
            loaded.engine.describe(),
            LineInput::TERMINAL_HELP
        );
        LineInput::terminal()?
    } else {
        LineInput::pipe()
    };
    let generating = Arc::new(AtomicBool::new(false));
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let (generating, cancel) = (generating.clone(), cancel.clone());
        // Ctrl-C stops the answer being written; at the prompt it ends the chat (in a
        // terminal the line editor reads it at the prompt as a key instead). Installed after
        // the line editor, which would otherwise take SIGINT for itself.
        ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                cancel.store(true, Ordering::SeqCst);
            } else {
                std::process::exit(INTERRUPTED);
            }
        })
        .context("installing the Ctrl-C handler")?;
    }
    let mut messages = conversation(a);
    loop {
        let line = match input.next()? {
            Input::Text(line) => line,
            Input::End => break,
            Input::Interrupted => std::process::exit(INTERRUPTED),
        };
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = conversation(a);
                loaded.engine.reset();
                if interactive {
                    eprintln!("(conversation cleared)");
                }
                continue;
            }
            _ => {}
        }
        messages.push(Message::user(&line));
        let tokens = loaded.engine.tokenize(&template.render(&messages, true)?)?;
        cancel.store(false, Ordering::SeqCst);
        generating.store(true, Ordering::SeqCst);
        let options = GenerateOptions {
            max_tokens: a.max_tokens,
            stops: StopStrings::new(a.stop.clone()),
            cancel: Some(&cancel),
            picking: Picking::Device,
        };
        let result = answer(
            &mut *loaded.engine,
            &tokens,
            &mut sampler,
            &options,
            a.verbose,
        );
        generating.store(false, Ordering::SeqCst);
        match result {
            Ok(generation) => {
                if generation.stop == StopReason::ContextFull {
                    eprintln!("(the context is full: the answer was cut; /reset to start over)");
                }
                if generation.stop == StopReason::Cancelled {
                    eprintln!("(stopped)");
                }
                messages.push(Message::assistant(&generation.text));
            }
            Err(e) => {
                // A turn that cannot run (too long for the context) leaves the session usable.
                eprintln!("error: {e:#}");
                messages.pop();
                if !interactive {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// The exit status of a chat ended by Ctrl-C (128 + SIGINT, as shells report it).
const INTERRUPTED: i32 = 130;
