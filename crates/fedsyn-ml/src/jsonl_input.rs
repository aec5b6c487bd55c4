//! The JSON-lines input files of the model commands (`embed`, `dpo`): one object per non-blank
//! line, with errors that name the file and the line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::{Map, Value};

/// A problem with the arguments or an input file that the user can fix; the message names the
/// file and line. `fedsyn` exits with status 2 on it.
#[derive(Debug)]
pub struct InputError(pub String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// One object of a JSON-lines file, with where it came from.
pub struct JsonLine {
    /// 1-based line number.
    pub line: usize,
    /// `FILE line N`, for messages.
    pub at: String,
    /// The object.
    pub object: Map<String, Value>,
}

impl JsonLine {
    /// The string field `field`: `None` when absent, an error naming the line when it holds
    /// anything but a string.
    pub fn text(&self, field: &str) -> Result<Option<&str>, InputError> {
        match self.object.get(field) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(InputError(format!(
                "{}: field `{field}` holds {}, not a string",
                self.at,
                json_type(other)
            ))),
        }
    }
}

/// Every non-blank line of `path` as a JSON object.
pub fn read_json_lines(path: &Path) -> Result<Vec<JsonLine>, InputError> {
    let file =
        File::open(path).map_err(|e| InputError(format!("cannot open {}: {e}", path.display())))?;
    let mut lines = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let at = format!("{} line {}", path.display(), index + 1);
        let line = line.map_err(|e| InputError(format!("{at}: cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| InputError(format!("{at}: not valid JSON ({e})")))?;
        let Value::Object(object) = value else {
            return Err(InputError(format!("{at}: expected a JSON object")));
        };
        lines.push(JsonLine {
            line: index + 1,
            at,
            object,
        });
    }
    Ok(lines)
}

/// The JSON type of `value`, for messages.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
