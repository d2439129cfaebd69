//! Job intake: `POST /webhook` (bearer token) and `POST /webhook/github`
//! (HMAC signature). Both end in [`submit`], which runs the same
//! normalisation and validation as `orch submit` (`contracts::normalize`),
//! deduplicates deliveries (`dedup`), and answers 202 only after the job
//! file is durable — 503, never 2xx, when it could not be made durable.
//!
//! Order of checks on `/webhook`, cheapest and least revealing first: client
//! rate limit, authentication (401), scope (403), token rate limit (429),
//! content type (415), declared length (413), body read with limit and
//! timeout (413/408), JSON (400), project scope (403), contract (422).
//! On `/webhook/github` the signature is verified on the raw body before
//! anything in it — or any other header — is interpreted.

use crate::app::{App, Audit, authenticate, header_value, limited};
use crate::auth::Scope;
use crate::crypto::{ct_eq, hex, hmac_sha256, sha256, unhex};
use crate::dedup::{self, Record, Writer};
use crate::github::{Outcome, map_event};
use crate::http::{
    ApiError, Body, blocking, check_declared_length, empty, json_response, read_body, require_json,
};
use crate::ratelimit::client_key;
use contracts::{EntryPoint, Job, normalize, parse_payload_bytes};
use fsqueue::{QueueError, State};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest accepted `Idempotency-Key` / `X-GitHub-Delivery`.
const MAX_KEY_LEN: usize = 256;
/// How long a copy of a delivery waits for the copy that claimed it.
const DEDUP_WAIT: Duration = Duration::from_secs(5);

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// A usable delivery key: 1..=256 visible ASCII characters (surrounding
/// spaces aside).
fn key_value(v: &hyper::header::HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?.trim();
    (!s.is_empty()
        && s.len() <= MAX_KEY_LEN
        && s.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
    .then(|| s.to_owned())
}

/// The delivery key of a request, if it carries one: `Idempotency-Key`
/// first, then `X-GitHub-Delivery`. 400 when either header is present with
/// an unusable value (both are checked, whichever is used).
fn delivery_key(h: &HeaderMap) -> Result<Option<String>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "bad_idempotency_key",
            format!(
                "Idempotency-Key / X-GitHub-Delivery must be 1..{MAX_KEY_LEN} visible ASCII characters"
            ),
        )
    };
    let mut key = None;
    for name in ["x-github-delivery", "idempotency-key"] {
        let mut values = h.get_all(name).iter();
        if let Some(v) = values.next() {
            if values.next().is_some() {
                return Err(bad());
            }
            key = Some(key_value(v).ok_or_else(bad)?);
        }
    }
    Ok(key)
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    let v = parse_payload_bytes(bytes).map_err(|v| {
        let msg = v
            .iter()
            .next()
            .map_or_else(|| "invalid JSON".to_owned(), |x| x.message.clone());
        ApiError::bad_request("invalid_json", msg).details(json!({ "violations": v }))
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the body must be a JSON object",
        ));
    }
    Ok(v)
}

/// `POST /webhook`.
pub async fn webhook(
    app: &Arc<App>,
    client: IpAddr,
    req: Request<Incoming>,
    audit: &mut Audit,
) -> Result<Response<Body>, ApiError> {
    limited(app.client_limits.charge(&client_key(client)), "client")?;
    let principal = authenticate(app, req.headers())?;
    audit.token = Some(principal.name.clone());
    if !principal.has(Scope::Submit) {
        return Err(ApiError::forbidden("this token lacks the submit scope"));
    }
    limited(app.token_limits.charge(&principal.name), "token")?;
    require_json(req.headers())?;
    check_declared_length(req.headers(), app.cfg.body_limit)?;
    let delivery = delivery_key(req.headers())?;
    audit.delivery = delivery.clone();
    let bytes = read_body(req.into_body(), app.cfg.body_limit, app.cfg.body_timeout).await?;
    let payload = parse_json(&bytes)?;
    let project = match payload.get("project_id") {
        Some(Value::String(p)) => Some(p.as_str()),
        _ => None,
    };
    if !principal.projects.allows(project) {
        return Err(ApiError::forbidden(match project {
            Some(p) => format!("this token may not submit jobs for project {p:?}"),
            None => "this token may only submit jobs with a project_id it is allowed".to_owned(),
        }));
    }
    let dedup = delivery.as_ref().map(|d| {
        (
            dedup::key("webhook", &[principal.name.as_bytes(), d.as_bytes()]),
            hex(&sha256(&bytes)),
        )
    });
    submit(app, client, payload, delivery, dedup, "webhook", audit).await
}

