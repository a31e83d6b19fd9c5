//! The Python-compatibility layer, checked against what transformers' Jinja2 environment
//! (Python 3.11, Jinja2 3.1) prints for the same snippets.

use super::env::{environment, replace_generation_tags};
use super::python::float_repr;
use minijinja::context;

fn render(source: &str) -> String {
    environment()
        .render_str(source, ())
        .unwrap_or_else(|e| panic!("{source}: {e}"))
}

const DICT: &str = r#"{'b': [1, 2.5, 'x\n"q"'], 'a': none, 'é': {'t': true, 'e': {}, 'l': []}}"#;

#[test]
fn tojson_matches_python_json_dumps() {
    assert_eq!(
        render(&format!("{{{{ {DICT} | tojson }}}}")),
        r#"{"b": [1, 2.5, "x\n\"q\""], "a": null, "é": {"t": true, "e": {}, "l": []}}"#
    );
    assert_eq!(
        render(&format!("{{{{ {DICT} | tojson(indent=2) }}}}")),
        "{\n  \"b\": [\n    1,\n    2.5,\n    \"x\\n\\\"q\\\"\"\n  ],\n  \"a\": null,\n  \
         \"é\": {\n    \"t\": true,\n    \"e\": {},\n    \"l\": []\n  }\n}"
    );
    assert_eq!(
        render(&format!(
            "{{{{ {DICT} | tojson(ensure_ascii=True, separators=(',', ':'), sort_keys=true) }}}}"
        )),
        r#"{"a":null,"b":[1,2.5,"x\n\"q\""],"\u00e9":{"e":{},"l":[],"t":true}}"#
    );
}

#[test]
fn tojson_does_not_html_escape_and_escapes_non_ascii_only_on_request() {
    assert_eq!(
        render("{{ '<a> & \\'b\\' 😀 \x7f' | tojson }}|{{ '<a> & 😀 \x7f' | tojson(ensure_ascii=true) }}"),
        "\"<a> & 'b' 😀 \x7f\"|\"<a> & \\ud83d\\ude00 \\u007f\""
    );
}

#[test]
fn tojson_writes_floats_as_python_does() {
    assert_eq!(
        render("{{ [1e16, 1e15, 0.0001, 0.00001, 1.0, -2.5e-7, 123456789.125, 1e100] | tojson }}"),
        "[1e+16, 1000000000000000.0, 0.0001, 1e-05, 1.0, -2.5e-07, 123456789.125, 1e+100]"
    );
}

#[test]
fn tojson_refuses_undefined_and_bad_options() {
    let env = environment();
    for source in [
        "{{ nothing | tojson }}",
        "{{ 1 | tojson(indent=[1]) }}",
        "{{ 1 | tojson(separators=',') }}",
        "{{ 1 | tojson(colour=1) }}",
    ] {
        assert!(env.render_str(source, ()).is_err(), "{source} should fail");
    }
}

#[test]
fn float_repr_is_pythons() {
    for (f, repr) in [
        (0.1, "0.1"),
        (-0.0, "-0.0"),
        (100.0, "100.0"),
        (1.5e300, "1.5e+300"),
        (5e-324, "5e-324"),
        (0.000123, "0.000123"),
        (9_999_999_999_999_998.0, "9999999999999998.0"),
        (123_456_789_012_345_678.0, "1.2345678901234568e+17"),
    ] {
        assert_eq!(float_repr(f), repr, "{f}");
    }
}

#[test]
fn values_print_as_python_prints_them() {
    assert_eq!(
        render(
            "{{ none }}|{{ true }}|{{ false }}|{{ [1, 'a', none, true] }}|\
             {{ {'k': \"it's\", 'n': 1.5} }}|{{ 1e16 }}|{{ 2.0 }}|{{ x }}|{{ 'a\\tb'|list }}"
        ),
        "None|True|False|[1, 'a', None, True]|{'k': \"it's\", 'n': 1.5}|1e+16|2.0||['a', '\\t', 'b']"
    );
    assert_eq!(
        render("{{ {'a': none}|string }}|{{ none|string }}|{{ x|length }}|{{ [1,2]|length }}|{{ 'abc'|count }}"),
        "{'a': None}|None|0|2|3"
    );
}

#[test]
fn python_methods_work() {
    assert_eq!(
        render(
            "{{ '  hi  '.strip() }}|{{ 'a,b'.split(',') }}|{{ 'xyz'.startswith('x') }}|\
             {{ 'xyz'.endswith('y') }}|{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}|\
             {{ {'a': 1}.get('b', 'd') }}|{{ '\\n\\nx'.lstrip() }}|\
             {{ 'Hello World'.lower().title().replace('W', 'w') }}|{{ '{}-{}'.format(1, 'b') }}"
        ),
        "hi|['a', 'b']|True|False|a=1|d|x|Hello world|1-b"
    );
}

#[test]
fn namespace_and_loop_controls_work() {
    assert_eq!(
        render(
            "{% set ns = namespace(n=0) %}{% for i in range(10) %}\
             {% if i == 2 %}{% continue %}{% endif %}{% if i > 4 %}{% break %}{% endif %}\
             {% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"
        ),
        "8"
    );
}

#[test]
fn blocks_are_trimmed_like_transformers() {
    let out = environment()
        .render_str(
            "{% for m in messages %}\n  {% if loop.first %}\n{{ m }}\n  {% endif %}\n{% endfor %}\nend\n",
            context! { messages => ["a", "b"] },
        )
        .unwrap();
    assert_eq!(out, "a\nend");
}

#[test]
fn generation_blocks_become_scoped_blocks_on_the_same_lines() {
    let source = "{%- generation -%}\n{% set x = 1 %}{{ x }}\n{%+ endgeneration %}[{{ x }}]";
    let rewritten = replace_generation_tags(source);
    assert_eq!(
        rewritten,
        "{%- with -%}\n{% set x = 1 %}{{ x }}\n{%+ endwith %}[{{ x }}]"
    );
    // The `set` inside stays inside, as in transformers' call block.
    assert_eq!(render(&rewritten), "1\n[]");
    assert_eq!(replace_generation_tags("{{ '{%' }} %}"), "{{ '{%' }} %}");
}
