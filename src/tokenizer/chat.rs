//! Chat templates: the model's Jinja template rendered with minijinja, set up the way
//! transformers renders them (trim_blocks, lstrip_blocks, `raise_exception`,
//! `strftime_now`, `tojson`, Python string and dict methods).

use anyhow::{anyhow, Result};
use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
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

impl ChatTemplate {
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| anyhow!("the chat template does not compile: {e}"))?;
        Ok(Self {
            env,
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| anyhow!("chat template: {e}"))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
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
        }
    }

    #[test]
    fn renders_hf_style_templates() {
        let src = "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<sys>default</sys>\n{% endif %}\
                   <{{ m.role }}>{{ m['content'].strip() }}</{{ m.role }}>\n{% endfor %}\
                   {% if add_generation_prompt %}<assistant>{% endif %}{{ messages[0] | tojson }}";
        let t = ChatTemplate::new(src, Some("<s>"), Some("</s>")).unwrap();
        let out = t.render(&[msg("user", "  hi  ")], true).unwrap();
        assert_eq!(out, "<sys>default</sys>\n<user>hi</user>\n<assistant>{\"role\":\"user\",\"content\":\"  hi  \"}");
        let out = t
            .render(&[msg("system", "s"), msg("user", "u")], false)
            .unwrap();
        assert!(
            out.starts_with("<system>s</system>\n<user>u</user>"),
            "{out}"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let src = "{% if messages[0].role == 'bot' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}ok";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let e = t.render(&[msg("bot", "x")], true).unwrap_err().to_string();
        assert!(e.contains("Conversation roles must alternate"), "{e}");
        assert_eq!(t.render(&[msg("user", "x")], true).unwrap(), "ok");
        assert!(ChatTemplate::new("{% for %}", None, None).is_err());
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", None, None).unwrap();
        assert_eq!(t.render(&[], false).unwrap().len(), 4);
    }
}