/// `POST /webhook/github`.
pub async fn github(
    app: &Arc<App>,
    client: IpAddr,
    req: Request<Incoming>,
    audit: &mut Audit,
) -> Result<Response<Body>, ApiError> {
    let Some(secret) = app.cfg.github_secret.clone() else {
        return Err(ApiError::not_found(
            "GitHub intake is not configured on this gateway",
        ));
    };
    let ckey = client_key(client);
    limited(app.client_limits.peek(&ckey), "client")?;
    check_declared_length(req.headers(), app.cfg.github_body_limit)?;
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, app.cfg.github_body_limit, app.cfg.body_timeout).await?;

    // The signature, before anything else is looked at.
    let expected = hmac_sha256(&secret, &bytes);
    let verdict = match header_str(&parts.headers, "x-hub-signature-256") {
        None => Err("missing X-Hub-Signature-256"),
        Some(sig) => match sig.trim().strip_prefix("sha256=").and_then(unhex) {
            Some(given) if ct_eq(&given, &expected) => Ok(()),
            Some(_) => Err("X-Hub-Signature-256 does not match the body"),
            None => Err("X-Hub-Signature-256 must be sha256=<64 hex digits>"),
        },
    };
    if let Err(why) = verdict {
        app.client_limits.charge(&ckey);
        audit.note = Some(why.to_owned());
        return Err(ApiError::unauthorized(why));
    }
    audit.token = Some("github".to_owned());
    limited(app.token_limits.charge("github"), "token")?;
    require_json(&parts.headers)?;
    let delivery = header_str(&parts.headers, "x-github-delivery")
        .map(str::trim)
        .filter(|d| !d.is_empty() && d.len() <= MAX_KEY_LEN)
        .map(str::to_owned);
    audit.delivery = delivery.clone();
    let Some(event) = header_str(&parts.headers, "x-github-event").map(str::to_owned) else {
        return Err(ApiError::bad_request(
            "missing_event",
            "missing X-GitHub-Event header",
        ));
    };
    audit.event = Some(event.chars().take(64).collect());
    if event == "ping" {
        return Ok(json_response(
            StatusCode::OK,
            &json!({ "ok": true, "event": "ping" }),
        ));
    }
    let body = parse_json(&bytes)?;
    match map_event(&app.cfg.github, &event, delivery.as_deref(), &body) {
        Outcome::Ignore(why) => {
            audit.note = Some(why);
            Ok(empty(StatusCode::NO_CONTENT))
        }
        Outcome::Job(payload) => {
            // Keyed by the signed body, not the unsigned delivery header: a
            // captured delivery replayed under any delivery id is the same
            // delivery. GitHub's redeliveries carry the identical body.
            let body_hash = hex(&sha256(&bytes));
            let key = dedup::key("github", &[body_hash.as_bytes()]);
            submit(
                app,
                client,
                payload,
                delivery,
                Some((key, body_hash)),
                "github",
                audit,
            )
            .await
        }
    }
}

