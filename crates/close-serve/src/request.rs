//! Parsing a prediction request body: `multipart/form-data` (an `image` file part plus text
//! fields) or `application/json` (`{"image": "<base64 or data: URL>", ...}`). Every problem
//! becomes a 4xx [`ApiError`] naming the field.

use base64::Engine;
use serde::Deserialize;

use crate::api_error::ApiError;
use crate::predictor::Task;

/// The fields of a request, before validation against the model.
#[derive(Debug, Default, Clone)]
pub struct RawRequest {
    pub image: Vec<u8>,
    pub model: Option<String>,
    pub text: Option<String>,
    pub beams: Option<usize>,
    pub max_tokens: Option<usize>,
    pub neighbors: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBody {
    image: Option<String>,
    model: Option<String>,
    question: Option<String>,
    hypothesis: Option<String>,
    beams: Option<usize>,
    max_tokens: Option<usize>,
    neighbors: Option<usize>,
}

/// Longest accepted question / hypothesis, in characters.
pub const MAX_TEXT_CHARS: usize = 2000;

/// The request body kinds we accept.
pub enum BodyKind {
    Json,
    Multipart { boundary: String },
}

/// Classify a `Content-Type` header value (415 for anything else).
pub fn body_kind(content_type: Option<&str>) -> Result<BodyKind, ApiError> {
    let unsupported = |got: &str| {
        ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type {got}: send multipart/form-data (an `image` file part) or application/json (`image` as base64)"),
        )
    };
    let ct = content_type.ok_or_else(|| unsupported("missing"))?;
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(BodyKind::Json),
        "multipart/form-data" => {
            let boundary = multer::parse_boundary(ct).map_err(|e| {
                ApiError::bad_request(
                    "bad_multipart",
                    format!("multipart/form-data without a usable boundary: {e}"),
                )
            })?;
            Ok(BodyKind::Multipart { boundary })
        }
        _ => Err(unsupported(ct)),
    }
}

fn text_key_error(task: Task, got: &str) -> ApiError {
    match task.text_field() {
        Some(f) => ApiError::bad_request(
            "unknown_field",
            format!("field `{got}` is not used by {task}; it takes `{f}`"),
        ),
        None => ApiError::bad_request(
            "unknown_field",
            format!("field `{got}` is not used by caption (it takes only an image)"),
        ),
    }
}

fn parse_count(field: &str, v: &str) -> Result<usize, ApiError> {
    v.trim().parse::<usize>().map_err(|_| {
        ApiError::bad_request(
            "bad_field",
            format!("field `{field}`: expected a non-negative integer, got {v:?}"),
        )
    })
}

/// Parse a JSON body.
pub fn parse_json(body: &[u8], task: Task) -> Result<RawRequest, ApiError> {
    let j: JsonBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("invalid JSON body: {e}")))?;
    let mut r = RawRequest {
        model: j.model,
        beams: j.beams,
        max_tokens: j.max_tokens,
        neighbors: j.neighbors,
        ..Default::default()
    };
    for (key, val) in [("question", j.question), ("hypothesis", j.hypothesis)] {
        if let Some(v) = val {
            if task.text_field() != Some(key) {
                return Err(text_key_error(task, key));
            }
            r.text = Some(v);
        }
    }
    let b64 = j.image.ok_or_else(|| {
        ApiError::bad_request(
            "missing_field",
            "missing field `image` (base64-encoded PNG, JPEG or WebP)",
        )
    })?;
    // Accept a data URL (`data:image/png;base64,...`) as browsers produce it.
    let data = match b64.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map(|x| x.1).unwrap_or(""),
        None => b64.as_str(),
    };
    let cleaned: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    r.image = base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|e| {
            ApiError::bad_request(
                "bad_base64",
                format!("field `image`: not valid base64: {e}"),
            )
        })?;
    Ok(r)
}

