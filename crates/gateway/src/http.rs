//! HTTP plumbing shared by every route: the one error shape
//! (`{"error": {"code", "message", "details"}}`), JSON responses, and body
//! reading that refuses oversized bodies from `Content-Length` before
//! reading a byte, stops reading the moment a streamed body passes the
//! limit, and gives up on clients that send too slowly.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

pub type Body = Full<Bytes>;

/// An error answer. `code` is a stable machine-readable word; `message` is
/// for people and never quotes secrets or more than a short prefix of input.
/// Boxed: it travels through every `?` on the request path.
#[derive(Debug, Clone)]
pub struct ApiError(Box<Inner>);

#[derive(Debug, Clone)]
struct Inner {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Value,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            status,
            code,
            message: message.into(),
            details: json!({}),
            headers: Vec::new(),
        }))
    }

    pub fn code(&self) -> &'static str {
        self.0.code
    }

    pub fn details(mut self, details: Value) -> Self {
        self.0.details = details;
        self
    }

    pub fn header(mut self, name: header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.0.headers.push((name, v));
        }
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
            .header(header::WWW_AUTHENTICATE, "Bearer")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            .header(header::RETRY_AFTER, "5")
    }

    pub fn rate_limited(retry_after: u64, scope: &str) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests from this {scope}; retry after {retry_after} s"),
        )
        .details(json!({ "limit": scope, "retry_after_sec": retry_after }))
        .header(header::RETRY_AFTER, &retry_after.to_string())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn into_response(self) -> Response<Body> {
        let e = *self.0;
        let body = json!({
            "error": { "code": e.code, "message": e.message, "details": e.details }
        });
        let mut resp = json_response(e.status, &body);
        for (k, v) in e.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

/// A JSON response with `Cache-Control: no-store`.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    bytes_response(status, "application/json", Bytes::from(bytes))
}

/// A response with a fixed body and content type.
pub fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An empty response (204).
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// Refuses anything but a JSON body (415): `application/json`, optionally
/// with parameters, or any `application/*+json`.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ok =
        mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON: send Content-Type: application/json",
        ))
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body is larger than the {limit}-byte limit"),
    )
    .details(json!({ "limit_bytes": limit }))
    // The rest of the body is never read, so the connection cannot be reused.
    .header(header::CONNECTION, "close")
}

/// Refuses a declared `Content-Length` over `limit` before any of the body
/// is read.
pub fn check_declared_length(headers: &HeaderMap, limit: usize) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => Err(too_large(limit)),
        _ => Ok(()),
    }
}

/// Reads a body of at most `limit` bytes within `timeout`. Memory use is
/// bounded by the limit plus one read frame: the read stops at the first
/// frame that passes the limit.
pub async fn read_body(body: Incoming, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    let read = async move {
        let mut body = body;
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::bad_request("bad_body", format!("could not read the request body: {e}"))
                    .header(header::CONNECTION, "close")
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_large(limit));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(buf))
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body was not received within {} ms",
                timeout.as_millis()
            ),
        )
        .header(header::CONNECTION, "close")),
    }
}

/// Runs file-system work (queue, artifacts: blocking, fsync-heavy) off the
/// async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::internal("a storage task failed"))
}
