//! Structured output and tools on the wire: TGI's `grammar` (and its chat
//! `response_format`), OpenAI's `response_format`, `tools`, `tool_choice` and the tool
//! calls of a conversation's history.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// TGI's `parameters.grammar`: `{"type": "json" | "json_object", "value": <JSON Schema,
/// or a string holding one>}` or `{"type": "regex", "value": "<regex>"}`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq)]
#[serde(tag = "type", content = "value")]
pub enum GrammarParam {
    #[serde(rename = "json", alias = "json_object")]
    #[schema(value_type = Object)]
    Json(Value),
    #[serde(rename = "regex")]
    Regex(String),
}

/// OpenAI's `json_schema` response format.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default)]
    #[schema(nullable)]
    pub description: Option<String>,
    /// Absent: any JSON object.
    #[serde(default)]
    #[schema(nullable, value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// Accepted; the output always follows the schema.
    #[serde(default)]
    #[schema(nullable)]
    pub strict: Option<bool>,
}

/// A chat or completion `response_format`: OpenAI's `text`, `json_object` and
/// `json_schema`, and TGI's chat form (`{"type": "json" | "json_object", "value"}`,
/// `{"type": "regex", "value"}`).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq)]
#[serde(tag = "type")]
pub enum ResponseFormat {
    #[serde(rename = "text")]
    Text,
    /// Without `value`: any JSON object (OpenAI); with it, that schema (TGI).
    #[serde(rename = "json_object", alias = "json")]
    JsonObject {
        #[serde(default)]
        #[schema(nullable, value_type = Option<Object>)]
        value: Option<Value>,
    },
    #[serde(rename = "json_schema")]
    JsonSchema { json_schema: JsonSchemaFormat },
    #[serde(rename = "regex")]
    Regex { value: String },
}

/// A tool's function: `name` (letters, digits, `_` and `-`, at most 64), what it does,
/// and the JSON Schema of its arguments (absent: no arguments).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq)]
pub struct FunctionDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable)]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable, value_type = Option<Object>)]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable)]
    pub strict: Option<bool>,
}

/// One of a chat request's `tools`: `{"type": "function", "function": {...}}`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq)]
pub struct Tool {
    /// `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionDefinition,
}

fn function_type() -> String {
    "function".into()
}

/// `tool_choice`: `"none"`, `"auto"`, `"required"`, or a named function (OpenAI's
/// `{"type": "function", "function": {"name"}}`, or TGI's bare name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Function(String),
}

impl<'de> Deserialize<'de> for ToolChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        match &v {
            Value::String(s) => Ok(match s.as_str() {
                "none" => ToolChoice::None,
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                name => ToolChoice::Function(name.to_string()),
            }),
            Value::Object(o) => {
                if let Some(kind) = o.get("type").and_then(Value::as_str) {
                    if kind != "function" {
                        return Err(D::Error::custom(format!(
                            "tool_choice of type {kind:?} is not supported: expected \"function\""
                        )));
                    }
                }
                match o.get("function").and_then(|f| f.get("name")) {
                    Some(Value::String(name)) => Ok(ToolChoice::Function(name.clone())),
                    _ => Err(D::Error::custom(
                        "tool_choice must be \"none\", \"auto\", \"required\" or \
                         {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )),
                }
            }
            _ => Err(D::Error::custom(
                "tool_choice must be \"none\", \"auto\", \"required\" or \
                 {\"type\": \"function\", \"function\": {\"name\": ...}}",
            )),
        }
    }
}

/// The function an earlier assistant turn called.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq)]
pub struct FunctionCallIn {
    pub name: String,
    /// A JSON string (OpenAI) or an object.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub arguments: Value,
}

/// An earlier assistant turn's tool call, as sent back in the history.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq)]
pub struct ToolCallIn {
    #[serde(default)]
    #[schema(nullable)]
    pub id: Option<String>,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCallIn,
}

/// A call in an answer: `arguments` is the JSON text the model wrote.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct FunctionCallOut {
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct ToolCallOut {
    pub id: String,
    /// `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut,
}

/// A streamed call's fragment: the first carries `id`, `type` and `function.name` (with
/// `arguments: ""`), the later ones only `index` and an arguments fragment.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionCallDelta,
}

#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct FunctionCallDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_forms() {
        let g: GrammarParam =
            serde_json::from_value(json!({"type": "json_object", "value": "{}"})).unwrap();
        assert_eq!(g, GrammarParam::Json(json!("{}")));
        let g: GrammarParam =
            serde_json::from_value(json!({"type": "regex", "value": "a+"})).unwrap();
        assert_eq!(g, GrammarParam::Regex("a+".into()));
        assert!(
            serde_json::from_value::<GrammarParam>(json!({"type": "lark", "value": ""})).is_err()
        );
        assert!(serde_json::from_value::<GrammarParam>(json!("x")).is_err());

        let f: ResponseFormat = serde_json::from_value(json!({"type": "text"})).unwrap();
        assert_eq!(f, ResponseFormat::Text);
        let f: ResponseFormat = serde_json::from_value(json!({"type": "json_object"})).unwrap();
        assert_eq!(f, ResponseFormat::JsonObject { value: None });
        let f: ResponseFormat = serde_json::from_value(json!({"type": "json_schema",
            "json_schema": {"name": "P", "schema": {"type": "object"}, "strict": true}}))
        .unwrap();
        assert!(matches!(f, ResponseFormat::JsonSchema { json_schema } if json_schema.name == "P"));
        assert!(serde_json::from_value::<ResponseFormat>(
            json!({"type": "json_schema", "json_schema": {}})
        )
        .is_err());
        assert!(serde_json::from_value::<ResponseFormat>(json!({"type": "xml"})).is_err());

        for (v, c) in [
            (json!("none"), ToolChoice::None),
            (json!("auto"), ToolChoice::Auto),
            (json!("required"), ToolChoice::Required),
            (json!("f"), ToolChoice::Function("f".into())),
            (
                json!({"type": "function", "function": {"name": "g"}}),
                ToolChoice::Function("g".into()),
            ),
        ] {
            assert_eq!(serde_json::from_value::<ToolChoice>(v).unwrap(), c);
        }
        for bad in [
            json!(3),
            json!({"type": "function"}),
            json!({"type": "x", "function": {"name": "g"}}),
        ] {
            assert!(
                serde_json::from_value::<ToolChoice>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        assert!(serde_json::from_value::<Tool>(json!({"type": "function"})).is_err());
        assert!(serde_json::from_value::<Tool>(json!({"function": {"description": "x"}})).is_err());
        let t: Tool = serde_json::from_value(json!({"function": {"name": "f"}})).unwrap();
        assert_eq!(t.kind, "function");
    }
}
