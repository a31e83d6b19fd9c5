//! Chat templates: the real templates of public model families (shared/testdata/templates),
//! the templates inside the installed models, the built-in fallbacks, and error reporting.

mod testdata;

use std::path::PathBuf;
use testdata::testdata;
use vibrant::chat::{BuiltinFormat, ChatError, ChatTemplate, Message, RenderOptions};
use vibrant::gguf::{GgufFile, GgufWriter, Value};

fn templates_dir() -> PathBuf {
    testdata().join("templates")
}

fn template(file: &str) -> ChatTemplate {
    let path = templates_dir().join(file);
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    ChatTemplate::from_named_source(file, &source, "<s>", "</s>").unwrap_or_else(|e| panic!("{e}"))
}

const SYSTEM: &str = "You are a helpful assistant.";
const USER_1: &str = "Hello!";
const ASSISTANT: &str = "Hi there! How can I help?";
const USER_2: &str = "What is 2+2?";

fn conversation() -> Vec<Message> {
    vec![
        Message::system(SYSTEM),
        Message::user(USER_1),
        Message::assistant(ASSISTANT),
        Message::user(USER_2),
    ]
}

/// The ChatML prompt for [`conversation`], with the assistant turn opened.
const CHATML: &str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
<|im_start|>user\nHello!<|im_end|>\n\
<|im_start|>assistant\nHi there! How can I help?<|im_end|>\n\
<|im_start|>user\nWhat is 2+2?<|im_end|>\n\
<|im_start|>assistant\n";

/// Renders and checks that every message made it into the prompt.
fn render_conversation(file: &str, messages: &[Message]) -> String {
    let prompt = template(file)
        .render(messages, true)
        .unwrap_or_else(|e| panic!("{e}"));
    for message in messages {
        assert!(
            prompt.contains(&message.content),
            "{file}: prompt lacks {:?}:\n{prompt}",
            message.content
        );
    }
    prompt
}

/// The families every chat template renderer must handle.
const COMMON: &[&str] = &[
    "Qwen-Qwen2.5-7B-Instruct.jinja",
    "Qwen-QwQ-32B.jinja",
    "Qwen-Qwen3-0.6B.jinja",
    "Qwen3-Coder.jinja",
    "Qwen3.5-4B.jinja",
    "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "meta-llama-Llama-3.3-70B-Instruct.jinja",
    "HuggingFaceTB-SmolLM3-3B.jinja",
    "Mistral-Small-3.2-24B-Instruct-2506.jinja",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
    "unsloth-mistral-Devstral-Small-2507.jinja",
    "google-gemma-4-31B-it.jinja",
    "google-gemma-4-31B-it-interleaved.jinja",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
    "ibm-granite-granite-3.3-2B-Instruct.jinja",
    "ibm-granite-granite-4.0.jinja",
    "ibm-granite-granite-4.1.jinja",
];

/// Templates that cannot render [`conversation`] as it is, and why; each is checked to
/// fail that way and to render what it does accept.
const KNOWN_EXCEPTIONS: &[(&str, &str)] = &[
    // Gemma 2 has no system role: the template itself raises.
    ("google-gemma-2-2b-it.jinja", "System role not supported"),
    // Firefunction v2 always prints its function list and the date: it needs `functions`
    // (JSON text) and `datetime`, variables of its own.
    (
        "fireworks-ai-llama-3-firefunction-v2.jinja",
        "unsupported types string and undefined",
    ),
];

#[test]
fn common_templates_render_a_four_turn_conversation() {
    for file in COMMON {
        render_conversation(file, &conversation());
    }
}

#[test]
fn every_template_renders_but_the_known_exceptions() {
    let mut files: Vec<String> = std::fs::read_dir(templates_dir())
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", templates_dir().display()))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".jinja"))
        .collect();
    files.sort();
    assert!(files.len() >= 70, "only {} templates found", files.len());
    for file in &files {
        if KNOWN_EXCEPTIONS.iter().all(|(name, _)| name != file) {
            render_conversation(file, &conversation());
        }
    }
}

