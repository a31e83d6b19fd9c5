//! Grammar-constrained decoding for `response_format`: the answer is checked character by
//! character against a JSON value of a schema, and each step allows only the tokens whose
//! text keeps it a prefix of one. Schemas are a subset of JSON Schema (types, `properties`,
//! `required`, `additionalProperties`, `items`, `enum` and `const` of strings); a keyword that
//! constrains a value in another way (`pattern`, `minimum`, `anyOf`, `$ref`…) is refused
//! rather than ignored.

use serde_json::{Map, Value};
use std::sync::Arc;

/// Consecutive whitespace characters allowed between tokens of JSON: enough for indented
/// output, few enough that a model cannot loop on blanks.
const MAX_BLANKS: u8 = 16;
/// Characters of a number: no model loops on digits.
const MAX_NUMBER: usize = 24;

#[derive(Clone, Debug, thiserror::Error)]
#[error("response_format: {0}")]
pub struct SchemaError(String);

/// A compiled schema: nodes referring to each other by index, node 0 any value.
#[derive(Debug)]
pub struct Schema {
    nodes: Vec<Node>,
    root: usize,
}

#[derive(Debug)]
enum Node {
    Any,
    /// `props` the only keys unless `open`, where other keys take any value.
    Object {
        props: Vec<(String, usize)>,
        required: Vec<usize>,
        open: bool,
    },
    Array(usize),
    /// The JSON-escaped text of each allowed string; None: any string.
    String(Option<Vec<String>>),
    Number {
        integer: bool,
    },
    Boolean,
    Null,
    /// A list of types, told apart by their first character.
    Union(Vec<usize>),
}

const ANY: usize = 0;

impl Schema {
    /// Any JSON object (`{"type": "json_object"}`).
    pub fn any_object() -> Arc<Self> {
        let nodes = vec![
            Node::Any,
            Node::Object {
                props: Vec::new(),
                required: Vec::new(),
                open: true,
            },
        ];
        Arc::new(Self { nodes, root: 1 })
    }

    pub fn compile(schema: &Value) -> Result<Arc<Self>, SchemaError> {
        let mut s = Self {
            nodes: vec![Node::Any],
            root: 0,
        };
        s.root = s.node(schema)?;
        Ok(Arc::new(s))
    }

    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn node(&mut self, schema: &Value) -> Result<usize, SchemaError> {
        let Value::Object(map) = schema else {
            return match schema {
                Value::Bool(true) => Ok(ANY),
                _ => Err(SchemaError(format!(
                    "a schema must be an object, not {schema}"
                ))),
            };
        };
        for key in map.keys() {
            if !KNOWN.contains(&key.as_str()) && !IGNORED.contains(&key.as_str()) {
                return Err(SchemaError(format!(
                    "the schema keyword '{key}' is not supported"
                )));
            }
        }
        if let Some(choices) = map.get("enum") {
            return self.strings(choices.as_array(), "enum");
        }
        if let Some(c) = map.get("const") {
            return self.strings(Some(&vec![c.clone()]), "const");
        }
        let types: Vec<&str> = match map.get("type") {
            None if map.contains_key("properties") => vec!["object"],
            None if map.contains_key("items") => vec!["array"],
            None => return Ok(ANY),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            Some(t) => {
                return Err(SchemaError(format!(
                    "'type' must be a string or a list, not {t}"
                )))
            }
        };
        let nodes = types
            .iter()
            .map(|t| self.typed(t, map))
            .collect::<Result<Vec<_>, _>>()?;
        match nodes.as_slice() {
            [] => Err(SchemaError("'type' lists no type".into())),
            [one] => Ok(*one),
            _ => Ok(self.push(Node::Union(nodes))),
        }
    }

    fn typed(&mut self, t: &str, map: &Map<String, Value>) -> Result<usize, SchemaError> {
        let node = match t {
            "object" => self.object(map)?,
            "array" => {
                let items = match map.get("items") {
                    Some(items) => self.node(items)?,
                    None => ANY,
                };
                Node::Array(items)
            }
            "string" => Node::String(None),
            "number" => Node::Number { integer: false },
            "integer" => Node::Number { integer: true },
            "boolean" => Node::Boolean,
            "null" => Node::Null,
            other => return Err(SchemaError(format!("unknown type '{other}'"))),
        };
        Ok(self.push(node))
    }

