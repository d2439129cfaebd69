//! The schedule file format (one `*.json` per schedule in `SCHEDULES_DIR`,
//! as `examples/schedules/nightly.json`) and the state the scheduler keeps
//! per schedule.
//!
//! ```json
//! {"id": "nightly", "enabled": true, "schedule": "0 3 * * *",
//!  "timezone": "Europe/Berlin", "catchup": "none",
//!  "payload": {"goal": "..."}}
//! ```
//!
//! `id`, `schedule` and `payload` are required; `enabled` defaults to true,
//! `timezone` to `UTC`, `catchup` to `none`. Unknown keys are refused (a
//! misspelt `timezone` must not silently mean UTC). [`parse_schedule`]
//! reports every problem at once as `{pointer, message}`, like
//! `validate_job`; [`Schedule::job`] turns the payload into the job of one
//! slot through the same `normalize` every entry point uses.
//!
//! Each slot's job id is derived from the schedule id and the slot's
//! instant ([`job_id`]), so whoever enqueues a slot a second time (another
//! scheduler, a restarted one) hits the queue's id reservation and does
//! nothing.

use crate::Job;
use crate::cron::CronExpr;
use crate::normalize::{EntryPoint, NormalizeOptions, normalize, parse_payload_bytes};
use crate::validate::{Violations, quote, type_name};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest schedule id: the derived job id `cron-<id>-<YYYYMMDDTHHMMSSZ>`
/// must fit the 64 characters of a job id.
pub const MAX_ID_CHARS: usize = 40;

/// Keys a schedule file may have.
pub const SCHEDULE_KEYS: &[&str] = &[
    "id", "enabled", "schedule", "timezone", "catchup", "payload",
];

/// What to do with slots that passed while no scheduler was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Catchup {
    /// Skip them; fire from the next slot on.
    #[default]
    None,
    /// Fire the most recent missed slot once, at start-up.
    Last,
}

impl Catchup {
    pub fn as_str(self) -> &'static str {
        match self {
            Catchup::None => "none",
            Catchup::Last => "last",
        }
    }
}

/// A valid schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub id: String,
    pub enabled: bool,
    pub cron: CronExpr,
    /// The IANA name as written (`UTC` when absent).
    pub timezone: String,
    pub tz: TimeZone,
    pub catchup: Catchup,
    /// The job payload (a JSON object), as `orch submit` takes it.
    pub payload: Map<String, Value>,
}

/// `[A-Za-z0-9][A-Za-z0-9_-]{0,39}`.
pub fn is_valid_schedule_id(s: &str) -> bool {
    (1..=MAX_ID_CHARS).contains(&s.len())
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The job id of a schedule's slot: `cron-<schedule id>-<UTC instant>`.
/// Different (schedule, slot) pairs never share one (the instant has a
/// fixed width).
pub fn job_id(schedule_id: &str, slot: Timestamp) -> String {
    format!("cron-{schedule_id}-{}", slot.strftime("%Y%m%dT%H%M%SZ"))
}

/// A slot as written in metadata, tags and state: RFC 3339 in UTC.
pub fn slot_text(slot: Timestamp) -> String {
    slot.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A time zone by IANA name, with a clear message when unknown.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    let plausible = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('/')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b));
    if !plausible {
        return Err(format!(
            "{} is not an IANA time zone name such as UTC or Europe/Berlin",
            quote(name)
        ));
    }
    TimeZone::get(name).map_err(|_| {
        format!(
            "unknown time zone {}: not in the time zone database (an IANA name such as UTC or Europe/Berlin; is tzdata installed?)",
            quote(name)
        )
    })
}

