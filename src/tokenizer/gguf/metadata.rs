//! Typed reads of GGUF metadata values: integers of any width, floats, booleans (or
//! integers standing for them), strings and arrays, each by key.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use candle_core::quantized::gguf_file::Value;

/// GGUF metadata: key to value.
pub(super) type Metadata = HashMap<String, Value>;

pub(super) fn as_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

pub(super) fn as_f32(v: &Value) -> Option<f32> {
    match v {
        Value::F32(x) => Some(*x),
        Value::F64(x) => Some(*x as f32),
        other => as_i64(other).map(|x| x as f32),
    }
}

pub(super) fn get_str<'a>(md: &'a Metadata, key: &str) -> Option<&'a str> {
    match md.get(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

pub(super) fn get_bool(md: &Metadata, key: &str) -> Option<bool> {
    match md.get(key)? {
        Value::Bool(b) => Some(*b),
        other => as_i64(other).map(|x| x != 0),
    }
}

pub(super) fn get_array<'a>(md: &'a Metadata, key: &str) -> Result<Option<&'a [Value]>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(_) => bail!("GGUF metadata '{key}' is not an array"),
    }
}

pub(super) fn get_strings(md: &Metadata, key: &str) -> Result<Option<Vec<String>>> {
    let Some(a) = get_array(md, key)? else {
        return Ok(None);
    };
    a.iter()
        .map(|x| match x {
            Value::String(s) => Ok(s.clone()),
            _ => Err(anyhow!("GGUF metadata '{key}' holds a non-string")),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Array `key` with one value per token (`n` tokens: it must hold at least that many),
/// each read by `read` or, when of another type, `fallback`; `n` times `fallback` when
/// the key is absent.
pub(super) fn get_per_token<T: Copy>(
    md: &Metadata,
    key: &str,
    n: usize,
    read: impl Fn(&Value) -> Option<T>,
    fallback: T,
) -> Result<Vec<T>> {
    match get_array(md, key)? {
        Some(a) if a.len() >= n => Ok(a.iter().map(|v| read(v).unwrap_or(fallback)).collect()),
        Some(a) => bail!("GGUF '{key}' has {} entries for {n} tokens", a.len()),
        None => Ok(vec![fallback; n]),
    }
}
