//! The shared state of a running gateway and the router: one function that
//! maps method and path to a handler, times the request, counts it in the
//! metrics, and writes the audit line for intake routes. Handlers return
//! `Result<Response, ApiError>`; nothing on a request path unwraps.

use crate::auth::{Principal, Scope, bearer};
use crate::config::Config;
use crate::dedup::Deliveries;
use crate::http::{ApiError, Body};
use crate::ratelimit::{Limiter, Verdict, client_key};
use crate::status::StatusCache;
use crate::{intake, jobs, schedules, status};
use contracts::NormalizeOptions;
use fsqueue::Queue;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// Everything a request handler needs.
pub struct App {
    pub cfg: Config,
    pub queue: Queue,
    /// Group-committing writer of new jobs (see `batch`).
    pub intake: crate::batch::Batcher,
    pub store: artifacts::ArtifactStore,
    pub deliveries: Deliveries,
    pub client_limits: Limiter,
    pub token_limits: Limiter,
    pub normalize_opts: NormalizeOptions,
    pub status: StatusCache,
    pub summaries: jobs::SummaryCache,
    pub prometheus: Option<PrometheusHandle>,
}

/// Facts about one intake request for its audit line. Never holds a token
/// or a body.
#[derive(Debug, Default)]
pub struct Audit {
    pub token: Option<String>,
    pub job_id: Option<String>,
    pub delivery: Option<String>,
    pub event: Option<String>,
    pub duplicate: bool,
    pub note: Option<String>,
}

/// The fixed set of route labels used in metrics and logs.
fn route_of(path: &str) -> &'static str {
    match path {
        "/webhook" => "webhook",
        "/webhook/github" => "webhook_github",
        "/jobs" => "jobs",
        "/health" => "health",
        "/metrics" => "metrics",
        "/schedules" => "schedules",
        p if p.starts_with("/jobs/") => {
            if p.matches('/').count() >= 3 {
                "job_action"
            } else {
                "job"
            }
        }
        _ => "other",
    }
}

fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this route accepts {allow}"),
    )
    .header(header::ALLOW, allow)
}

/// Serves one request.
pub async fn handle(app: Arc<App>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let route = route_of(&path);
    let client = app
        .cfg
        .trusted_proxies
        .client(peer.ip(), forwarded_for(req.headers()));
    let mut audit = Audit::default();
    let method = req.method().clone();
    let result = dispatch(&app, client, route, &path, req, &mut audit).await;
    let (resp, error_code) = match result {
        Ok(r) => (r, None),
        Err(e) => {
            let code = e.code();
            (e.into_response(), Some(code))
        }
    };
    let code = resp.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    metrics::counter!("orch_http_requests_total", "route" => route, "code" => code.to_string())
        .increment(1);
    metrics::histogram!("orch_http_request_duration_seconds", "route" => route).record(elapsed);
    if matches!(route, "webhook" | "webhook_github") && method == Method::POST {
        metrics::counter!("orch_webhook_requests_total", "route" => route, "code" => code.to_string())
            .increment(1);
        metrics::histogram!("orch_webhook_duration_seconds", "route" => route).record(elapsed);
        tracing::info!(
            target: "audit",
            route,
            token = audit.token.as_deref().unwrap_or("anonymous"),
            client = %client,
            code,
            error = error_code.unwrap_or(""),
            job_id = audit.job_id.as_deref().unwrap_or(""),
            delivery = audit.delivery.as_deref().unwrap_or(""),
            event = audit.event.as_deref().unwrap_or(""),
            duplicate = audit.duplicate,
            note = audit.note.as_deref().unwrap_or(""),
            duration_ms = (elapsed * 1000.0) as u64,
            "intake"
        );
    }
    resp
}

