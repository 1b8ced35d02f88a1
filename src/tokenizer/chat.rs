//! Chat templates: the model's Jinja template rendered with minijinja, set up the way
//! transformers renders them: trim_blocks and lstrip_blocks, `raise_exception`,
//! `strftime_now`, a `tojson` that writes what Python's `json.dumps` writes, loop
//! controls, and Python string and dict methods (`.strip()`, `.startswith()`,
//! `.items()`, `.get()`, ...).

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's tool calls, as transformers gives them to templates:
    /// `{"id", "type": "function", "function": {"name", "arguments": {...}}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A `tool` turn's call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The author's name (a `tool` turn's function).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A message as templates see it: a dict whose keys keep Python's insertion order
/// (`role`, `content`, then the tool fields it has) for `tojson` and `.items()`.
#[derive(Debug)]
struct MessageObject(ChatMessage);

impl Object for MessageObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let m = &self.0;
        match key.as_str()? {
            "role" => Some(Value::from(m.role.as_str())),
            "content" => Some(Value::from(m.content.as_str())),
            "tool_calls" => m.tool_calls.as_ref().map(Value::from_serialize),
            "tool_call_id" => m.tool_call_id.as_deref().map(Value::from),
            "name" => m.name.as_deref().map(Value::from),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let m = &self.0;
        let mut keys = vec![Value::from("role"), Value::from("content")];
        if m.tool_calls.is_some() {
            keys.push(Value::from("tool_calls"));
        }
        if m.tool_call_id.is_some() {
            keys.push(Value::from("tool_call_id"));
        }
        if m.name.is_some() {
            keys.push(Value::from("name"));
        }
        Enumerator::Values(keys)
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    takes_tools: bool,
    takes_tool_calls: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(format: String) -> Result<String, Error> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item> = StrftimeItems::new(&format).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("bad strftime format '{format}'"),
        ));
    }
    Ok(chrono::Local::now()
        .format_with_items(items.into_iter())
        .to_string())
}

/// Options of Python's `json.dumps` that templates pass to `tojson`.
struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A line break and `depth` indents, when the style indents.
fn json_newline(style: &JsonStyle, depth: usize, out: &mut String) {
    if let Some(ind) = &style.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(ind);
        }
    }
}

/// An array or object: `open`, the items (written by `item`) separated by the style's
/// item separator, each on a line of its own when the style indents, then `close`.
fn json_container<T>(
    items: &[T],
    (open, close): (char, char),
    style: &JsonStyle,
    depth: usize,
    out: &mut String,
    mut item: impl FnMut(&T, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if !items.is_empty() {
        for (i, it) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&style.item_sep);
            }
            json_newline(style, depth + 1, out);
            item(it, out)?;
        }
        json_newline(style, depth, out);
    }
    out.push(close);
    Ok(())
}

