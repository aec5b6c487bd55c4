//! Errors as `application/problem+json` (RFC 9457): `{"type", "title", "status", "detail"}`,
//! where `detail` names the problem and the fix.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The media type of every error response.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One error response.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable slug naming the kind of problem (`type` is `urn:fedsyn:problem:<slug>`).
    pub slug: &'static str,
    /// What went wrong and how to fix it.
    pub detail: String,
    /// Seconds the client should wait (sent as `Retry-After`).
    pub retry_after_seconds: Option<u64>,
}

impl Problem {
    /// A problem with `status`, kind `slug` and `detail`.
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            slug,
            detail: detail.into(),
            retry_after_seconds: None,
        }
    }

    /// 401: missing or wrong credentials.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 403: authenticated, but not allowed.
    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 422: the body is well-formed HTTP but its content is unacceptable.
    pub fn unprocessable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", detail)
    }

    /// 500: the server failed. The cause goes to the server's log (stderr) only: its text can
    /// name paths, SQL, or state of other clients' rounds, none of which is the caller's
    /// business. The caller gets a generic detail and an incident number the operator can
    /// find in the log.
    pub fn internal(cause: impl std::fmt::Display) -> Problem {
        static INCIDENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let incident = INCIDENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        eprintln!("internal error (incident {incident}): {cause}");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!(
                "the server failed (incident {incident}); retry later, or give the operator the \
                 incident number"
            ),
        )
    }

    /// Adds a `Retry-After`.
    pub fn retry_after(mut self, seconds: u64) -> Problem {
        self.retry_after_seconds = Some(seconds);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = protocol::messages::Problem {
            kind: format!("urn:fedsyn:problem:{}", self.slug),
            title: title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<crate::error::ServerError> for Problem {
    fn from(error: crate::error::ServerError) -> Problem {
        Problem::internal(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_tells_the_client_nothing_about_its_cause() {
        let error = crate::error::ServerError::Store {
            path: "/srv/secret-run/server.sqlite".into(),
            message: "UNIQUE constraint failed: submissions.client_id c42".into(),
        };
        let problem = Problem::from(error);
        assert_eq!(problem.status, StatusCode::INTERNAL_SERVER_ERROR);
        for leaked in ["secret-run", "sqlite", "UNIQUE", "c42"] {
            assert!(!problem.detail.contains(leaked), "{}", problem.detail);
        }
        assert!(problem.detail.contains("incident"), "{}", problem.detail);
    }
}
