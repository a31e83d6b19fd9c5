//! `tojson` as transformers defines it: Python's `json.dumps`, without Jinja2's HTML
//! escaping of `<>&'`, and taking `ensure_ascii`, `indent`, `separators` and `sort_keys`.
//! Chat templates put its output verbatim into prompts, so spacing and escapes must match
//! Python's byte for byte.

use super::python;
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// How `json.dumps` lays its output out.
#[derive(Debug)]
pub(super) struct JsonStyle {
    /// `None`: everything on one line; `Some(unit)`: one item per line, indented by `unit`
    /// per level.
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl Default for JsonStyle {
    /// transformers' defaults: `ensure_ascii=False`, Python's default separators.
    fn default() -> Self {
        Self {
            indent: None,
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            ensure_ascii: false,
            sort_keys: false,
        }
    }
}

impl JsonStyle {
    fn from_kwargs(kwargs: &Kwargs) -> Result<Self, Error> {
        let mut style = Self::default();
        if let Some(indent) = kwargs.get::<Option<Value>>("indent")? {
            style.indent = indent_unit(&indent)?;
        }
        if style.indent.is_some() {
            // Python drops the trailing space of the item separator when indenting.
            style.item_separator = ",".into();
        }
        if let Some(separators) = kwargs.get::<Option<Value>>("separators")? {
            if !separators.is_none() {
                (style.item_separator, style.key_separator) = separator_pair(&separators)?;
            }
        }
        if let Some(ensure_ascii) = kwargs.get::<Option<Value>>("ensure_ascii")? {
            style.ensure_ascii = ensure_ascii.is_true();
        }
        if let Some(sort_keys) = kwargs.get::<Option<Value>>("sort_keys")? {
            style.sort_keys = sort_keys.is_true();
        }
        kwargs.assert_all_used()?;
        Ok(style)
    }
}

/// `indent` may be a count of spaces or the indent string itself; `None` means one line.
fn indent_unit(indent: &Value) -> Result<Option<String>, Error> {
    if indent.is_none() {
        return Ok(None);
    }
    if let Some(unit) = indent.as_str() {
        return Ok(Some(unit.to_string()));
    }
    match indent.as_i64() {
        Some(n) => Ok(Some(" ".repeat(n.max(0) as usize))),
        None => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: indent must be a number or a string, not {indent}"),
        )),
    }
}

fn separator_pair(separators: &Value) -> Result<(String, String), Error> {
    let items: Vec<Value> = separators.try_iter()?.collect();
    match items.as_slice() {
        [item, key] if item.as_str().is_some() && key.as_str().is_some() => Ok((
            item.as_str().unwrap_or_default().into(),
            key.as_str().unwrap_or_default().into(),
        )),
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: separators must be two strings, not {separators}"),
        )),
    }
}

/// The `tojson` filter.
pub(super) fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let style = JsonStyle::from_kwargs(&kwargs)?;
    Ok(Value::from(dumps(value, &style)?))
}

/// Python's `json.dumps(value, ...)` with the given style.
fn dumps(value: &Value, style: &JsonStyle) -> Result<String, Error> {
    let mut out = String::new();
    Writer {
        out: &mut out,
        style,
    }
    .value(value, 0)?;
    Ok(out)
}

struct Writer<'a> {
    out: &'a mut String,
    style: &'a JsonStyle,
}

impl Writer<'_> {
    fn value(&mut self, value: &Value, depth: usize) -> Result<(), Error> {
        match value.kind() {
            ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => self.number(value),
            ValueKind::String => self.string(value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container(('[', ']'), &items, depth, |w, item, depth| {
                    w.value(item, depth)
                })?;
            }
            ValueKind::Map => {
                let mut entries = value
                    .try_iter()?
                    .map(|key| Ok((key_string(&key)?, value.get_item(&key)?)))
                    .collect::<Result<Vec<_>, Error>>()?;
                if self.style.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container(('{', '}'), &entries, depth, |w, (key, item), depth| {
                    w.string(key);
                    w.out.push_str(&w.style.key_separator);
                    w.value(item, depth)
                })?;
            }
            // Undefined, bytes, objects, invalid values: what Python could not serialize
            // either.
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "tojson: a value of type {} is not JSON serializable",
                        value.kind()
                    ),
                ))
            }
        }
        Ok(())
    }

    /// Writes `open item sep item ... close`, one item per line when indenting.
    fn container<T>(
        &mut self,
        (open, close): (char, char),
        items: &[T],
        depth: usize,
        mut write_item: impl FnMut(&mut Self, &T, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.out.push(open);
        if items.is_empty() {
            self.out.push(close);
            return Ok(());
        }
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push_str(&self.style.item_separator);
            }
            self.newline(depth + 1);
            write_item(self, item, depth + 1)?;
        }
        self.newline(depth);
        self.out.push(close);
        Ok(())
    }

    fn newline(&mut self, depth: usize) {
        if let Some(unit) = &self.style.indent {
            self.out.push('\n');
            self.out.push_str(&unit.repeat(depth));
        }
    }

    fn number(&mut self, value: &Value) {
        let text = python::number(value);
        self.out.push_str(match text.as_str() {
            "nan" => "NaN",
            "inf" => "Infinity",
            "-inf" => "-Infinity",
            finite => finite,
        });
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{8}' => self.out.push_str("\\b"),
                '\u{c}' => self.out.push_str("\\f"),
                // Python escapes all but printable ASCII under ensure_ascii, DEL included.
                c if (c as u32) < 0x20 || (self.style.ensure_ascii && (c as u32) >= 0x7f) => {
                    self.escaped(c)
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    /// `\uXXXX`, as a surrogate pair beyond the Basic Multilingual Plane.
    fn escaped(&mut self, c: char) {
        let mut units = [0u16; 2];
        for unit in c.encode_utf16(&mut units) {
            self.out.push_str(&format!("\\u{unit:04x}"));
        }
    }
}

/// JSON object keys are strings; Python converts numbers, booleans and None to text.
fn key_string(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::Number => Ok(python::number(key)),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::None => Ok("null".into()),
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: keys must be str, int, float, bool or None, not {kind}"),
        )),
    }
}