/// Parse a multipart body (already read in full, so its size is bounded).
pub async fn parse_multipart(
    body: axum::body::Bytes,
    boundary: String,
    task: Task,
) -> Result<RawRequest, ApiError> {
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let bad = |e: multer::Error| {
        ApiError::bad_request("bad_multipart", format!("malformed multipart body: {e}"))
    };
    let mut r = RawRequest::default();
    let mut have_image = false;
    while let Some(field) = mp.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "image" => {
                r.image = field.bytes().await.map_err(bad)?.to_vec();
                have_image = true;
            }
            "model" | "beams" | "max_tokens" | "neighbors" | "question" | "hypothesis" => {
                let v = field.text().await.map_err(bad)?;
                match name.as_str() {
                    "model" => r.model = Some(v).filter(|s| !s.is_empty()),
                    "beams" => r.beams = Some(parse_count("beams", &v)?),
                    "max_tokens" => r.max_tokens = Some(parse_count("max_tokens", &v)?),
                    "neighbors" => r.neighbors = Some(parse_count("neighbors", &v)?),
                    key => {
                        if task.text_field() != Some(key) {
                            return Err(text_key_error(task, key));
                        }
                        r.text = Some(v);
                    }
                }
            }
            "" => return Err(ApiError::bad_request("bad_multipart", "a multipart part has no name")),
            other => {
                return Err(ApiError::bad_request(
                    "unknown_field",
                    format!("unknown field `{other}` (expected image, model, beams, max_tokens, neighbors{})", task.text_field().map(|f| format!(", {f}")).unwrap_or_default()),
                ))
            }
        }
    }
    if !have_image {
        return Err(ApiError::bad_request(
            "missing_field",
            "missing field `image` (a PNG, JPEG or WebP file part)",
        ));
    }
    Ok(r)
}

/// Check the text field of a request against its task.
pub fn check_text(task: Task, text: Option<String>) -> Result<Option<String>, ApiError> {
    match task.text_field() {
        None => Ok(None),
        Some(f) => {
            let t = text.map(|t| t.trim().to_string()).unwrap_or_default();
            if t.is_empty() {
                return Err(ApiError::bad_request(
                    "missing_field",
                    format!("missing field `{f}` (non-empty text)"),
                ));
            }
            if t.chars().count() > MAX_TEXT_CHARS {
                return Err(ApiError::bad_request(
                    "bad_field",
                    format!("field `{f}` is longer than {MAX_TEXT_CHARS} characters"),
                ));
            }
            Ok(Some(t))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert!(matches!(
            body_kind(Some("application/json; charset=utf-8")),
            Ok(BodyKind::Json)
        ));
        assert!(matches!(
            body_kind(Some("multipart/form-data; boundary=abc")),
            Ok(BodyKind::Multipart { .. })
        ));
        assert_eq!(
            body_kind(Some("text/plain")).err().unwrap().status.as_u16(),
            415
        );
        assert_eq!(body_kind(None).err().unwrap().status.as_u16(), 415);
        assert_eq!(
            body_kind(Some("multipart/form-data"))
                .err()
                .unwrap()
                .status
                .as_u16(),
            400
        );
    }

    #[test]
    fn json_fields_are_checked() {
        let png_b64 = base64::engine::general_purpose::STANDARD.encode(b"x");
        let ok = parse_json(
            format!(r#"{{"image":"data:image/png;base64,{png_b64}","question":"what?"}}"#)
                .as_bytes(),
            Task::Vqa,
        )
        .unwrap();
        assert_eq!(ok.image, b"x");
        assert_eq!(ok.text.as_deref(), Some("what?"));
        assert_eq!(
            parse_json(br#"{"question":"q"}"#, Task::Vqa)
                .unwrap_err()
                .code,
            "missing_field"
        );
        assert_eq!(
            parse_json(br#"{"image":"%%%"}"#, Task::Caption)
                .unwrap_err()
                .code,
            "bad_base64"
        );
        assert_eq!(
            parse_json(br#"{"image":"eA==","question":"q"}"#, Task::Caption)
                .unwrap_err()
                .code,
            "unknown_field"
        );
        assert_eq!(
            parse_json(br#"{"image":"eA==","colour":"q"}"#, Task::Caption)
                .unwrap_err()
                .code,
            "bad_json"
        );
        assert_eq!(
            parse_json(b"{", Task::Caption).unwrap_err().code,
            "bad_json"
        );
        assert_eq!(
            check_text(Task::Entail, Some("  ".into()))
                .unwrap_err()
                .code,
            "missing_field"
        );
        assert_eq!(
            check_text(Task::Entail, Some(" a b ".into()))
                .unwrap()
                .as_deref(),
            Some("a b")
        );
    }
}