async fn dispatch(
    app: &Arc<App>,
    client: IpAddr,
    route: &'static str,
    path: &str,
    req: Request<Incoming>,
    audit: &mut Audit,
) -> Result<Response<Body>, ApiError> {
    let m = req.method().clone();
    match route {
        "webhook" if m == Method::POST => intake::webhook(app, client, req, audit).await,
        "webhook_github" if m == Method::POST => intake::github(app, client, req, audit).await,
        "webhook" | "webhook_github" => Err(method_not_allowed("POST")),
        "health" if m == Method::GET || m == Method::HEAD => status::health(app).await,
        "metrics" if m == Method::GET || m == Method::HEAD => status::metrics(app).await,
        "health" | "metrics" => Err(method_not_allowed("GET, HEAD")),
        "jobs" if m == Method::GET => {
            let p = authorize(app, client, req.headers(), Scope::Read)?;
            jobs::list(app, &p, req.uri().query().unwrap_or("")).await
        }
        "jobs" => Err(method_not_allowed("GET")),
        "schedules" if m == Method::GET => {
            let p = authorize(app, client, req.headers(), Scope::Read)?;
            schedules::list(app, &p).await
        }
        "schedules" => Err(method_not_allowed("GET")),
        "job" | "job_action" => {
            // /jobs/{id} or /jobs/{id}/{action}: nothing else, no more segments.
            let rest = path.strip_prefix("/jobs/").unwrap_or("");
            let mut segs = rest.split('/');
            let id = segs.next().unwrap_or("");
            let action = segs.next();
            if segs.next().is_some() {
                return Err(ApiError::not_found("no such route"));
            }
            match action {
                None if m == Method::GET => {
                    let p = authorize(app, client, req.headers(), Scope::Read)?;
                    jobs::get(app, &p, id).await
                }
                None => Err(method_not_allowed("GET")),
                Some(a) => {
                    let Some(a) = action_name(a) else {
                        return Err(ApiError::not_found("no such route"));
                    };
                    if m != Method::POST {
                        return Err(method_not_allowed("POST"));
                    }
                    let p = authorize(app, client, req.headers(), Scope::Admin)?;
                    jobs::action(app, &p, id, a).await
                }
            }
        }
        _ => Err(ApiError::not_found("no such route")),
    }
}

fn action_name(a: &str) -> Option<&'static str> {
    ["approve", "reject", "cancel", "retry"]
        .into_iter()
        .find(|x| *x == a)
}

fn forwarded_for(h: &HeaderMap) -> Option<&str> {
    h.get("x-forwarded-for").and_then(|v| v.to_str().ok())
}

/// Turns a rate-limit verdict into a 429.
pub fn limited(v: Verdict, scope: &str) -> Result<(), ApiError> {
    match v {
        Verdict::Allowed => Ok(()),
        Verdict::Limited { retry_after } => {
            metrics::counter!("orch_webhook_rate_limited_total", "limit" => scope.to_owned())
                .increment(1);
            Err(ApiError::rate_limited(retry_after, scope))
        }
    }
}

/// The principal of the request's bearer token (401 when missing or
/// unknown).
pub fn authenticate(app: &App, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let Some(h) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing credentials: send Authorization: Bearer <token>",
        ));
    };
    let tok = h
        .to_str()
        .ok()
        .and_then(bearer)
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))?;
    app.cfg
        .tokens
        .authenticate(tok)
        .ok_or_else(|| ApiError::unauthorized("invalid token"))
}

/// Authentication plus a scope check for the job API. Failed attempts are
/// charged to the client's rate-limit bucket, so guessing tokens is
/// throttled; successful reads are not limited.
pub fn authorize(
    app: &App,
    client: IpAddr,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<Principal, ApiError> {
    let key = client_key(client);
    limited(app.client_limits.peek(&key), "client")?;
    let p = authenticate(app, headers).inspect_err(|_| {
        app.client_limits.charge(&key);
    })?;
    if !p.has(scope) {
        return Err(ApiError::forbidden(format!(
            "this token lacks the {} scope",
            scope.as_str()
        )));
    }
    Ok(p)
}

/// `Location`-style header value.
pub fn header_value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}