#[test]
fn known_exceptions_fail_as_documented_and_render_what_they_accept() {
    for (file, reason) in KNOWN_EXCEPTIONS {
        let err = template(file).render(&conversation(), true).unwrap_err();
        assert!(err.to_string().contains(reason), "{file}: {err}");
    }
    let without_system = &conversation()[1..];
    let gemma = render_conversation("google-gemma-2-2b-it.jinja", without_system);
    assert_eq!(
        gemma,
        "<s><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\n\
         Hi there! How can I help?<end_of_turn>\n<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n\
         <start_of_turn>model\n"
    );
    let options = RenderOptions::new(true)
        .set_json("functions", r#""[]""#)
        .and_then(|o| o.set_json("datetime", r#""2024-07-26""#))
        .unwrap();
    let firefunction = template("fireworks-ai-llama-3-firefunction-v2.jinja")
        .render_with(&conversation(), &options)
        .unwrap();
    assert!(firefunction.ends_with(
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    ));
}

#[test]
fn qwen2_5_renders_chatml_exactly() {
    let prompt = template("Qwen-Qwen2.5-7B-Instruct.jinja")
        .render(&conversation(), true)
        .unwrap();
    assert_eq!(prompt, CHATML);
}

#[test]
fn qwen2_5_without_generation_prompt_ends_after_the_last_turn() {
    let prompt = template("Qwen-Qwen2.5-7B-Instruct.jinja")
        .render(&conversation(), false)
        .unwrap();
    assert_eq!(
        prompt,
        CHATML.strip_suffix("<|im_start|>assistant\n").unwrap()
    );
}

#[test]
fn llama_3_1_renders_exactly() {
    let prompt = template("meta-llama-Llama-3.1-8B-Instruct.jinja")
        .render(&conversation(), true)
        .unwrap();
    assert_eq!(
        prompt,
        "<s><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n\
         You are a helpful assistant.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nHi there! How can I help?<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

const TOOLS: &str = r#"[{"type": "function", "function": {"name": "get_weather",
    "description": "Weather <now> & 'later' in Zürich",
    "parameters": {"type": "object", "properties": {"days": {"type": "integer", "minimum": 0.5}},
    "required": ["days"]}}}]"#;

#[test]
fn qwen2_5_prints_tools_as_python_json_in_the_order_given() {
    let options = RenderOptions::new(true).set_json("tools", TOOLS).unwrap();
    let prompt = template("Qwen-Qwen2.5-7B-Instruct.jinja")
        .render_with(&conversation()[1..2], &options)
        .unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\
         \n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n\
         {\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \
         \"description\": \"Weather <now> & 'later' in Zürich\", \"parameters\": \
         {\"type\": \"object\", \"properties\": {\"days\": {\"type\": \"integer\", \
         \"minimum\": 0.5}}, \"required\": [\"days\"]}}}\n</tools>\n\n\
         For each function call, return a json object with function name and arguments within \
         <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n\
         <|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn llama_3_1_indents_tools_as_python_json() {
    let options = RenderOptions::new(true).set_json("tools", TOOLS).unwrap();
    let prompt = template("meta-llama-Llama-3.1-8B-Instruct.jinja")
        .render_with(&conversation(), &options)
        .unwrap();
    let expected = "{\n    \"type\": \"function\",\n    \"function\": {\n        \
        \"name\": \"get_weather\",\n        \"description\": \"Weather <now> & 'later' in Zürich\",\
        \n        \"parameters\": {\n            \"type\": \"object\",\n            \
        \"properties\": {\n                \"days\": {\n                    \
        \"type\": \"integer\",\n                    \"minimum\": 0.5\n                }\n            \
        },\n            \"required\": [\n                \"days\"\n            ]\n        }\n    \
        }\n}\n\nHello!<|eot_id|>";
    assert!(prompt.contains(expected), "{prompt}");
}

/// Mistral's and GLM's templates show the tools, and past calls in the form their calls are
/// read in.
#[test]
fn mistral_and_glm_templates_show_tools_and_past_calls() {
    let call = serde_json::json!([{"id": "abcDEF123", "type": "function",
        "function": {"name": "get_weather", "arguments": {"days": 2}}}]);
    let messages = vec![
        Message::user("Weather in Paris, in 2 days?"),
        Message::assistant("").with("tool_calls", call),
        Message::new("tool", "sunny")
            .with("tool_call_id", serde_json::json!("abcDEF123"))
            .with("name", serde_json::json!("get_weather")),
        Message::assistant("Sunny."),
        Message::user("And in 3?"),
    ];
    let cases = [
        ("Mistral-Small-3.2-24B-Instruct-2506.jinja", "[TOOL_CALLS]"),
        ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "[TOOL_CALLS]"),
        ("unsloth-mistral-Devstral-Small-2507.jinja", "[TOOL_CALLS]"),
        ("GLM-4.6.jinja", "<arg_key>days</arg_key>"),
        ("GLM-4.7-Flash.jinja", "<arg_key>days</arg_key>"),
    ];
    for (file, call) in cases {
        let options = RenderOptions::new(true).set_json("tools", TOOLS).unwrap();
        let prompt = template(file).render_with(&messages, &options).unwrap();
        for mark in [call, "get_weather", "sunny"] {
            assert!(prompt.contains(mark), "{file}: no {mark} in {prompt}");
        }
    }
}

#[test]
fn qwen3_takes_extra_variables() {
    let qwen3 = template("Qwen-Qwen3-0.6B.jinja");
    let thinking = qwen3.render(&conversation(), true).unwrap();
    assert!(thinking.ends_with("<|im_start|>assistant\n"), "{thinking}");
    let options = RenderOptions::new(true)
        .set_json("enable_thinking", "false")
        .unwrap();
    let direct = qwen3.render_with(&conversation(), &options).unwrap();
    assert!(
        direct.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        "{direct}"
    );
}

#[test]
fn bad_json_variables_are_errors_naming_the_variable() {
    let err = RenderOptions::new(true)
        .set_json("tools", "[{")
        .unwrap_err();
    assert!(matches!(&err, ChatError::Json { name, .. } if name == "tools"));
    assert!(err.to_string().contains("'tools'"), "{err}");
}

#[test]
fn llama_3_2_puts_todays_date_in_the_system_prompt() {
    let prompt = template("meta-llama-Llama-3.2-3B-Instruct.jinja")
        .render(&conversation(), true)
        .unwrap();
    let date = prompt
        .split("Today Date: ")
        .nth(1)
        .and_then(|rest| rest.split('\n').next())
        .unwrap_or_else(|| panic!("no date in {prompt}"));
    // "%d %b %Y", e.g. "05 Mar 2026".
    let parts: Vec<&str> = date.split(' ').collect();
    assert_eq!(parts.len(), 3, "{date}");
    assert!(parts[0].len() == 2 && parts[0].parse::<u32>().is_ok_and(|d| (1..=31).contains(&d)));
    assert!(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
            .contains(&parts[1])
    );
    assert!(parts[2].parse::<u32>().is_ok_and(|y| y >= 2025), "{date}");
}

fn model_path(name: &str) -> PathBuf {
    vibrant::catalog::models_dir().join(format!("{name}.gguf"))
}

#[test]
fn installed_models_own_templates_render_chatml_exactly() {
    for (model, bos, eos) in [
        ("smollm2-135m", "<|im_start|>", "<|im_end|>"),
        ("qwen2.5-coder-0.5b", "<|endoftext|>", "<|im_end|>"),
        ("qwen2.5-coder-1.5b-q4", "<|endoftext|>", "<|im_end|>"),
    ] {
        let file = GgufFile::open(model_path(model)).unwrap_or_else(|e| panic!("{e}"));
        let template = ChatTemplate::from_gguf(&file).unwrap_or_else(|e| panic!("{e}"));
        assert!(!template.is_builtin_fallback(), "{model}");
        assert_eq!((template.bos_token(), template.eos_token()), (bos, eos));
        assert_eq!(
            template.render(&conversation(), true).unwrap(),
            CHATML,
            "{model}"
        );
    }
}

/// A GGUF image with just an architecture and a vocabulary.
fn vocab_only_file(architecture: &str, tokens: &[&str], bos: u32, eos: u32) -> GgufFile {
    let mut writer = GgufWriter::new();
    writer
        .set("general.architecture", Value::String(architecture.into()))
        .set(
            "tokenizer.ggml.tokens",
            Value::string_array(tokens.iter().copied()),
        )
        .set("tokenizer.ggml.bos_token_id", Value::U32(bos))
        .set("tokenizer.ggml.eos_token_id", Value::U32(eos));
    let mut bytes = Vec::new();
    writer.write(&mut bytes).unwrap();
    GgufFile::from_bytes(format!("{architecture}-vocab.gguf"), bytes).unwrap()
}

#[test]
fn files_without_a_template_fall_back_to_chatml_when_the_vocab_has_im_start() {
    let file = vocab_only_file(
        "qwen2",
        &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        0,
        2,
    );
    let template = ChatTemplate::from_gguf(&file).unwrap();
    assert_eq!(template.builtin_format(), Some(BuiltinFormat::ChatMl));
    assert_eq!(template.render(&conversation(), true).unwrap(), CHATML);
}

#[test]
fn llama_3_vocabulary_falls_back_to_llama_3_headers() {
    let file = vocab_only_file(
        "llama",
        &[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|eot_id|>",
        ],
        0,
        1,
    );
    let template = ChatTemplate::from_gguf(&file).unwrap();
    assert!(template.is_builtin_fallback());
    assert_eq!(template.builtin_format(), Some(BuiltinFormat::Llama3));
    assert_eq!(
        template.render(&conversation(), true).unwrap(),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         You are a helpful assistant.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nHi there! How can I help?<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn other_llama_vocabularies_fall_back_to_inst_blocks() {
    let file = vocab_only_file("llama", &["<unk>", "<s>", "</s>"], 1, 2);
    let template = ChatTemplate::from_gguf(&file).unwrap();
    assert_eq!(template.builtin_format(), Some(BuiltinFormat::Llama2));
    assert_eq!(
        template.render(&conversation(), true).unwrap(),
        "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHello! [/INST] \
         Hi there! How can I help? </s><s>[INST] What is 2+2? [/INST]"
    );
    assert_eq!(
        template.render(&conversation()[1..2], true).unwrap(),
        "<s>[INST] Hello! [/INST]"
    );
}

#[test]
fn other_architectures_without_a_template_are_an_error_naming_the_file() {
    let file = vocab_only_file("gpt2", &["<|endoftext|>"], 0, 0);
    let err = ChatTemplate::from_gguf(&file).unwrap_err();
    assert!(matches!(&err, ChatError::NoTemplate { architecture, .. } if architecture == "gpt2"));
    assert!(err.to_string().contains("gpt2-vocab.gguf"), "{err}");
}

#[test]
fn out_of_range_special_token_ids_are_errors() {
    let file = vocab_only_file("llama", &["<s>", "</s>"], 0, 7);
    let err = ChatTemplate::from_gguf(&file).unwrap_err();
    assert!(
        matches!(&err, ChatError::TokenId { key, id: 7, n_tokens: 2, .. }
            if key == "tokenizer.ggml.eos_token_id"),
        "{err}"
    );
}

#[test]
fn raise_exception_is_an_error_carrying_its_message_and_line() {
    let template = ChatTemplate::from_source(
        "{%- for m in messages %}\n\
         {%- if m.role == 'assistant' %}{{ raise_exception('Roles must alternate user/assistant') }}{% endif %}\n\
         {%- endfor %}",
        "",
        "",
    )
    .unwrap();
    let err = template.render(&conversation(), true).unwrap_err();
    match &err {
        ChatError::Raised {
            template,
            line,
            message,
        } => {
            assert_eq!(template, "chat_template");
            assert_eq!(*line, Some(2));
            assert_eq!(message, "Roles must alternate user/assistant");
        }
        other => panic!("expected a raised exception, got {other:?}"),
    }
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn syntax_errors_name_the_template_and_line() {
    let err = ChatTemplate::from_named_source(
        "broken.jinja",
        "{% for m in messages %}\n{{ m.content }}\n{% if %}\n{% endfor %}",
        "",
        "",
    )
    .unwrap_err();
    assert!(
        matches!(&err, ChatError::Syntax { template, line: Some(3), .. } if template == "broken.jinja"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("'broken.jinja', line 3"), "{text}");
    assert!(text.contains("syntax error"), "{text}");
}

#[test]
fn render_errors_name_the_template_and_line() {
    let template = ChatTemplate::from_named_source(
        "strict.jinja",
        "{{ bos_token }}\n{{ messages[0].metadata.source }}",
        "",
        "",
    )
    .unwrap();
    let err = template.render(&conversation(), true).unwrap_err();
    assert!(
        matches!(&err, ChatError::Render { template, line: Some(2), .. } if template == "strict.jinja"),
        "{err:?}"
    );
}

#[test]
fn tools_and_documents_are_undefined_unless_given() {
    let template = ChatTemplate::from_source(
        "{{ tools is defined }} {{ documents is defined }} {{ bos_token }}{{ eos_token }}",
        "<s>",
        "</s>",
    )
    .unwrap();
    assert_eq!(template.render(&[], false).unwrap(), "False False <s></s>");
    let options = RenderOptions::new(false)
        .set_json("documents", r#"[{"title": "t"}]"#)
        .unwrap();
    assert_eq!(
        template.render_with(&[], &options).unwrap(),
        "False True <s></s>"
    );
}

/// `vibrant serve` reads tool calls from the templates that ask for JSON ones, in
/// `<tool_call>` tags (Qwen, Hermes, Granite) or bare (Llama 3.1–3.3), for XML-like ones of
/// `<function=…>` and `<parameter=…>` tags (Qwen3-Coder, Qwen3.5, Nemotron 3, Step 3.5), for
/// a name and `<arg_key>`/`<arg_value>` pairs (GLM 4.6–4.7, Ling 3, Laguna, Spark 2.5), and for
/// Mistral's after `[TOOL_CALLS]`; not the others' (Hunyuan 3's), whose tools are refused
/// rather than misread, nor a template without tools.
#[test]
fn serve_reads_tool_calls_of_the_formats_it_knows() {
    let reads = |file: &str| {
        let path = templates_dir().join(file);
        vibrant::serve::template_calls_tools(&std::fs::read_to_string(path).unwrap())
    };
    for file in [
        "Qwen-Qwen2.5-7B-Instruct.jinja",
        "Qwen-Qwen3-0.6B.jinja",
        "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
        "ibm-granite-granite-4.0.jinja",
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        "meta-llama-Llama-3.3-70B-Instruct.jinja",
        "Qwen3-Coder.jinja",
        "Qwen3.5-4B.jinja",
        "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.jinja",
        "StepFun3.5-Flash.jinja",
        "Mistral-Small-3.2-24B-Instruct-2506.jinja",
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
        "unsloth-mistral-Devstral-Small-2507.jinja",
        "GLM-4.6.jinja",
        "GLM-4.7-Flash.jinja",
        "inclusionai-ling-3.0-flash.jinja",
        "poolside-Laguna-XS.2.jinja",
        "Spark2.5.jinja",
    ] {
        assert!(reads(file), "{file}");
    }
    for file in ["tencent-Hy3.jinja", "google-gemma-2-2b-it.jinja"] {
        assert!(!reads(file), "{file}");
    }
}
