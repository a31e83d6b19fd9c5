//! Tool calling: the request's `tools` go to the chat template, and the answer's calls come
//! back out of the text. vibrant reads three formats: the Hermes/Qwen templates' (Qwen2.5,
//! Qwen3, Hermes 2/3), where each call is `<tool_call>{"name": …, "arguments": {…}}</tool_call>`;
//! the XML-like one of Qwen3-Coder, Qwen3.5, Nemotron 3 and Step 3.5 (`<tool_call>` around
//! `<function=name>` and a `<parameter=key>` per argument); the key-value one of GLM 4.6–4.7,
//! Ling 3, Laguna and Spark 2.5 (`<tool_call>name` then `<arg_key>k</arg_key><arg_value>v
//! </arg_value>` per argument); Llama 3.1–3.3's, where the
//! answer is a bare `{"name": …, "parameters": {…}}`; and Mistral's, after its `[TOOL_CALLS]`
//! token: a JSON list of calls (Nemo) or `name[ARGS]{…}` per call (Small 3.2, Devstral,
//! Ministral 3). An answer that is nothing but a JSON
//! call, naming one of the tools, is a call in any of them (small models often leave out the
//! tags).
//! `tool_choice: "required"` (or a named function) opens the call in the prompt; for the JSON
//! formats the grammar of `response_format` then holds the answer to an object of the tools'
//! names (and that function's parameters).

use super::grammar::Schema;
use super::wire::ApiError;
use serde_json::{json, Map, Value};
use std::sync::Arc;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
/// Mistral's control tokens around a call, which its answers must show as text.
const MISTRAL_OPEN: &str = "[TOOL_CALLS]";
const MISTRAL_ARGS: &str = "[ARGS]";
const MISTRAL_CALL_ID: &str = "[CALL_ID]";
/// How small models often wrap an untagged call.
const FENCE: &str = "```json";

/// One call the model made: the function's name and its arguments, a JSON object.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

impl ToolCall {
    /// OpenAI's shape: `arguments` as JSON text, with an id per call of the answer.
    pub fn openai(&self, id: &str) -> Value {
        json!({"id": id, "type": "function",
               "function": {"name": self.name, "arguments": self.arguments.to_string()}})
    }

    /// Ollama's shape: `arguments` as an object.
    pub fn ollama(&self) -> Value {
        json!({"function": {"name": self.name, "arguments": self.arguments}})
    }
}

/// How a template has the model call a tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallFormat {
    /// `<tool_call>{"name": …, "arguments": {…}}</tool_call>` (Qwen, Hermes).
    Tagged,
    /// A bare `{"name": …, "parameters": {…}}` (Llama 3.1–3.3).
    Bare,
    /// `<tool_call>\n<function=…>\n<parameter=…>\nvalue\n</parameter>…</function>\n</tool_call>`
    /// (Qwen3-Coder, Qwen3.5, Nemotron 3, Step 3.5).
    Xml,
    /// `<tool_call>name<arg_key>k</arg_key><arg_value>v</arg_value>…</tool_call>` (GLM 4.6–4.7,
    /// Ling 3, Laguna, Spark 2.5).
    KeyValue,
    /// `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]` (Mistral Nemo) or
    /// `[TOOL_CALLS]name[ARGS]{…}` per call (Mistral Small 3.2, Devstral, Ministral 3).
    Mistral,
}

impl CallFormat {
    /// The format of a template of Jinja source `template`, if it shows the model tools in one
    /// vibrant reads.
    fn of(template: &str) -> Option<Self> {
        if !template.contains("tools") {
            return None;
        }
        let has = |marks: &[&str]| marks.iter().any(|m| template.contains(m));
        if has(&[MISTRAL_OPEN]) && has(&["[AVAILABLE_TOOLS]"]) {
            return Some(Self::Mistral);
        }
        let json_named = has(&["{\"name\"", "{\\\"name\\\"", "\"arguments\": <args"]);
        let function_tags = has(&["<function="]) && has(&["<parameter="]);
        if template.contains(OPEN) && function_tags && !has(&["<arg_key>"]) {
            return Some(Self::Xml);
        }
        if template.contains(OPEN) && has(&["<arg_key>"]) && has(&["<arg_value>"]) {
            return Some(Self::KeyValue);
        }
        let xml = has(&["<function=", "<arg_key>", "<parameter="]);
        if template.contains(OPEN) && json_named && !xml {
            return Some(Self::Tagged);
        }
        template
            .contains("\"parameters\": dictionary")
            .then_some(Self::Bare)
    }