    fn object(&mut self, map: &Map<String, Value>) -> Result<Node, SchemaError> {
        let mut props = Vec::new();
        if let Some(p) = map.get("properties") {
            let p = p
                .as_object()
                .ok_or_else(|| SchemaError("'properties' must be an object".into()))?;
            for (name, schema) in p {
                props.push((escape(name), self.node(schema)?));
            }
        }
        let mut required = Vec::new();
        for name in map
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().map(escape);
            let at = props.iter().position(|(p, _)| Some(p) == name.as_ref());
            required.push(at.ok_or_else(|| {
                SchemaError(format!(
                    "'required' names {name:?}, which 'properties' lacks"
                ))
            })?);
        }
        let open = match map.get("additionalProperties") {
            Some(Value::Bool(b)) => *b,
            None => props.is_empty(),
            Some(_) => {
                return Err(SchemaError(
                    "'additionalProperties' other than true or false is not supported".into(),
                ))
            }
        };
        Ok(Node::Object {
            props,
            required,
            open,
        })
    }

    fn strings(&mut self, choices: Option<&Vec<Value>>, what: &str) -> Result<usize, SchemaError> {
        let choices = choices
            .ok_or_else(|| SchemaError(format!("'{what}' must be a list")))?
            .iter()
            .map(|c| c.as_str().map(escape))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                SchemaError(format!(
                    "'{what}' of values other than strings is not supported"
                ))
            })?;
        Ok(self.push(Node::String(Some(choices))))
    }
}

/// Keywords that constrain values as this module enforces them.
const KNOWN: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
];
/// Keywords that only describe.
const IGNORED: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "strict",
];