/// Parses and checks a schedule file's bytes; every problem is reported.
/// The payload is only checked to be an object without `job_id` here;
/// [`Schedule::job`] checks it as a job.
pub fn parse_schedule(bytes: &[u8]) -> Result<Schedule, Violations> {
    let value = parse_payload_bytes(bytes)?;
    let Value::Object(obj) = value else {
        return Err(Violations::single(
            "",
            format!(
                "a schedule must be a JSON object, got {}",
                type_name(&value)
            ),
        ));
    };
    let mut v = Violations::default();
    for k in obj.keys() {
        if !SCHEDULE_KEYS.contains(&k.as_str()) {
            v.push(
                crate::validate::pointer_push("", k),
                format!(
                    "unknown key {}: a schedule has {}",
                    quote(k),
                    SCHEDULE_KEYS.join(", ")
                ),
            );
        }
    }
    let id = match obj.get("id") {
        None => {
            v.push("/id", "required: the schedule's id");
            None
        }
        Some(Value::String(s)) if is_valid_schedule_id(s) => Some(s.clone()),
        Some(Value::String(s)) => {
            v.push(
                "/id",
                format!(
                    "{} is not a schedule id: 1 to {MAX_ID_CHARS} of [A-Za-z0-9_-], starting with a letter or digit",
                    quote(s)
                ),
            );
            None
        }
        Some(x) => {
            v.push("/id", format!("expected a string, got {}", type_name(x)));
            None
        }
    };
    let enabled = match obj.get("enabled") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(x) => {
            v.push(
                "/enabled",
                format!("expected true or false, got {}", type_name(x)),
            );
            false
        }
    };
    let cron = match obj.get("schedule") {
        None => {
            v.push(
                "/schedule",
                "required: a cron expression such as \"0 3 * * *\"",
            );
            None
        }
        Some(Value::String(s)) => match CronExpr::parse(s) {
            Ok(c) => Some(c),
            Err(e) => {
                v.push("/schedule", e.to_string());
                None
            }
        },
        Some(x) => {
            v.push(
                "/schedule",
                format!("expected a string, got {}", type_name(x)),
            );
            None
        }
    };
    let timezone = match obj.get("timezone") {
        None | Some(Value::Null) => Some("UTC".to_owned()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(x) => {
            v.push(
                "/timezone",
                format!("expected a string, got {}", type_name(x)),
            );
            None
        }
    };
    let tz = timezone.as_deref().and_then(|name| match time_zone(name) {
        Ok(tz) => Some(tz),
        Err(m) => {
            v.push("/timezone", m);
            None
        }
    });
    let catchup = match obj.get("catchup") {
        None | Some(Value::Null) => Catchup::None,
        Some(Value::String(s)) if s == "none" => Catchup::None,
        Some(Value::String(s)) if s == "last" => Catchup::Last,
        Some(x) => {
            let shown = x
                .as_str()
                .map(quote)
                .unwrap_or_else(|| type_name(x).to_owned());
            v.push(
                "/catchup",
                format!("expected \"none\" or \"last\", got {shown}"),
            );
            Catchup::None
        }
    };
    let payload = match obj.get("payload") {
        None => {
            v.push(
                "/payload",
                "required: the job to submit at each slot (as `orch submit` takes it)",
            );
            None
        }
        Some(Value::Object(p)) => {
            if p.contains_key("job_id") {
                v.push(
                    "/payload/job_id",
                    "a schedule's jobs get their id from the schedule and the slot (cron-<id>-<slot>); remove job_id",
                );
            }
            Some(p.clone())
        }
        Some(x) => {
            v.push(
                "/payload",
                format!("expected a JSON object (a job), got {}", type_name(x)),
            );
            None
        }
    };
    if let (Some(c), Some(tz)) = (&cron, &tz)
        && c.next_after(Timestamp::now(), tz).is_none()
    {
        v.push(
            "/schedule",
            format!("{} never fires (no such date)", quote(c.as_str())),
        );
    }
    match (id, cron, timezone, tz, payload) {
        (Some(id), Some(cron), Some(timezone), Some(tz), Some(payload)) if v.is_empty() => {
            Ok(Schedule {
                id,
                enabled,
                cron,
                timezone,
                tz,
                catchup,
                payload,
            })
        }
        _ => Err(v),
    }
}

impl Schedule {
    /// The payload of one slot: the schedule's payload with the derived
    /// `job_id`, and the schedule id and slot added to `metadata` and
    /// `tags`.
    pub fn payload_for(&self, slot: Timestamp) -> Value {
        let mut p = self.payload.clone();
        let slot_s = slot_text(slot);
        p.insert("job_id".into(), job_id(&self.id, slot).into());
        let tags = [format!("schedule:{}", self.id), format!("slot:{slot_s}")];
        match p.get_mut("tags") {
            Some(Value::Array(a)) => a.extend(tags.into_iter().map(Value::from)),
            // Absent or null: ours only; another type is left for the
            // validator to report.
            Some(Value::Null) | None => {
                p.insert("tags".into(), tags.into_iter().map(Value::from).collect());
            }
            Some(_) => {}
        }
        p.into()
    }

    /// The complete, validated job of one slot, normalised exactly as every
    /// other entry point's (`EntryPoint::Cron`; `metadata.schedule_id` and
    /// `metadata.schedule_slot` win over the payload's). Violations point
    /// into the schedule file (`/payload/...`).
    pub fn job(&self, slot: Timestamp, opts: &NormalizeOptions) -> Result<Job, Violations> {
        let mut opts = opts.clone();
        opts.extra_metadata
            .insert("schedule_id".into(), self.id.clone().into());
        opts.extra_metadata
            .insert("schedule_slot".into(), slot_text(slot).into());
        let entry = EntryPoint::Cron {
            schedule_id: self.id.clone(),
            slot: slot_text(slot),
        };
        normalize(self.payload_for(slot), &entry, &opts).map_err(|v| {
            v.into_iter()
                .map(|mut x| {
                    x.pointer = format!("/payload{}", x.pointer);
                    x
                })
                .collect()
        })
    }

    /// Every check of a schedule, including its payload as a job (made for
    /// the next slot, or now when there is none).
    pub fn check(&self, opts: &NormalizeOptions) -> Result<(), Violations> {
        let now = Timestamp::now();
        let slot = self.cron.next_after(now, &self.tz).unwrap_or(now);
        self.job(slot, opts).map(drop)
    }
}

/// What the scheduler remembers about a schedule between runs
/// (`QUEUE_ROOT/schedules/<id>.json`): since when it has been watched and
/// the last slot it fired, for catch-up and for `orch schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub schedule_id: String,
    /// When a scheduler first saw the schedule: slots before this were
    /// never due.
    pub first_seen: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_slot: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired_at: Option<Timestamp>,
    /// `enqueued` (the slot's job is in the queue, whichever scheduler
    /// wrote it), `invalid` (the payload did not normalise) or `error` (the
    /// queue refused the write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl ScheduleState {
    /// A schedule first seen at `now`, never fired.
    pub fn new(schedule_id: &str, now: Timestamp) -> Self {
        Self {
            schedule_id: schedule_id.to_owned(),
            first_seen: now,
            last_slot: None,
            last_job_id: None,
            last_fired_at: None,
            last_outcome: None,
            last_error: None,
        }
    }
}