    /// The key of a call's arguments in the JSON formats.
    fn arguments(self) -> &'static str {
        match self {
            Self::Tagged | Self::Xml | Self::KeyValue | Self::Mistral => "arguments",
            Self::Bare => "parameters",
        }
    }

    /// What opens a call the model must make (of function `name`, where one is chosen), at
    /// the end of the prompt.
    fn opening(self, name: Option<&str>) -> String {
        match (self, name) {
            (Self::Tagged, _) => "<tool_call>\n".into(),
            (Self::Bare, _) => String::new(),
            (Self::Xml, None) => "<tool_call>\n<function=".into(),
            (Self::Xml, Some(name)) => format!("<tool_call>\n<function={name}>\n"),
            (Self::KeyValue, None) => OPEN.into(),
            (Self::KeyValue, Some(name)) => format!("{OPEN}{name}"),
            (Self::Mistral, _) => MISTRAL_OPEN.into(),
        }
    }

    /// What opens a call in the answer's text (Bare's calls have no tag: never found).
    fn open(self) -> &'static str {
        match self {
            Self::Mistral => MISTRAL_OPEN,
            _ => OPEN,
        }
    }
}

/// What a request's tools ask of the generation.
#[derive(Clone, Debug)]
pub struct ToolUse {
    /// The tools as the template is given them.
    pub tools: Value,
    names: Vec<String>,
    /// Text appended to the prompt: the opening of a call the model must make.
    pub prompt_suffix: String,
    /// The JSON the answer is held to, where a call is required (in a JSON format).
    pub grammar: Option<Arc<Schema>>,
    /// (function, parameter) of the parameters whose schema type is "string": the values an
    /// XML-like call gives as text stay text.
    string_params: Vec<(String, String)>,
    format: CallFormat,
}

impl ToolUse {
    /// The request's `tools` and `tool_choice` for a template of Jinja source `template`;
    /// None where no tools are offered or `tool_choice` is "none". A template that shows the
    /// model no tools, or calls them in another format, is a 400: the model would never see
    /// the tools, or its calls would come back as text.
    pub fn new(
        tools: Option<&[Value]>,
        tool_choice: Option<&Value>,
        template: &str,
    ) -> Result<Option<Self>, ApiError> {
        let tools = match tools {
            Some(t) if !t.is_empty() => t,
            _ => return Ok(None),
        };
        let names = tool_names(tools)?;
        let forced = match tool_choice {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s == "auto" => None,
            Some(Value::String(s)) if s == "none" => return Ok(None),
            Some(Value::String(s)) if s == "required" => Some(None),
            Some(choice @ Value::Object(_)) => Some(Some(chosen(choice, &names)?)),
            Some(other) => {
                return Err(invalid(
                    "tool_choice",
                    format!("tool_choice must be \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": …}}}}, not {other}"),
                ))
            }
        };
        let Some(format) = CallFormat::of(template) else {
            return Err(ApiError::bad_request(
                "unsupported_value",
                "this model's chat template has no tool-call format vibrant reads (<tool_call> \
                 of Qwen, Hermes, Qwen3-Coder and GLM, Llama 3.1's JSON, Mistral's \
                 [TOOL_CALLS]): send the request without `tools`",
            )
            .with_param("tools"));
        };
        let prompt_suffix = match &forced {
            Some(name) => format.opening(name.as_deref()),
            None => String::new(),
        };
        let grammar = match format {
            CallFormat::Xml | CallFormat::KeyValue | CallFormat::Mistral => None,
            _ => forced.map(|name| call_schema(tools, &names, name, format)),
        };
        Ok(Some(Self {
            tools: Value::Array(tools.to_vec()),
            names,
            prompt_suffix,
            grammar,
            string_params: string_params(tools),
            format,
        }))
    }

    /// Whether the answer's control tokens must come out as text: Mistral's calls are made of
    /// them.
    pub fn shows_control_tokens(&self) -> bool {
        self.format == CallFormat::Mistral
    }

    /// A reader of the answer's text as it comes (after the opening the prompt ends with).
    pub fn reader(&self) -> CallReader {
        CallReader {
            text: self.prompt_suffix.clone(),
            sent: 0,
            names: self.names.clone(),
            string_params: self.string_params.clone(),
            format: self.format,
        }
    }
}

/// Whether a template of Jinja source `template` shows the model tools and has it call them
/// in the format vibrant reads.
pub fn reads_calls(template: &str) -> bool {
    CallFormat::of(template).is_some()
}