fn json_value(v: &Value, style: &JsonStyle, depth: usize, out: &mut String) -> Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            // Python prints floats with a fractional part (1.0), as minijinja does.
            let s = v.to_string();
            out.push_str(match s.as_str() {
                "inf" => "Infinity",
                "-inf" => "-Infinity",
                "nan" | "NaN" => "NaN",
                s => s,
            });
        }
        ValueKind::String => json_string(v.as_str().unwrap_or_default(), style.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            json_container(&items, ('[', ']'), style, depth, out, |item, out| {
                json_value(item, style, depth + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if style.sort_keys {
                keys.sort();
            }
            json_container(&keys, ('{', '}'), style, depth, out, |key, out| {
                match key.as_str() {
                    Some(k) => json_string(k, style.ensure_ascii, out),
                    None => json_string(&key.to_string(), style.ensure_ascii, out),
                }
                out.push_str(&style.key_sep);
                json_value(&v.get_item(key)?, style, depth + 1, out)
            })?;
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson cannot serialize a {} value", v.kind()),
            ))
        }
    }
    Ok(())
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, not HTML-escaped.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => Some(" ".repeat(i64::try_from(v)?.max(0) as usize)),
        },
    };
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([a, b]) => (a.clone(), b.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson separators must be a pair",
            ))
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    json_value(&value, &style, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// transformers' `{% generation %}` marks assistant text for masks and renders nothing
/// itself. minijinja does not know the tag, so it becomes an `{% if true %}` block, which
/// leaves whitespace control as it was.
fn replace_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}").map(|e| e + 2) else {
            break;
        };
        let tag = &rest[start..start + len];
        let word =
            tag[2..len - 2].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        match word {
            "generation" => out.push_str(&tag.replacen("generation", "if true", 1)),
            "endgeneration" => out.push_str(&tag.replacen("endgeneration", "endif", 1)),
            _ => out.push_str(tag),
        }
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        // Python's iter(): None and numbers are not iterable, strings are.
        env.add_test("iterable", |v: Value| {
            matches!(
                v.kind(),
                ValueKind::Undefined
                    | ValueKind::String
                    | ValueKind::Seq
                    | ValueKind::Map
                    | ValueKind::Iterable
                    | ValueKind::Bytes
            )
        });
        env.add_template_owned("chat", replace_generation_tags(source))
            .map_err(|e| anyhow!("the chat template does not compile: {e}"))?;
        let takes_tools = env
            .get_template("chat")
            .map(|t| t.undeclared_variables(false).contains("tools"))
            .unwrap_or(false);
        Ok(Self {
            env,
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
            takes_tools,
            takes_tool_calls: source.contains("tool_calls"),
        })
    }

    /// Whether the template renders a `tools` list (else the caller describes the tools
    /// in a message).
    pub fn takes_tools(&self) -> bool {
        self.takes_tools
    }

    /// Whether the template renders assistant turns' `tool_calls` (else the caller
    /// writes them into the turn's content).
    pub fn takes_tool_calls(&self) -> bool {
        self.takes_tool_calls
    }

    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, add_generation_prompt, None)
    }

    /// Renders with `tools` (transformers' form: a list of `{"type": "function",
    /// "function": {...}}`), or none.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&[serde_json::Value]>,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| anyhow!("chat template: {e}"))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_object(MessageObject(m.clone())))
            .collect();
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
            // transformers passes these as None when the caller has none.
            tools => tools.map(Value::from_serialize),
            documents => (),
        })
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidOperation => anyhow!(
                "the chat template rejected the conversation: {}",
                e.detail().unwrap_or("error")
            ),
            _ => anyhow!("chat template failed: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            ..Default::default()
        }
    }

    #[test]
    fn tools_and_tool_calls_reach_templates() {
        // A Qwen-style template: tools listed, calls and results rendered.
        let src = "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>{% endif %}\
                   {% for m in messages %}<{{ m.role }}>{{ m.content }}\
                   {% if m.tool_calls %}{% for c in m.tool_calls %}[{{ c.function.name }} {{ c.function.arguments | tojson }}]{% endfor %}{% endif %}\
                   {% if m.tool_call_id %}({{ m.tool_call_id }}){% endif %}{% endfor %}";
        let t = ChatTemplate::new(src, None, None).unwrap();
        assert!(t.takes_tools() && t.takes_tool_calls());
        let call = ChatMessage {
            role: "assistant".into(),
            tool_calls: Some(vec![serde_json::json!({"id": "c1", "type": "function",
                "function": {"name": "add", "arguments": {"a": 1}}})]),
            ..Default::default()
        };
        let result = ChatMessage {
            role: "tool".into(),
            content: "3".into(),
            tool_call_id: Some("c1".into()),
            ..Default::default()
        };
        let tools = [serde_json::json!({"type": "function", "function": {"name": "add"}})];
        let out = t
            .render_with_tools(&[msg("user", "u"), call, result], false, Some(&tools))
            .unwrap();
        assert_eq!(
            out,
            r#"<tools>add;</tools><user>u<assistant>[add {"a": 1}]<tool>3(c1)"#
        );
        assert!(t
            .render(&[msg("user", "u")], false)
            .unwrap()
            .starts_with("<user>"));
        let plain = ChatTemplate::new(
            "{% for m in messages %}{{ m.content }}{% endfor %}",
            None,
            None,
        )
        .unwrap();
        assert!(!plain.takes_tools() && !plain.takes_tool_calls());
    }

    fn render(src: &str, messages: &[ChatMessage], gen: bool) -> Result<String> {
        ChatTemplate::new(src, Some("<s>"), Some("</s>"))?.render(messages, gen)
    }

    #[test]
    fn renders_hf_style_templates() {
        let src = "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<sys>default</sys>\n{% endif %}\
                   <{{ m.role }}>{{ m['content'].strip() }}</{{ m.role }}>\n{% endfor %}\
                   {% if add_generation_prompt %}<assistant>{% endif %}";
        let out = render(src, &[msg("user", "  hi  ")], true).unwrap();
        assert_eq!(out, "<sys>default</sys>\n<user>hi</user>\n<assistant>");
        let out = render(src, &[msg("system", "s"), msg("user", "u")], false).unwrap();
        assert_eq!(out, "<system>s</system>\n<user>u</user>\n");
    }

    #[test]
    fn system_message_split_off_as_hf_templates_do() {
        // The Llama-2 / Mistral idiom.
        let src = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}\
                   {% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}\
                   {% set system_message = false %}{% endif %}\
                   {% for message in loop_messages %}\
                   {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\
                   {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}\
                   {% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}\
                   {% else %}{% set content = message['content'] %}{% endif %}\
                   {% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}\
                   {% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
        let out = render(
            src,
            &[msg("system", "Be brief."), msg("user", "Hi ")],
            false,
        )
        .unwrap();
        assert_eq!(out, "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]");
        let e = render(src, &[msg("user", "a"), msg("user", "b")], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Conversation roles must alternate"), "{e}");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let src = "{% if messages[0].role == 'bot' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}ok";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let e = t.render(&[msg("bot", "x")], true).unwrap_err().to_string();
        assert!(e.contains("Conversation roles must alternate"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert_eq!(t.render(&[msg("user", "x")], true).unwrap(), "ok");
        assert!(ChatTemplate::new("{% for %}", None, None).is_err());
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", None, None).unwrap();
        assert_eq!(t.render(&[], false).unwrap().len(), 4);
        // Like transformers: `tools` is none, which Python does not iterate.
        let t = ChatTemplate::new(
            "{{ tools is none }} {{ tools is iterable }} {{ 'a' is iterable }} {{ messages is iterable }}",
            None,
            None,
        )
        .unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "True False True True");
        let t = ChatTemplate::new("{{ strftime_now('%d %B %Y') }}", None, None).unwrap();
        assert!(t.render(&[], false).unwrap().len() >= 10);
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let m = [msg("user", "a \"q\" <b> é\n")];
        assert_eq!(
            render("{{ messages[0] | tojson }}", &m, false).unwrap(),
            r#"{"role": "user", "content": "a \"q\" <b> é\n"}"#
        );
        assert_eq!(
            render("{{ messages | tojson(indent=2) }}", &m, false).unwrap(),
            "[\n  {\n    \"role\": \"user\",\n    \"content\": \"a \\\"q\\\" <b> é\\n\"\n  }\n]"
        );
        assert_eq!(
            render("{{ [1, 2.5, none, true, 'x'] | tojson(ensure_ascii=true) }}{{ 'é' | tojson(ensure_ascii=true) }}", &m, false).unwrap(),
            r#"[1, 2.5, null, true, "x"]"\u00e9""#
        );
        assert_eq!(
            render(
                "{{ {'b': 1, 'a': [1]} | tojson(separators=(',', ':'), sort_keys=true) }}",
                &m,
                false
            )
            .unwrap(),
            r#"{"a":[1],"b":1}"#
        );
    }

    #[test]
    fn python_methods_and_loop_controls() {
        let m = [
            msg("user", "  Hello World  "),
            msg("assistant", "x<think>t</think>answer"),
        ];
        let src = "{% for m in messages %}{% if loop.last %}{% break %}{% endif %}\
                   {{ m.content.strip().lower() }}|{{ m.content.split() | join(',') }}|{{ m.content.startswith('  H') }}|\
                   {{ m.content.strip().endswith('World') }}|{{ m.content.replace('World', 'there').strip() }}|\
                   {{ 'ab cd'.title() }}|{{ 'ab'.upper() }}|{% for k, v in m.items() %}{{ k }}={{ v.strip() }};{% endfor %}\
                   {{ m.get('missing', 'dflt') }}|{{ 'content' in m }}{% endfor %}\
                   {{ messages[-1].content.split('</think>')[-1] }}";
        assert_eq!(
            render(src, &m, false).unwrap(),
            "hello world|Hello,World|True|True|Hello there|Ab Cd|AB|role=user;content=Hello World;dflt|Trueanswer"
        );
    }

    #[test]
    fn generation_tags_and_whitespace_control() {
        // trim_blocks drops the newline after a block tag, lstrip_blocks the indentation
        // before it, as transformers configures Jinja.
        let src = "{% for m in messages %}\n    {% if m.role == 'assistant' %}\n{% generation %}{{ m.content }}{% endgeneration %}\n    {% else %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}";
        let out = render(src, &[msg("user", "u"), msg("assistant", "a")], false).unwrap();
        assert_eq!(out, "u\na");
    }
}
