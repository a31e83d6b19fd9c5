//! The minijinja environment that stands in for transformers' Jinja2 one.

use super::{json, python, time};
use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind};

/// minijinja set up like transformers' Jinja2 environment for chat templates.
pub(super) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    // Errors are reported by line; the source dump of debug mode would only cost time.
    env.set_debug(false);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python::format_value);
    env.add_filter("tojson", json::tojson);
    env.add_filter("string", python::string_filter);
    env.add_filter("length", python::length_filter);
    env.add_filter("count", python::length_filter);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", time::strftime_now);
    env
}

/// Marks an error as coming from the template's own `raise_exception`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TemplateException(String);

fn raise_exception(message: Value) -> Result<Value, Error> {
    let message = message
        .as_str()
        .map_or_else(|| message.to_string(), str::to_string);
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(TemplateException(message)))
}

pub(super) fn raised_message(err: &Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<TemplateException>() {
            return Some(raised.0.clone());
        }
        source = e.source();
    }
    None
}

/// transformers knows a `{% generation %}…{% endgeneration %}` block that marks the
/// assistant's text and otherwise renders its body in a scope of its own; minijinja has no
/// such tag, so it becomes the equivalent `{% with %}…{% endwith %}`. Whitespace markers and
/// line numbers stay as they were.
pub(super) fn replace_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}").map(|end| end + 2) else {
            break;
        };
        let tag = &rest[start..start + len];
        out.push_str(&rest[..start]);
        let word = tag[2..len - 2]
            .trim()
            .trim_start_matches(['-', '+'])
            .trim_end_matches(['-', '+'])
            .trim();
        match word {
            "generation" => out.push_str(&tag.replacen(word, "with", 1)),
            "endgeneration" => out.push_str(&tag.replacen(word, "endwith", 1)),
            _ => out.push_str(tag),
        }
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}