fn invalid(param: &str, message: String) -> ApiError {
    ApiError::bad_request("invalid_value", message).with_param(param)
}

/// Each tool's function name, as `{"type": "function", "function": {"name": …}}` gives it.
fn tool_names(tools: &[Value]) -> Result<Vec<String>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let name = tool.pointer("/function/name").and_then(Value::as_str);
            match (tool.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(name)) => Ok(name.to_string()),
                _ => Err(invalid(
                    "tools",
                    format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"),
                )),
            }
        })
        .collect()
}

/// (function, parameter) of each parameter whose schema type is "string".
fn string_params(tools: &[Value]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for tool in tools {
        let Some(name) = tool.pointer("/function/name").and_then(Value::as_str) else {
            continue;
        };
        let properties = tool.pointer("/function/parameters/properties");
        for (key, schema) in properties.and_then(Value::as_object).into_iter().flatten() {
            if schema.get("type").and_then(Value::as_str) == Some("string") {
                pairs.push((name.to_string(), key.clone()));
            }
        }
    }
    pairs
}

/// The function a `tool_choice` object names, which must be among the tools.
fn chosen(choice: &Value, names: &[String]) -> Result<String, ApiError> {
    let name = choice.pointer("/function/name").and_then(Value::as_str);
    match name {
        Some(n) if names.iter().any(|t| t == n) => Ok(n.to_string()),
        Some(n) => Err(invalid(
            "tool_choice",
            format!("tool_choice names '{n}', which is not among the tools"),
        )),
        None => Err(invalid(
            "tool_choice",
            "tool_choice must name a function: {\"type\": \"function\", \"function\": {\"name\": …}}"
                .into(),
        )),
    }
}

/// `{"name": one of the tools, "arguments" (or "parameters"): {…}}`: the named function's
/// parameters where one is chosen and the grammar takes its schema, else any object.
fn call_schema(
    tools: &[Value],
    names: &[String],
    chosen: Option<String>,
    format: CallFormat,
) -> Arc<Schema> {
    let any_object = json!({"type": "object"});
    let (allowed, arguments) = match chosen {
        Some(name) => {
            let parameters = tools
                .iter()
                .find(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(&name))
                .and_then(|t| t.pointer("/function/parameters"))
                .filter(|p| Schema::compile(p).is_ok())
                .cloned()
                .unwrap_or(any_object);
            (vec![name], parameters)
        }
        None => (names.to_vec(), any_object),
    };
    let key = format.arguments();
    let schema = json!({
        "type": "object",
        "properties": {"name": {"enum": allowed}, key: arguments},
        "required": ["name", key],
        "additionalProperties": false,
    });
    Schema::compile(&schema).expect("a schema of names and an object compiles")
}

/// The answer's text, read as it comes: text before a call streams on at once, all but an
/// end that may open one; from the first `<tool_call>` on, the rest waits for the end, as
/// does an answer that begins as a JSON object, bare or in a ```` ```json ```` fence (it may be a
/// call without tags).
pub struct CallReader {
    text: String,
    /// Bytes of `text` already given out as content.
    sent: usize,
    /// The tools' names, which an untagged call must use.
    names: Vec<String>,
    /// See [`ToolUse`].
    string_params: Vec<(String, String)>,
    format: CallFormat,
}

impl CallReader {
    /// The content that can go out now, given the next piece of the answer.
    pub fn push(&mut self, piece: &str) -> String {
        self.text.push_str(piece);
        let pending = &self.text[self.sent..];
        if self.sent == 0 && may_open_untagged_call(self.text.trim_start()) {
            return String::new();
        }
        let open = self.format.open();
        let end = match pending.find(open) {
            Some(at) => at,
            None => pending.len() - partial_open(pending, open),
        };
        let out = pending[..end].to_string();
        self.sent += end;
        out
    }

    /// The content not yet given out and the calls, once the answer has ended. A call whose
    /// JSON does not parse stays in the content, so that nothing the model wrote is lost.
    pub fn finish(self) -> (String, Vec<ToolCall>) {
        let rest = &self.text[self.sent..];
        let (content, calls) = match self.format {
            CallFormat::Mistral => split_mistral_calls(rest),
            _ => split_calls(rest, &self.string_params),
        };
        if calls.is_empty() && self.sent == 0 {
            let untagged = parse_call(without_fence(rest), &self.string_params)
                .filter(|c| self.names.contains(&c.name));
            if let Some(call) = untagged {
                return (String::new(), vec![call]);
            }
        }
        (content, calls)
    }
}

