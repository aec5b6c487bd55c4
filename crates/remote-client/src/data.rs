//! A client's private texts: one JSON object with a `text` string per line (other fields,
//! such as `client_id`, are allowed and ignored).

use std::path::Path;

use serde_json::Value;

use crate::error::{RemoteError, Result};

/// How a line must look, for error messages.
const LINE_FORMAT: &str = "each line must be a JSON object like {\"text\": \"…\"}";

/// The texts of the JSONL file at `path`, in order (blank lines skipped). Errors name the file
/// and line of the first malformed, text-less or empty-text line, or say that there is none.
pub fn read_client_texts(path: &Path) -> Result<Vec<String>> {
    let contents = std::fs::read_to_string(path).map_err(|e| RemoteError::InvalidArgument {
        name: "--data",
        message: format!(
            "cannot read {} ({e}); give a readable JSONL file of your texts",
            path.display()
        ),
    })?;
    let contents = contents.strip_prefix('\u{feff}').unwrap_or(&contents);
    let mut texts = Vec::new();
    for (index, line) in contents.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let text = parse_line(line).map_err(|problem| RemoteError::BadLine {
            path: path.to_path_buf(),
            line: index + 1,
            problem,
        })?;
        texts.push(text);
    }
    if texts.is_empty() {
        return Err(RemoteError::InvalidArgument {
            name: "--data",
            message: format!("{} holds no texts; {LINE_FORMAT}", path.display()),
        });
    }
    Ok(texts)
}

fn parse_line(line: &str) -> std::result::Result<String, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON ({e})"))?;
    match value.get("text") {
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(text.clone()),
        Some(Value::String(_)) => Err("field \"text\" is empty or only whitespace".to_string()),
        Some(_) => Err("field \"text\" is not a string".to_string()),
        None if value.is_object() => Err("field \"text\" is missing".to_string()),
        None => Err("not a JSON object".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_read_and_bad_lines_named() {
        let dir = std::env::temp_dir().join(format!("fedsyn-client-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("my.jsonl");
        std::fs::write(
            &path,
            "{\"text\":\"a\",\"client_id\":\"x\"}\n\n{\"text\":\"b\"}\n",
        )
        .unwrap();
        assert_eq!(read_client_texts(&path).unwrap(), ["a", "b"]);
        for (contents, problem) in [
            (
                "{\"text\":\"a\"}\n{\"txt\":\"b\"}\n",
                "2: field \"text\" is missing",
            ),
            ("{\"text\":1}\n", "1: field \"text\" is not a string"),
            ("{\"text\":\" \"}\n", "1: field \"text\" is empty"),
            ("[1]\n", "1: not a JSON object"),
            ("{\n", "1: not valid JSON"),
            ("\n\n", "holds no texts"),
        ] {
            std::fs::write(&path, contents).unwrap();
            let error = read_client_texts(&path).unwrap_err();
            assert!(error.to_string().contains(problem), "{error}");
            assert!(error.is_bad_input());
        }
        let error = read_client_texts(&dir.join("absent.jsonl")).unwrap_err();
        assert!(
            error.is_bad_input() && error.to_string().contains("absent.jsonl"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