/// A string's text as it stands between the quotes of its JSON.
fn escape(s: &str) -> String {
    let quoted = Value::String(s.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// Where a string's text goes once it closes.
#[derive(Clone, Debug)]
enum StrRole {
    /// A value of this node.
    Value(usize),
    /// A key of the object below it on the stack.
    Key,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Obj {
    /// After `{`: a key or `}`.
    Start,
    /// After `,`: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// Its value is being read.
    Value,
    /// After a value: `,` or `}`.
    After,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Arr {
    Start,
    Value,
    After,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    fn complete(self) -> bool {
        matches!(self, Self::Zero | Self::Int | Self::Frac | Self::Exp)
    }

    fn next(self, c: char, integer: bool) -> Option<Self> {
        let digit = c.is_ascii_digit();
        Some(match (self, c) {
            (Self::Minus, '0') => Self::Zero,
            (Self::Minus, _) if digit => Self::Int,
            (Self::Int, _) if digit => Self::Int,
            (Self::Zero | Self::Int, '.') if !integer => Self::Dot,
            (Self::Dot | Self::Frac, _) if digit => Self::Frac,
            (Self::Zero | Self::Int | Self::Frac, 'e' | 'E') if !integer => Self::E,
            (Self::E, '+' | '-') => Self::ESign,
            (Self::E | Self::ESign | Self::Exp, _) if digit => Self::Exp,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
enum Frame {
    /// A value of this node is expected.
    Value(usize),
    Object {
        node: usize,
        seen: Vec<bool>,
        state: Obj,
        /// The node of the value being read.
        value: usize,
    },
    Array {
        items: usize,
        state: Arr,
    },
    Str {
        role: StrRole,
        text: String,
        /// Inside an escape: 1 right after `\`, then 2 + the hex digits still due after `\u`.
        escape: u8,
    },
    Number {
        integer: bool,
        state: Num,
        len: usize,
    },
    Literal(&'static str),
}

/// A JSON value of a schema being written: which characters may come next.
#[derive(Clone, Debug)]
pub struct Grammar {
    schema: Arc<Schema>,
    stack: Vec<Frame>,
    blanks: u8,
}

impl Grammar {
    pub fn new(schema: Arc<Schema>) -> Self {
        let root = schema.root;
        Self {
            schema,
            stack: vec![Frame::Value(root)],
            blanks: 0,
        }
    }

    /// Whether the text written so far is a whole value.
    pub fn complete(&self) -> bool {
        match self.stack.as_slice() {
            [] => true,
            [Frame::Number { state, .. }] => state.complete(),
            _ => false,
        }
    }

    /// Takes `text` if it keeps the output a prefix of a value of the schema.
    pub fn feed_str(&mut self, text: &str) -> bool {
        text.chars().all(|c| self.feed(c))
    }

    fn blank(&mut self) -> bool {
        self.blanks += 1;
        self.blanks <= MAX_BLANKS
    }

    fn feed(&mut self, c: char) -> bool {
        let blank = matches!(c, ' ' | '\n' | '\t' | '\r');
        let in_token = matches!(
            self.stack.last(),
            Some(Frame::Str { .. } | Frame::Literal(_))
        );
        if !blank || in_token {
            self.blanks = 0;
        }
        loop {
            let Some(top) = self.stack.last_mut() else {
                return blank && self.blank();
            };
            match top {
                Frame::Value(node) => {
                    if blank {
                        return self.blank();
                    }
                    let node = *node;
                    return match self.start(node, c) {
                        Some(frame) => {
                            *self.stack.last_mut().expect("a value frame") = frame;
                            true
                        }
                        None => false,
                    };
                }
                Frame::Number {
                    integer,
                    state,
                    len,
                } => match state.next(c, *integer) {
                    Some(next) if *len < MAX_NUMBER => {
                        *state = next;
                        *len += 1;
                        return true;
                    }
                    Some(_) => return false,
                    // The number ends here: the character belongs to what follows it.
                    None if state.complete() => {
                        self.stack.pop();
                        self.value_done();
                    }
                    None => return false,
                },
                Frame::Literal(rest) => {
                    let Some(after) = rest.strip_prefix(c) else {
                        return false;
                    };
                    *rest = after;
                    if after.is_empty() {
                        self.stack.pop();
                        self.value_done();
                    }
                    return true;
                }
                Frame::Str { .. } => return self.string(c),
                Frame::Object { .. } => return self.object(c, blank),
                Frame::Array { .. } => {
                    if let Some(taken) = self.array(c, blank) {
                        return taken;
                    }
                }
            }
        }
    }

    /// The frame a value of `node` starts with `c`, which it has taken.
    fn start(&self, node: usize, c: char) -> Option<Frame> {
        let string = |role| Frame::Str {
            role,
            text: String::new(),
            escape: 0,
        };
        let number = |integer| {
            let state = match c {
                '-' => Num::Minus,
                '0' => Num::Zero,
                _ => Num::Int,
            };
            Frame::Number {
                integer,
                state,
                len: 1,
            }
        };
        let starts_number = c == '-' || c.is_ascii_digit();
        match (&self.schema.nodes[node], c) {
            (Node::Any | Node::Object { .. }, '{') => {
                let props = match &self.schema.nodes[node] {
                    Node::Object { props, .. } => props.len(),
                    _ => 0,
                };
                Some(Frame::Object {
                    node,
                    seen: vec![false; props],
                    state: Obj::Start,
                    value: ANY,
                })
            }
            (Node::Any, '[') => Some(Frame::Array {
                items: ANY,
                state: Arr::Start,
            }),
            (Node::Array(items), '[') => Some(Frame::Array {
                items: *items,
                state: Arr::Start,
            }),
            (Node::Any | Node::String(_), '"') => Some(string(StrRole::Value(node))),
            (Node::Any, _) if starts_number => Some(number(false)),
            (Node::Number { integer }, _) if starts_number => Some(number(*integer)),
            (Node::Any | Node::Boolean, 't') => Some(Frame::Literal("rue")),
            (Node::Any | Node::Boolean, 'f') => Some(Frame::Literal("alse")),
            (Node::Any | Node::Null, 'n') => Some(Frame::Literal("ull")),
            (Node::Union(nodes), _) => nodes.iter().find_map(|&n| self.start(n, c)),
            _ => None,
        }
    }

    /// The value on top of the stack was just completed and popped.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Object { state, .. }) => *state = Obj::After,
            Some(Frame::Array { state, .. }) => *state = Arr::After,
            _ => {}
        }
    }

    /// The strings a string of this role may still become: None for any.
    fn choices(&self, role: &StrRole) -> Option<Vec<&str>> {
        match role {
            StrRole::Value(node) => match &self.schema.nodes[*node] {
                Node::String(Some(choices)) => Some(choices.iter().map(String::as_str).collect()),
                _ => None,
            },
            StrRole::Key => {
                let Some(Frame::Object { node, seen, .. }) = self.stack.iter().rev().nth(1) else {
                    return None;
                };
                match &self.schema.nodes[*node] {
                    Node::Object { open: true, .. } | Node::Any => None,
                    Node::Object { props, .. } => Some(
                        props
                            .iter()
                            .zip(seen)
                            .filter(|(_, seen)| !**seen)
                            .map(|((name, _), _)| name.as_str())
                            .collect(),
                    ),
                    _ => None,
                }
            }
        }
    }

    fn string(&mut self, c: char) -> bool {
        let Some(Frame::Str { role, text, escape }) = self.stack.last() else {
            unreachable!("called on a string");
        };
        let (role, escape) = (role.clone(), *escape);
        let choices = self.choices(&role);
        let closing = escape == 0 && c == '"';
        if let Some(choices) = &choices {
            // Constrained strings match their escaped text as written.
            let ok = match closing {
                true => choices.iter().any(|ch| ch == text),
                false => choices
                    .iter()
                    .any(|ch| ch.starts_with(&format!("{text}{c}"))),
            };
            if !ok {
                return false;
            }
        } else if !free_string_char(escape, c) {
            return false;
        }
        if closing {
            let Some(Frame::Str { text, .. }) = self.stack.pop() else {
                unreachable!("a string frame")
            };
            match role {
                StrRole::Value(_) => self.value_done(),
                StrRole::Key => self.key_done(&text),
            }
            return true;
        }
        let Some(Frame::Str { text, escape, .. }) = self.stack.last_mut() else {
            unreachable!("a string frame")
        };
        text.push(c);
        *escape = match (*escape, c) {
            (0, '\\') => 1,
            (1, 'u') => 5,
            (0..=2, _) => 0,
            (n, _) => n - 1,
        };
        true
    }

    /// The object's key `text` was read: its value's node is next.
    fn key_done(&mut self, text: &str) {
        let schema = self.schema.clone();
        let Some(Frame::Object {
            node,
            seen,
            state,
            value,
            ..
        }) = self.stack.last_mut()
        else {
            unreachable!("a key belongs to an object")
        };
        *value = ANY;
        if let Node::Object { props, .. } = &schema.nodes[*node] {
            if let Some(i) = props.iter().position(|(p, _)| p == text) {
                seen[i] = true;
                *value = props[i].1;
            }
        }
        *state = Obj::Colon;
    }

    fn object(&mut self, c: char, blank: bool) -> bool {
        let schema = self.schema.clone();
        let Some(Frame::Object {
            node,
            seen,
            state,
            value,
        }) = self.stack.last_mut()
        else {
            unreachable!("an object frame")
        };
        let (required, open, n_props) = match &schema.nodes[*node] {
            Node::Object {
                required,
                open,
                props,
            } => (required.as_slice(), *open, props.len()),
            _ => (&[][..], true, 0),
        };
        let may_end = required.iter().all(|&r| seen[r]);
        let more_keys = open || seen.iter().filter(|s| **s).count() < n_props;
        if blank && *state != Obj::Value {
            return self.blank();
        }
        match (*state, c) {
            (Obj::Start | Obj::Key, '"') if more_keys => {
                *state = Obj::Value;
                self.stack.push(Frame::Str {
                    role: StrRole::Key,
                    text: String::new(),
                    escape: 0,
                });
                true
            }
            (Obj::Start | Obj::After, '}') if may_end => {
                self.stack.pop();
                self.value_done();
                true
            }
            (Obj::Colon, ':') => {
                *state = Obj::Value;
                let value = *value;
                self.stack.push(Frame::Value(value));
                true
            }
            (Obj::After, ',') if more_keys => {
                *state = Obj::Key;
                true
            }
            _ => false,
        }
    }

    /// Takes `c` for the array on top; None when it starts the array's next value, which
    /// the caller then feeds to it.
    fn array(&mut self, c: char, blank: bool) -> Option<bool> {
        let Some(Frame::Array { items, state }) = self.stack.last_mut() else {
            unreachable!("an array frame")
        };
        if blank {
            return Some(self.blank());
        }
        let items = *items;
        match (*state, c) {
            (Arr::Start | Arr::After, ']') => {
                self.stack.pop();
                self.value_done();
                Some(true)
            }
            (Arr::After, ',') => {
                *state = Arr::Value;
                self.stack.push(Frame::Value(items));
                Some(true)
            }
            (Arr::Start, _) => {
                *state = Arr::Value;
                self.stack.push(Frame::Value(items));
                None
            }
            _ => Some(false),
        }
    }
}

/// Whether `c` may come in an unconstrained string at this point of an escape.
fn free_string_char(escape: u8, c: char) -> bool {
    match escape {
        0 => c >= ' ',
        1 => matches!(c, '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' | 'u'),
        _ => c.is_ascii_hexdigit(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn accepts(schema: &Arc<Schema>, text: &str) -> (bool, bool) {
        let mut g = Grammar::new(schema.clone());
        let fed = g.feed_str(text);
        (fed, fed && g.complete())
    }

    #[test]
    fn a_schema_takes_its_values_and_their_prefixes_only() {
        let schema = Schema::compile(&json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["a", "b\"c"]}},
                "ok": {"type": ["boolean", "null"]},
                "score": {"type": "number", "description": "0 to 1"},
            },
            "required": ["name", "age"],
        }))
        .unwrap();
        let whole = [
            r#"{"name": "Ann \"A\" \u00e9", "age": -12}"#,
            "{\n  \"age\": 0,\n  \"name\": \"\",\n  \"tags\": [\"a\", \"b\\\"c\"], \"ok\": null, \"score\": 1.5e-3\n}",
            r#"{"ok":true,"name":"x","age":7}"#,
        ];
        for text in whole {
            assert_eq!(accepts(&schema, text), (true, true), "{text}");
            for cut in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
                assert_eq!(
                    accepts(&schema, &text[..cut]),
                    (true, false),
                    "{}",
                    &text[..cut]
                );
            }
        }
        let refused = [
            r#"{"name": "x"}"#,            // "age" is required
            r#"{"name": "x", "age": 1.5"#, // an integer
            r#"{"nam": 1"#,                // no such key
            r#"{"name": "x", "name""#,     // a key twice
            r#"{"tags": ["c"#,             // not in the enum
            r#"{"ok": 1"#,                 // boolean or null
            r#"{"age": 01"#,               // no leading zeros
            r#"{"name": "a"b"#,            // after a string
            "{\"name\": \"\u{1}",          // a raw control character
            r#"{"name": "\q"#,             // no such escape
            r#"{"name": "\u12g"#,          // hex digits
            r#"["#,                        // the root is an object
        ];
        for text in refused {
            assert!(!accepts(&schema, text).1, "{text}");
        }
        assert!(
            !accepts(&schema, r#"{"name": "x"}"#).0,
            "'}}' before the required 'age'"
        );
        assert!(!accepts(&schema, r#"{"nam": 1"#).0);
    }

    #[test]
    fn any_object_takes_any_json_object_and_blanks_are_bounded() {
        let any = Schema::any_object();
        let text = r#"{"a": [1, -2.5, {"b": null}, "x", true, false, []], "c": {}}"#;
        assert_eq!(accepts(&any, text), (true, true));
        assert_eq!(accepts(&any, &format!("{text}  ")), (true, true));
        assert!(
            !accepts(&any, &format!("{text} x")).0,
            "nothing after the value"
        );
        assert!(!accepts(&any, "42").0, "an object");
        assert!(
            !accepts(&any, &format!("{{{}", " ".repeat(40))).0,
            "blanks are bounded"
        );
    }

    #[test]
    fn keywords_it_cannot_enforce_are_refused() {
        for schema in [
            json!({"type": "string", "pattern": "^a"}),
            json!({"anyOf": [{"type": "string"}]}),
            json!({"type": "integer", "minimum": 3}),
            json!({"enum": [1, 2]}),
            json!({"type": "object", "required": ["x"]}),
            json!({"type": "date"}),
        ] {
            assert!(Schema::compile(&schema).is_err(), "{schema}");
        }
    }
}