/// Whether an answer that begins with `start` may still turn out to be a call without tags:
/// a JSON object, bare or fenced as ```` ```json ```` (or a fence with no language).
fn may_open_untagged_call(start: &str) -> bool {
    if start.is_empty() || start.starts_with('{') || FENCE.starts_with(start) {
        return true;
    }
    let Some(after) = start.strip_prefix("```") else {
        return false;
    };
    let after = after.strip_prefix("json").unwrap_or(after);
    match after.chars().next() {
        None => true,
        Some(c) if c.is_whitespace() => {
            let body = after.trim_start();
            body.is_empty() || body.starts_with('{')
        }
        _ => false,
    }
}

/// The text inside a code fence around the whole of `text`, or `text` itself.
fn without_fence(text: &str) -> &str {
    let text = text.trim();
    let Some(inner) = text.strip_prefix("```") else {
        return text;
    };
    let inner = inner.strip_prefix("json").unwrap_or(inner);
    inner.strip_suffix("```").unwrap_or(inner)
}

/// Bytes at the end of `text` that begin `open`.
fn partial_open(text: &str, open: &str) -> usize {
    (1..open.len())
        .rev()
        .find(|&n| text.ends_with(&open[..n]))
        .unwrap_or(0)
}

/// Content and calls of a Mistral answer: what comes before the first `[TOOL_CALLS]` is
/// content, each `[TOOL_CALLS]` after it a JSON list of calls or `name[ARGS]{…}` (with a
/// `[CALL_ID]id` the model may put before `[ARGS]`). Nothing parses: all stays content.
fn split_mistral_calls(text: &str) -> (String, Vec<ToolCall>) {
    let Some(at) = text.find(MISTRAL_OPEN) else {
        return (text.to_string(), Vec::new());
    };
    let mut calls = Vec::new();
    for part in text[at..].split(MISTRAL_OPEN).skip(1) {
        let part = part.trim();
        let parsed = match part.starts_with('[') {
            true => parse_mistral_list(part),
            false => parse_mistral_named(part).map(|c| vec![c]),
        };
        match parsed {
            Some(mut more) => calls.append(&mut more),
            None => return (text.to_string(), Vec::new()),
        }
    }
    (text[..at].trim().to_string(), calls)
}

/// `[{"name": …, "arguments": {…}}, …]`.
fn parse_mistral_list(text: &str) -> Option<Vec<ToolCall>> {
    let list: Vec<Map<String, Value>> = serde_json::from_str(text).ok()?;
    list.iter().map(call_of_object).collect()
}

/// `name[ARGS]{…}`, or `name[CALL_ID]id[ARGS]{…}`.
fn parse_mistral_named(text: &str) -> Option<ToolCall> {
    let (head, arguments) = text.split_once(MISTRAL_ARGS)?;
    let name = head.split(MISTRAL_CALL_ID).next()?.trim();
    let arguments: Map<String, Value> = serde_json::from_str(arguments.trim()).ok()?;
    (!name.is_empty()).then(|| ToolCall {
        name: name.to_string(),
        arguments: Value::Object(arguments),
    })
}

/// Content and calls of a whole text; a call's closing tag may be missing at the very end.
fn split_calls(text: &str, string_params: &[(String, String)]) -> (String, Vec<ToolCall>) {
    let (mut content, mut calls) = (String::new(), Vec::new());
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        content.push_str(&rest[..at]);
        let body_start = &rest[at + OPEN.len()..];
        let (body, after) = match body_start.find(CLOSE) {
            Some(end) => (&body_start[..end], &body_start[end + CLOSE.len()..]),
            None => (body_start, ""),
        };
        match parse_call(body, string_params) {
            Some(call) => calls.push(call),
            None => content.push_str(&rest[at..rest.len() - after.len()]),
        }
        rest = after;
    }
    content.push_str(rest);
    let content = match calls.is_empty() {
        true => content,
        false => content.trim().to_string(),
    };
    (content, calls)
}

/// A call of any kind in `<tool_call>` tags: a JSON object, XML-like `<function=…>` tags, or a
/// name and `<arg_key>`/`<arg_value>` pairs.
fn parse_call(body: &str, string_params: &[(String, String)]) -> Option<ToolCall> {
    let body = body.trim();
    if let Some(rest) = body.strip_prefix("<function=") {
        return parse_xml_call(rest, string_params);
    }
    match body.starts_with('{') {
        true => parse_json_call(body),
        false => parse_key_value_call(body, string_params),
    }
}

