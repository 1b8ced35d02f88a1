//! Request bodies: content type, size, JSON syntax and shape, each with the status TGI
//! (through axum) answers, but always with a JSON error body.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::error::ApiError;

/// The body of a JSON request as a handler receives it.
pub type Body = Result<Bytes, BytesRejection>;

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// The body as JSON: 415 without a JSON content type, 413 over the payload limit, 400
/// when it is not JSON, 422 when it does not have the expected shape.
pub fn value(headers: &HeaderMap, body: Body) -> Result<serde_json::Value, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "validation",
            "Expected request with `Content-Type: application/json`",
        ));
    }
    let bytes = body.map_err(|r| {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "validation", "Request body is too large")
        } else {
            ApiError::new(status, "validation", r.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        let (status, what) = if e.is_data() {
            (StatusCode::UNPROCESSABLE_ENTITY, "deserialize")
        } else {
            (StatusCode::BAD_REQUEST, "parse")
        };
        ApiError::new(
            status,
            "validation",
            format!("Failed to {what} the JSON body: {e}"),
        )
    })
}

/// A JSON value as the request type `T` (422 when it does not fit).
pub fn from_value<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| {
        ApiError::validation(format!(
            "Failed to deserialize the JSON body into the target type: {e}"
        ))
    })
}

/// The body as `T`.
pub fn parse<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    from_value(value(headers, body)?)
}

/// `null` as the type's default (clients send explicit nulls for unset parameters).
pub fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One string or a list of strings (`stop`), `null` being an empty list.
pub fn string_or_list<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

/// A seed given as any JSON integer (negative ones wrap, as OpenAI clients may send
/// them); `null` is none.
pub fn seed<'de, D>(d: D) -> Result<Option<u64>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        U(u64),
        I(i64),
    }
    Ok(Option::<Int>::deserialize(d)?.map(|i| match i {
        Int::U(u) => u,
        Int::I(i) => i as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[test]
    fn statuses() {
        let ok = value(
            &headers("application/json; charset=utf-8"),
            Ok(Bytes::from("{}")),
        );
        assert!(ok.is_ok());
        assert!(value(&headers("application/vnd.api+json"), Ok(Bytes::from("[]"))).is_ok());
        let e = value(&headers("text/plain"), Ok(Bytes::from("{}"))).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let e = value(&HeaderMap::new(), Ok(Bytes::from("{}"))).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let e = value(&headers("application/json"), Ok(Bytes::from("{\"a\":"))).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            a: u32,
        }
        let e =
            parse::<T>(&headers("application/json"), Ok(Bytes::from("{\"a\":-1}"))).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.message.contains("invalid value"), "{}", e.message);
    }

    #[test]
    fn nulls_and_lists() {
        #[derive(Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "null_default")]
            flag: bool,
            #[serde(default, deserialize_with = "string_or_list")]
            stop: Vec<String>,
            #[serde(default, deserialize_with = "seed")]
            seed: Option<u64>,
        }
        let t: T = serde_json::from_str(r#"{"flag": null, "stop": null, "seed": null}"#).unwrap();
        assert!(!t.flag && t.stop.is_empty() && t.seed.is_none());
        let t: T = serde_json::from_str(r#"{"flag": true, "stop": "x", "seed": -1}"#).unwrap();
        assert!(t.flag);
        assert_eq!(t.stop, vec!["x"]);
        assert_eq!(t.seed, Some(u64::MAX));
        let t: T =
            serde_json::from_str(r#"{"stop": ["a", "b"], "seed": 18446744073709551615}"#).unwrap();
        assert_eq!(t.stop, vec!["a", "b"]);
        assert_eq!(t.seed, Some(u64::MAX));
        let t: T = serde_json::from_str("{}").unwrap();
        assert!(!t.flag && t.stop.is_empty() && t.seed.is_none());
    }
}