/// What a successful intake returns.
fn accepted(job_id: &str, state: &str, duplicate: bool) -> Response<Body> {
    let status = if state == State::AwaitingApproval.dir_name() {
        "awaiting_approval"
    } else {
        "queued"
    };
    let url = format!("/jobs/{job_id}");
    let mut body = json!({ "job_id": job_id, "status": status, "status_url": url });
    if duplicate {
        body["duplicate"] = true.into();
    }
    let mut resp = json_response(StatusCode::ACCEPTED, &body);
    if let Some(v) = header_value(&url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn durable_error(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "could not make a job durable");
    ApiError::unavailable("the job could not be stored durably; nothing was queued, retry later")
}

/// Enqueues `doc` durably.
async fn enqueue(
    app: &Arc<App>,
    job_id: &str,
    doc: Vec<u8>,
    state: State,
) -> Result<(), QueueError> {
    app.intake.enqueue(job_id, doc, state).await
}

/// Normalises, validates and durably enqueues a payload; with a delivery
/// key, exactly once per key (see `dedup`).
async fn submit(
    app: &Arc<App>,
    client: IpAddr,
    payload: Value,
    delivery: Option<String>,
    dedup: Option<(String, String)>,
    entry: &'static str,
    audit: &mut Audit,
) -> Result<Response<Body>, ApiError> {
    // A delivery seen before is answered from its record, before the
    // payload is even normalised (the original was valid when it came).
    if let Some((key, body_hash)) = &dedup
        && let Some(resp) = existing(app, key, body_hash, audit).await?
    {
        return Ok(resp);
    }
    let entry_point = EntryPoint::Webhook {
        remote: client.to_string(),
        delivery: delivery.clone(),
    };
    let job: Job = normalize(payload, &entry_point, &app.normalize_opts).map_err(|v| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("the job is invalid: {} violation(s)", v.len()),
        )
        .details(json!({ "violations": v }))
    })?;
    let job_id = job.job_id.as_str().to_owned();
    let state = if job.policy.requires_approval {
        State::AwaitingApproval
    } else {
        State::Pending
    };
    let doc =
        serde_json::to_vec(&job).map_err(|e| ApiError::internal(format!("serialize: {e}")))?;
    let Some((key, body_hash)) = dedup else {
        audit.job_id = Some(job_id.clone());
        return match enqueue(app, &job_id, doc, state).await {
            Ok(()) => {
                count_enqueued(entry, state);
                Ok(accepted(&job_id, state.dir_name(), false))
            }
            Err(QueueError::Duplicate { .. }) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "duplicate_job",
                "a job with this id already exists",
            )),
            Err(e) => Err(durable_error(e)),
        };
    };

    let record = Record {
        job_id: job_id.clone(),
        state: state.dir_name().to_owned(),
        body_sha256: body_hash.clone(),
        committed: false,
        created_at: contracts::now_rfc3339(),
        job: serde_json::to_value(&job).ok(),
        owner: app.deliveries.owner().to_owned(),
    };
    let deadline = Instant::now() + DEDUP_WAIT;
    loop {
        // Claim, enqueue and commit run as a task of their own: a client
        // that hangs up must not leave a claimed record behind half done.
        let (a, k, r, d) = (app.clone(), key.clone(), record.clone(), doc.clone());
        let claimed = tokio::spawn(async move { claim_and_store(&a, &k, &r, d, state).await })
            .await
            .map_err(|_| ApiError::internal("a storage task failed"))?;
        match claimed {
            Stored::Lost => {}
            Stored::Queued => {
                audit.job_id = Some(job_id.clone());
                count_enqueued(entry, state);
                return Ok(accepted(&job_id, state.dir_name(), false));
            }
            Stored::Failed(e) => {
                audit.job_id = Some(job_id.clone());
                return Err(e);
            }
        }
        if let Some(resp) = existing(app, &key, &body_hash, audit).await? {
            return Ok(resp);
        }
        if Instant::now() >= deadline {
            return Err(ApiError::unavailable(
                "another copy of this delivery is still being stored; retry shortly",
            )
            .header(header::RETRY_AFTER, "1"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What became of a claim attempt.
enum Stored {
    /// Another copy holds the record.
    Lost,
    /// The job is durable and the record committed (or committable).
    Queued,
    Failed(ApiError),
}

/// Claims the delivery record and, when this copy wins, enqueues the job and
/// commits the record.
async fn claim_and_store(
    app: &Arc<App>,
    key: &str,
    record: &Record,
    doc: Vec<u8>,
    state: State,
) -> Stored {
    app.deliveries.set_in_flight(key, true);
    let out = claim_and_store_inner(app, key, record, doc, state).await;
    app.deliveries.set_in_flight(key, false);
    out
}

async fn claim_and_store_inner(
    app: &Arc<App>,
    key: &str,
    record: &Record,
    doc: Vec<u8>,
    state: State,
) -> Stored {
    let (a, k, r) = (app.clone(), key.to_owned(), record.clone());
    match blocking(move || a.deliveries.create(&k, &r)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return Stored::Lost,
        Ok(Err(e)) => return Stored::Failed(durable_error(e)),
        Err(e) => return Stored::Failed(e),
    }
    let job_id = record.job_id.clone();
    match enqueue(app, &job_id, doc, state).await {
        Ok(()) => {
            let (a, k, r) = (app.clone(), key.to_owned(), record.clone());
            // The job is durable; a failed commit only means a later copy
            // finishes the record (the job exists, so it commits without
            // enqueuing again).
            if let Ok(Err(e)) = blocking(move || a.deliveries.commit(&k, &r)).await {
                tracing::warn!(job_id, error = %e, "could not commit a delivery record");
            }
            Stored::Queued
        }
        Err(e) => {
            // Drop the claim so a retry starts over, unless the job file
            // made it into the queue after all (a failed name barrier after
            // the rename): then the record stays for a retry to commit.
            let (a, k, id) = (app.clone(), key.to_owned(), job_id.clone());
            let released = blocking(move || -> Result<bool, String> {
                if a.queue.find(&id).map_err(|e| e.to_string())?.is_some() {
                    return Ok(false);
                }
                a.deliveries.release(&k, &id).map_err(|e| e.to_string())
            })
            .await;
            if !matches!(released, Ok(Ok(true))) {
                tracing::warn!(job_id, "kept the delivery record of a failed enqueue");
            }
            Stored::Failed(match e {
                QueueError::Duplicate { .. } => ApiError::new(
                    StatusCode::CONFLICT,
                    "duplicate_job",
                    "a job with this id already exists",
                ),
                e => durable_error(e),
            })
        }
    }
}

fn count_enqueued(entry: &'static str, state: State) {
    metrics::counter!("orch_jobs_enqueued_total", "entry" => entry, "state" => state.dir_name())
        .increment(1);
}

/// Answers from an existing delivery record: `Some(202)` with the original
/// job when the record is committed, or when its job is found durably in a
/// queue state, or once the work of a writer proven gone is finished;
/// `None` when there is no record or its writer is still at work.
async fn existing(
    app: &Arc<App>,
    key: &str,
    body_hash: &str,
    audit: &mut Audit,
) -> Result<Option<Response<Body>>, ApiError> {
    let (a, k) = (app.clone(), key.to_owned());
    let found = blocking(move || a.deliveries.read(&k))
        .await?
        .map_err(durable_error)?;
    let Some((rec, _)) = found else {
        return Ok(None);
    };
    if rec.body_sha256 != body_hash {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different body",
        )
        .details(json!({ "job_id": rec.job_id })));
    }
    if !rec.committed {
        let (a, k) = (app.clone(), key.to_owned());
        let done = blocking(move || resolve(&a, &k))
            .await?
            .map_err(durable_error)?;
        if !done {
            return Ok(None);
        }
    }
    audit.job_id = Some(rec.job_id.clone());
    audit.duplicate = true;
    metrics::counter!("orch_webhook_duplicates_total").increment(1);
    Ok(Some(accepted(&rec.job_id, &rec.state, true)))
}

/// Settles an uncommitted delivery record, if it can be settled now:
/// `Ok(true)` when the record is committed afterwards (its job durably in a
/// queue state), `Ok(false)` when its writer is still at work (or another
/// finisher is).
///
/// A job lookup (`Queue::find`) reads every queue state, so it is only made
/// when it can find something: while the writer works, once the job id is
/// reserved (the reservation comes before the job file); for a dead
/// writer, inside `Queue::enqueue_recovered`, which looks the job up when
/// its id is reserved and refuses to enqueue it twice.
pub fn resolve(app: &App, key: &str) -> Result<bool, String> {
    let Some((rec, age)) = app.deliveries.read(key).map_err(|e| e.to_string())? else {
        return Ok(false);
    };
    if rec.committed {
        return Ok(true);
    }
    if app.deliveries.writer(key, &rec, age) == Writer::Working {
        // The job file already in a queue state: make its name durable (its
        // writer may not have reached its barrier yet) and commit the
        // record.
        if id_reserved(app, &rec.job_id)
            && let Some(loc) = app.queue.find(&rec.job_id).map_err(|e| e.to_string())?
        {
            sync_job_name(app, &loc)?;
            app.deliveries
                .commit(key, &rec)
                .map_err(|e| e.to_string())?;
            return Ok(true);
        }
        return Ok(false);
    }
    let Some(_lock) = app
        .deliveries
        .lock_for_finish(key)
        .map_err(|e| e.to_string())?
    else {
        return Ok(false);
    };
    // Under the lock, from the record as it is now.
    let Some((rec, _)) = app.deliveries.read(key).map_err(|e| e.to_string())? else {
        return Ok(false);
    };
    if rec.committed {
        return Ok(true);
    }
    finish_orphan(app, key, &rec)?;
    Ok(true)
}

/// Whether `job_id` is reserved in the queue's `ids/`. No job file exists
/// without its reservation: enqueuing reserves first, retention deletes
/// the file before the reservation.
fn id_reserved(app: &App, job_id: &str) -> bool {
    std::fs::symlink_metadata(app.queue.internal_dir(fsqueue::queue::IDS_DIR).join(job_id)).is_ok()
}

/// Makes a found job file's directory entry durable.
fn sync_job_name(app: &App, loc: &fsqueue::Located) -> Result<(), String> {
    let dir = app.queue.dir(loc.state);
    let ids = app.queue.internal_dir(fsqueue::queue::IDS_DIR);
    fsqueue::durable::sync_dirs(&[&dir, &ids]).map_err(|e| e.to_string())
}

/// Completes a delivery whose writer is gone: the job is enqueued from the
/// record (taking over an id reservation that the crash left without its
/// job file) unless it exists, then the record is committed. The caller
/// holds the record's finish lock.
pub fn finish_orphan(app: &App, key: &str, rec: &Record) -> Result<(), String> {
    let state = State::parse(&rec.state).unwrap_or(State::Pending);
    let doc = rec.job.as_ref().and_then(|j| serde_json::to_vec(j).ok());
    let found = match doc {
        // `enqueue_recovered` looks the job up itself when its id is
        // reserved: `Duplicate` means it exists.
        Some(doc) => {
            match app
                .queue
                .enqueue_recovered(&rec.job_id, &doc, fsqueue::name::DEFAULT_PRIO, state)
            {
                Ok(_) => {
                    tracing::warn!(job_id = %rec.job_id, "finished an interrupted delivery");
                    None
                }
                Err(QueueError::Duplicate { .. }) => Some(
                    app.queue
                        .find(&rec.job_id)
                        .map_err(|e| e.to_string())?
                        .ok_or("the job of the delivery vanished")?,
                ),
                Err(e) => return Err(e.to_string()),
            }
        }
        None => Some(
            app.queue
                .find(&rec.job_id)
                .map_err(|e| e.to_string())?
                .ok_or("the record has no job document")?,
        ),
    };
    if let Some(loc) = found {
        sync_job_name(app, &loc)?;
    }
    app.deliveries.commit(key, rec).map_err(|e| e.to_string())
}

/// What a recovery pass over dead gateways did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Recovered {
    /// Dead gateways found.
    pub owners: usize,
    /// Records named by their indexes (each read once).
    pub records: usize,
    /// Of those, records that needed finishing and were finished now.
    pub finished: usize,
    /// Records still unfinished (another finisher at work, or an error):
    /// left for the next pass, their owner not forgotten.
    pub left: usize,
    /// Dead gateways of an older version without an index: their records
    /// need a scan of all records.
    pub unindexed: usize,
}

/// Finishes the unfinished records of dead gateways, found from their
/// indexes, and forgets each gateway whose records are all settled. Costs
/// one read per record a dead gateway had in flight, whatever the number of
/// records in `deliveries/`.
pub fn finish_dead_writers(app: &App) -> Recovered {
    let mut out = Recovered::default();
    for dead in app.deliveries.dead_owners() {
        out.owners += 1;
        if !dead.indexed {
            out.unindexed += 1;
            continue;
        }
        for key in app.deliveries.unfinished_of(&dead.name) {
            out.records += 1;
            let rec = match app.deliveries.read(&key) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(key, error = %e, "could not read a dead gateway's delivery record");
                    out.left += 1;
                    continue;
                }
            };
            match rec {
                Some((r, _)) if !r.committed && r.owner == dead.name => match resolve(app, &key) {
                    Ok(true) => out.finished += 1,
                    Ok(false) => out.left += 1,
                    Err(e) => {
                        tracing::warn!(job_id = %r.job_id, error = %e, "could not finish an interrupted delivery");
                        out.left += 1;
                    }
                },
                // Committed, gone, or another writer's record: nothing of
                // this owner to finish.
                _ => app.deliveries.drop_stale(&dead.name, &key),
            }
        }
        app.deliveries.forget_owner(&dead.name);
    }
    out
}