/// An argument's value as text gives it: JSON where it parses as such, unless the function's
/// schema says the parameter is a "string"; else the text.
fn argument_value(
    function: &str,
    key: &str,
    text: &str,
    string_params: &[(String, String)],
) -> Value {
    let is_string = string_params.iter().any(|(f, p)| f == function && p == key);
    match serde_json::from_str::<Value>(text) {
        Ok(v) if !is_string => v,
        _ => Value::String(text.to_string()),
    }
}

/// `name` then `<arg_key>k</arg_key><arg_value>v</arg_value>` per argument (whitespace
/// between them is GLM 4.6's); a name alone is a call without arguments.
fn parse_key_value_call(body: &str, string_params: &[(String, String)]) -> Option<ToolCall> {
    let (name, mut rest) = body.split_once("<arg_key>").unwrap_or((body, ""));
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) || name.contains('<') {
        return None;
    }
    let mut arguments = Map::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("</arg_key>")?;
        let after = after.trim_start().strip_prefix("<arg_value>")?;
        let (text, next) = after.split_once("</arg_value>").unwrap_or((after, ""));
        let key = key.trim();
        arguments.insert(
            key.to_string(),
            argument_value(name, key, text, string_params),
        );
        rest = match next.trim_start() {
            "" => "",
            more => more.strip_prefix("<arg_key>")?,
        };
    }
    Some(ToolCall {
        name: name.to_string(),
        arguments: Value::Object(arguments),
    })
}

fn parse_json_call(body: &str) -> Option<ToolCall> {
    call_of_object(&serde_json::from_str(body).ok()?)
}

/// `{"name": …, "arguments" (or "parameters"): {…}}`, the arguments an object or its JSON text.
fn call_of_object(value: &Map<String, Value>) -> Option<ToolCall> {
    let name = value.get("name")?.as_str()?.to_string();
    let arguments = match value.get("arguments").or_else(|| value.get("parameters")) {
        Some(Value::Object(a)) => Value::Object(a.clone()),
        // Some models write the arguments as JSON text.
        Some(Value::String(s)) => serde_json::from_str::<Map<String, Value>>(s)
            .ok()
            .map(Value::Object)?,
        None => json!({}),
        Some(_) => return None,
    };
    Some(ToolCall { name, arguments })
}

/// `name>` then `<parameter=key>\nvalue\n</parameter>` per argument, up to `</function>`
/// (which may be missing at the very end). A value is JSON where it parses as such, unless
/// its schema says "string"; else its text.
fn parse_xml_call(rest: &str, string_params: &[(String, String)]) -> Option<ToolCall> {
    let (name, mut inner) = rest.split_once('>')?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    if let Some(end) = inner.find("</function>") {
        inner = &inner[..end];
    }
    let mut arguments = Map::new();
    while let Some(at) = inner.find("<parameter=") {
        let (key, after) = inner[at + "<parameter=".len()..].split_once('>')?;
        let (raw, next) = match after.find("</parameter>") {
            Some(end) => (&after[..end], &after[end + "</parameter>".len()..]),
            None => match after.find("<parameter=") {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            },
        };
        let text = raw.strip_prefix('\n').unwrap_or(raw);
        let text = text.strip_suffix('\n').unwrap_or(text);
        let key = key.trim();
        arguments.insert(
            key.to_string(),
            argument_value(name, key, text, string_params),
        );
        inner = next;
    }
    Some(ToolCall {
        name: name.to_string(),
        arguments: Value::Object(arguments),
    })
}

/// An assistant turn's `tool_calls` as templates read them: OpenAI's `arguments` text
/// becomes the object it encodes (templates print it with `tojson`).
pub fn template_calls(calls: &[Value]) -> Value {
    let calls = calls.iter().map(|call| {
        let mut call = call.clone();
        if let Some(args) = call.pointer_mut("/function/arguments") {
            if let Some(parsed) = args.as_str().and_then(|s| serde_json::from_str(s).ok()) {
                *args = parsed;
            }
        }
        call
    });
    Value::Array(calls.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen2.5's line asking for calls, as its template has it.
    const HERMES: &str = "{% if tools %}{{ tools | tojson }}{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}{% endif %}";

    fn weather() -> Vec<Value> {
        vec![
            json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}}),
        ]
    }

    #[test]
    fn calls_come_out_of_the_text_and_the_rest_stays_content() {
        let text = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}\n</tool_call>";
        let (content, calls) = split_calls(text, &[]);
        assert_eq!(content, "Let me look.");
        assert_eq!(
            calls,
            [
                ToolCall {
                    name: "get_weather".into(),
                    arguments: json!({"city": "Paris"})
                },
                ToolCall {
                    name: "f".into(),
                    arguments: json!({"x": 1})
                },
            ]
        );
        assert_eq!(
            calls[0].openai("call_1")["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
    }

    /// Enough of a Mistral template to be read as one: tools shown in `[AVAILABLE_TOOLS]`,
    /// calls made after `[TOOL_CALLS]`.
    const MISTRAL: &str = "{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}{{ '[TOOL_CALLS]' }}";

    #[test]
    fn mistral_calls_come_as_a_list_or_by_name() {
        let call = |name: &str, arguments: Value| ToolCall {
            name: name.into(),
            arguments,
        };
        let nemo = "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": \"abcDEF123\"}, {\"name\": \"f\", \"arguments\": {}}]";
        assert_eq!(
            split_mistral_calls(nemo),
            (
                String::new(),
                vec![
                    call("get_weather", json!({"city": "Paris"})),
                    call("f", json!({}))
                ]
            )
        );
        let small = "Checking.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Oslo\"}[TOOL_CALLS]f[CALL_ID]x1y2z3[ARGS]{\"n\": 2}";
        assert_eq!(
            split_mistral_calls(small),
            (
                "Checking.".to_string(),
                vec![
                    call("get_weather", json!({"city": "Oslo"})),
                    call("f", json!({"n": 2}))
                ]
            )
        );
        for broken in [
            "[TOOL_CALLS]f[ARGS]{\"n\": ",
            "[TOOL_CALLS][{\"name\": 1}]",
            "[TOOL_CALLS]f",
        ] {
            assert_eq!(split_mistral_calls(broken), (broken.to_string(), vec![]));
        }
    }

    #[test]
    fn a_mistral_reader_holds_back_from_tool_calls_on() {
        let tools = ToolUse::new(Some(&weather()), None, MISTRAL)
            .unwrap()
            .unwrap();
        assert!(tools.shows_control_tokens() && tools.prompt_suffix.is_empty());
        let mut reader = tools.reader();
        assert_eq!(reader.push("Sure [TOOL"), "Sure ");
        assert_eq!(reader.push("_CALLS]get_weather[ARGS]"), "");
        assert_eq!(reader.push("{\"city\": \"Rome\"}"), "");
        // "Sure " went out as it came: nothing of the content is left.
        let (content, calls) = reader.finish();
        assert_eq!(content, "");
        assert_eq!(calls[0].arguments, json!({"city": "Rome"}));
        let required = json!("required");
        let forced = ToolUse::new(Some(&weather()), Some(&required), MISTRAL)
            .unwrap()
            .unwrap();
        assert_eq!(forced.prompt_suffix, "[TOOL_CALLS]");
        assert!(forced.grammar.is_none());
        let mut reader = forced.reader();
        assert_eq!(reader.push("get_weather[ARGS]{\"city\": \"Bern\"}"), "");
        assert_eq!(reader.finish().1[0].name, "get_weather");
    }

    #[test]
    fn key_value_calls_come_out_with_json_or_text_values() {
        let strings = [("get_weather".to_string(), "city".to_string())];
        let glm_4_6 = "Looking.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>42</arg_value>\n<arg_key>days</arg_key>\n<arg_value>[1, 2]</arg_value>\n</tool_call>";
        let glm_4_7 = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>42</arg_value><arg_key>days</arg_key><arg_value>[1, 2]</arg_value></tool_call><tool_call>now</tool_call>";
        let want = ToolCall {
            name: "get_weather".into(),
            arguments: json!({"city": "42", "days": [1, 2]}),
        };
        let (content, calls) = split_calls(glm_4_6, &strings);
        assert_eq!((content.as_str(), calls), ("Looking.", vec![want.clone()]));
        let (_, calls) = split_calls(glm_4_7, &strings);
        let now = ToolCall {
            name: "now".into(),
            arguments: json!({}),
        };
        assert_eq!(calls, vec![want, now]);
        for broken in [
            "<tool_call>f<arg_key>x</arg_key>oops</tool_call>",
            "<tool_call>two words</tool_call>",
        ] {
            assert_eq!(split_calls(broken, &[]), (broken.to_string(), vec![]));
        }
    }

    #[test]
    fn a_call_that_does_not_parse_is_kept_as_text() {
        let text = "a <tool_call>{\"name\": oops}</tool_call> b";
        assert_eq!(split_calls(text, &[]), (text.to_string(), vec![]));
        let unclosed = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}";
        assert_eq!(split_calls(unclosed, &[]).1.len(), 1);
    }

    #[test]
    fn the_reader_holds_back_only_what_may_open_a_call() {
        let tools = ToolUse::new(Some(&weather()), None, HERMES)
            .unwrap()
            .unwrap();
        let mut reader = tools.reader();
        assert_eq!(reader.push(" "), "");
        assert_eq!(reader.push("Hello <tool"), " Hello ");
        assert_eq!(reader.push("box>"), "<toolbox>");
        assert_eq!(reader.push(" and <tool_"), " and ");
        assert_eq!(reader.push("call>{\"name\": \"get_weather\", "), "");
        assert_eq!(
            reader.push("\"arguments\": {\"city\": \"Oslo\"}}</tool_call>"),
            ""
        );
        let (content, calls) = reader.finish();
        assert_eq!(content, "");
        assert_eq!(calls[0].arguments, json!({"city": "Oslo"}));
    }

    #[test]
    fn an_answer_that_is_only_a_call_of_a_tool_is_a_call() {
        let tools = ToolUse::new(Some(&weather()), None, HERMES)
            .unwrap()
            .unwrap();
        let mut reader = tools.reader();
        assert_eq!(reader.push("{\"name\": \"get_weather\", "), "");
        assert_eq!(reader.push("\"arguments\": {\"city\": \"Lima\"}}"), "");
        let (content, calls) = reader.finish();
        assert_eq!(
            (content.as_str(), calls[0].name.as_str()),
            ("", "get_weather")
        );
        let mut other = tools.reader();
        let json = "{\"name\": \"Ann\", \"age\": 3}";
        assert_eq!(other.push(json), "");
        assert_eq!(other.finish(), (json.to_string(), vec![]));
    }

    #[test]
    fn a_call_in_a_json_fence_is_a_call_and_other_fences_stream_as_content() {
        let tools = ToolUse::new(Some(&weather()), None, HERMES)
            .unwrap()
            .unwrap();
        let mut fenced = tools.reader();
        for piece in [
            "``",
            "`json\n{\"name\": \"get_weather\", ",
            "\"arguments\": {}}\n```",
        ] {
            assert_eq!(fenced.push(piece), "");
        }
        let (content, calls) = fenced.finish();
        assert_eq!((content.as_str(), calls.len()), ("", 1));
        assert_eq!(calls[0].name, "get_weather");

        let mut code = tools.reader();
        assert_eq!(code.push("```"), "");
        assert_eq!(code.push("python\nprint(1)"), "```python\nprint(1)");
        let mut prose = tools.reader();
        assert_eq!(prose.push("```json\n[1, 2]"), "```json\n[1, 2]");
        let mut other = tools.reader();
        let fenced_object = "```json\n{\"name\": \"Ann\"}\n```";
        assert_eq!(other.push(fenced_object), "");
        assert_eq!(other.finish(), (fenced_object.to_string(), vec![]));
    }

    #[test]
    fn a_required_call_opens_in_the_prompt_and_is_held_to_the_tools() {
        let tools = weather();
        let forced = ToolUse::new(Some(&tools), Some(&json!("required")), HERMES)
            .unwrap()
            .unwrap();
        assert_eq!(forced.prompt_suffix, "<tool_call>\n");
        assert!(forced.grammar.is_some());
        let mut reader = forced.reader();
        reader.push("{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}");
        assert_eq!(reader.finish().1[0].name, "get_weather");
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        assert!(ToolUse::new(Some(&tools), Some(&named), HERMES).is_ok());
    }

    /// Qwen3-Coder's example of a call, as its template has it.
    const QWEN3_CODER: &str = "{% if tools %}<tools>{{ tools | tojson }}</tools>{{- '\\n\\n<tool_call>\\n<function=example_function_name>\\n<parameter=example_parameter_1>\\nvalue_1\\n</parameter>\\n</function>\\n</tool_call>' }}{% endif %}";

    fn two_tools() -> Vec<Value> {
        let mut tools = weather();
        tools.push(json!({"type": "function", "function": {"name": "add",
            "parameters": {"type": "object", "properties": {
                "a": {"type": "number"}, "b": {"type": "number"}, "note": {"type": "string"}}}}}));
        tools
    }

    #[test]
    fn xml_calls_give_json_values_unless_the_schema_says_string() {
        let tools = two_tools();
        let auto = ToolUse::new(Some(&tools), None, QWEN3_CODER)
            .unwrap()
            .unwrap();
        let mut reader = auto.reader();
        let text = "Let me add.\n<tool_call>\n<function=add>\n<parameter=a>\n2\n</parameter>\n\
                    <parameter=b>\n3.5\n</parameter>\n<parameter=note>\n42\n</parameter>\n\
                    </function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n\
                    <parameter=city>\nSan José\nde Costa Rica\n</parameter>\n</function>\n</tool_call>";
        assert_eq!(reader.push(text), "Let me add.\n");
        let (content, calls) = reader.finish();
        assert_eq!(content, "");
        assert_eq!(calls[0].name, "add");
        assert_eq!(calls[0].arguments, json!({"a": 2, "b": 3.5, "note": "42"}));
        assert_eq!(
            calls[1].arguments,
            json!({"city": "San José\nde Costa Rica"})
        );
        let mut broken = auto.reader();
        broken.push("<tool_call>\n<function=>\n</function>\n</tool_call>");
        assert_eq!(broken.finish().1, vec![]);
    }

    #[test]
    fn a_required_xml_call_opens_in_the_prompt_without_a_grammar() {
        let tools = two_tools();
        let required = ToolUse::new(Some(&tools), Some(&json!("required")), QWEN3_CODER)
            .unwrap()
            .unwrap();
        assert_eq!(required.prompt_suffix, "<tool_call>\n<function=");
        assert!(required.grammar.is_none());
        let mut reader = required.reader();
        reader.push("get_weather>\n<parameter=city>\nLima\n</parameter>\n</function>");
        assert_eq!(reader.finish().1[0].arguments, json!({"city": "Lima"}));
        let named = json!({"type": "function", "function": {"name": "add"}});
        let chosen = ToolUse::new(Some(&tools), Some(&named), QWEN3_CODER)
            .unwrap()
            .unwrap();
        assert_eq!(chosen.prompt_suffix, "<tool_call>\n<function=add>\n");
        let mut reader = chosen.reader();
        reader.push("<parameter=a>\n1\n</parameter>\n</function>\n</tool_call>");
        let (_, calls) = reader.finish();
        assert_eq!(
            (calls[0].name.as_str(), &calls[0].arguments),
            ("add", &json!({"a": 1}))
        );
    }

    /// Llama 3.1's line asking for calls, as its template has it.
    const LLAMA: &str = "{% if tools %}{{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}{% endif %}";

    #[test]
    fn llama_calls_are_bare_objects_with_parameters() {
        let tools = weather();
        let auto = ToolUse::new(Some(&tools), None, LLAMA).unwrap().unwrap();
        let mut reader = auto.reader();
        reader.push("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}");
        assert_eq!(reader.finish().1[0].arguments, json!({"city": "Oslo"}));
        let forced = ToolUse::new(Some(&tools), Some(&json!("required")), LLAMA)
            .unwrap()
            .unwrap();
        assert_eq!(forced.prompt_suffix, "");
        assert_eq!(CallFormat::of(LLAMA), Some(CallFormat::Bare));
        assert_eq!(CallFormat::of(HERMES), Some(CallFormat::Tagged));
        let xml = "{% if tools %}<tool_call>\n<function=name>\n<parameter=x>{% endif %}";
        assert_eq!(CallFormat::of(xml), Some(CallFormat::Xml));
        let glm = "{% if tools %}<tool_call>{{ name }}\n<arg_key>x</arg_key>{% endif %}";
        assert_eq!(CallFormat::of(glm), None);
    }

    #[test]
    fn bad_tools_or_choices_and_templates_without_tools_are_400s() {
        let tools = weather();
        let none = ToolUse::new(Some(&tools), Some(&json!("none")), HERMES);
        assert!(none.unwrap().is_none());
        assert!(ToolUse::new(Some(&[]), None, "").unwrap().is_none());
        let unknown = json!({"type": "function", "function": {"name": "nope"}});
        let err = ToolUse::new(Some(&tools), Some(&unknown), HERMES).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("tool_choice"));
        let err = ToolUse::new(Some(&[json!({"type": "web"})]), None, HERMES).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("tools"));
        let err = ToolUse::new(Some(&tools), None, "{{ messages }}").unwrap_err();
        assert_eq!((err.status, err.param.as_deref()), (400, Some("tools")));
    }

    #[test]
    fn an_assistant_turns_argument_text_reaches_the_template_as_an_object() {
        let calls = [json!({"id": "c", "type": "function",
            "function": {"name": "f", "arguments": "{\"x\": [1, 2]}"}})];
        let out = template_calls(&calls);
        assert_eq!(out[0]["function"]["arguments"], json!({"x": [1, 2]}));
    }
}
