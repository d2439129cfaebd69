//! Cron expressions: a table of expressions with their expected next fire
//! times (daylight-saving changes included), refused expressions with the
//! field they blame, and property tests that the next fire time is later
//! than the given one, matches the expression, and that nothing matching
//! lies in between.

use contracts::cron::CronExpr;
use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use proptest::prelude::*;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn tz(name: &str) -> TimeZone {
    TimeZone::get(name).unwrap_or_else(|e| panic!("{name}: {e} (is tzdata installed?)"))
}

fn next(expr: &str, zone: &str, after: &str) -> Vec<String> {
    let c = CronExpr::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    c.upcoming(ts(after), &tz(zone), 3)
        .into_iter()
        .map(|t| t.to_string())
        .collect()
}

#[test]
fn next_fire_times_table() {
    // (expression, zone, after, the next three fire times in UTC)
    let table: &[(&str, &str, &str, [&str; 3])] = &[
        (
            "0 3 * * *",
            "UTC",
            "2026-01-01T03:00:00Z",
            [
                "2026-01-02T03:00:00Z",
                "2026-01-03T03:00:00Z",
                "2026-01-04T03:00:00Z",
            ],
        ),
        (
            "*/15 * * * *",
            "UTC",
            "2026-01-01T10:07:30Z",
            [
                "2026-01-01T10:15:00Z",
                "2026-01-01T10:30:00Z",
                "2026-01-01T10:45:00Z",
            ],
        ),
        (
            "5/20 * * * *",
            "UTC",
            "2026-01-01T10:50:00Z",
            [
                "2026-01-01T11:05:00Z",
                "2026-01-01T11:25:00Z",
                "2026-01-01T11:45:00Z",
            ],
        ),
        // 2026-01-02 is a Friday.
        (
            "0 9 * * MON-FRI",
            "UTC",
            "2026-01-02T10:00:00Z",
            [
                "2026-01-05T09:00:00Z",
                "2026-01-06T09:00:00Z",
                "2026-01-07T09:00:00Z",
            ],
        ),
        (
            "30 22 * * 1-5/2",
            "UTC",
            "2026-01-05T23:00:00Z",
            [
                "2026-01-07T22:30:00Z",
                "2026-01-09T22:30:00Z",
                "2026-01-12T22:30:00Z",
            ],
        ),
        (
            "0 0 1,15 jan,Jul *",
            "UTC",
            "2026-01-10T00:00:00Z",
            [
                "2026-01-15T00:00:00Z",
                "2026-07-01T00:00:00Z",
                "2026-07-15T00:00:00Z",
            ],
        ),
        (
            "0 0 31 * *",
            "UTC",
            "2026-04-01T00:00:00Z",
            [
                "2026-05-31T00:00:00Z",
                "2026-07-31T00:00:00Z",
                "2026-08-31T00:00:00Z",
            ],
        ),
        (
            "0 0 29 2 *",
            "UTC",
            "2026-01-01T00:00:00Z",
            [
                "2028-02-29T00:00:00Z",
                "2032-02-29T00:00:00Z",
                "2036-02-29T00:00:00Z",
            ],
        ),
        // Both day fields restricted: either matches (the 13th, or a Friday).
        (
            "0 12 13 * FRI",
            "UTC",
            "2026-01-01T00:00:00Z",
            [
                "2026-01-02T12:00:00Z",
                "2026-01-09T12:00:00Z",
                "2026-01-13T12:00:00Z",
            ],
        ),
        // A day field starting with `*` is unrestricted: both must match.
        (
            "0 12 */2 * FRI",
            "UTC",
            "2026-01-01T00:00:00Z",
            [
                "2026-01-09T12:00:00Z",
                "2026-01-23T12:00:00Z",
                "2026-02-13T12:00:00Z",
            ],
        ),
        (
            "0 0 * * 7",
            "UTC",
            "2026-01-01T00:00:00Z",
            [
                "2026-01-04T00:00:00Z",
                "2026-01-11T00:00:00Z",
                "2026-01-18T00:00:00Z",
            ],
        ),
        (
            "@weekly",
            "UTC",
            "2026-01-04T00:00:00Z",
            [
                "2026-01-11T00:00:00Z",
                "2026-01-18T00:00:00Z",
                "2026-01-25T00:00:00Z",
            ],
        ),
        (
            "@yearly",
            "UTC",
            "2026-06-01T00:00:00Z",
            [
                "2027-01-01T00:00:00Z",
                "2028-01-01T00:00:00Z",
                "2029-01-01T00:00:00Z",
            ],
        ),
        (
            "@monthly",
            "UTC",
            "2026-01-31T12:00:00Z",
            [
                "2026-02-01T00:00:00Z",
                "2026-03-01T00:00:00Z",
                "2026-04-01T00:00:00Z",
            ],
        ),
        (
            "@hourly",
            "UTC",
            "2026-12-31T23:00:00Z",
            [
                "2027-01-01T00:00:00Z",
                "2027-01-01T01:00:00Z",
                "2027-01-01T02:00:00Z",
            ],
        ),
        (
            "@daily",
            "Asia/Kolkata",
            "2026-01-01T00:00:00Z",
            [
                "2026-01-01T18:30:00Z",
                "2026-01-02T18:30:00Z",
                "2026-01-03T18:30:00Z",
            ],
        ),
        // Europe/Berlin skips 02:00-03:00 on 2026-03-29 (at 01:00 UTC): the
        // skipped 02:30 fires once, at the transition.
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-03-28T12:00:00Z",
            [
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z",
                "2026-03-31T00:30:00Z",
            ],
        ),
        // Hourly across the same gap: 02:00 (skipped) and 03:00 are the same
        // instant and fire once.
        (
            "0 * * * *",
            "Europe/Berlin",
            "2026-03-29T00:30:00Z",
            [
                "2026-03-29T01:00:00Z",
                "2026-03-29T02:00:00Z",
                "2026-03-29T03:00:00Z",
            ],
        ),
        // Every 15 minutes across the gap: the four skipped slots collapse.
        (
            "*/15 * * * *",
            "Europe/Berlin",
            "2026-03-29T00:40:00Z",
            [
                "2026-03-29T00:45:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:15:00Z",
            ],
        ),
        // Berlin repeats 02:00-03:00 on 2026-10-25 (back at 01:00 UTC): the
        // repeated 02:30 fires once, at its first occurrence.
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-10-24T12:00:00Z",
            [
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:30:00Z",
                "2026-10-27T01:30:00Z",
            ],
        ),
        (
            "0 * * * *",
            "Europe/Berlin",
            "2026-10-24T23:30:00Z",
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T03:00:00Z",
            ],
        ),
        // New York goes back at 06:00 UTC on 2026-11-01 (01:00-02:00 twice).
        (
            "*/30 * * * *",
            "America/New_York",
            "2026-11-01T05:15:00Z",
            [
                "2026-11-01T05:30:00Z",
                "2026-11-01T07:00:00Z",
                "2026-11-01T07:30:00Z",
            ],
        ),
        // ... and forward at 07:00 UTC on 2026-03-08 (02:00-03:00 skipped).
        (
            "15 2 * * SUN",
            "America/New_York",
            "2026-03-01T12:00:00Z",
            [
                "2026-03-08T07:00:00Z",
                "2026-03-15T06:15:00Z",
                "2026-03-22T06:15:00Z",
            ],
        ),
        // Lord Howe Island moves by 30 minutes (forward at 02:00 local on
        // 2026-10-04, i.e. 15:30 UTC the day before).
        (
            "10 2 * * *",
            "Australia/Lord_Howe",
            "2026-10-02T12:00:00Z",
            [
                "2026-10-02T15:40:00Z",
                "2026-10-03T15:30:00Z",
                "2026-10-04T15:10:00Z",
            ],
        ),
    ];
    for (expr, zone, after, want) in table {
        assert_eq!(
            next(expr, zone, after),
            want.to_vec(),
            "{expr} in {zone} after {after}"
        );
    }
}

#[test]
fn expressions_that_never_fire_have_no_next_time() {
    for expr in ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *"] {
        let c = CronExpr::parse(expr).unwrap();
        assert_eq!(
            c.next_after(ts("2026-01-01T00:00:00Z"), &TimeZone::UTC),
            None,
            "{expr}"
        );
    }
}

#[test]
fn previous_fire_time_is_the_latest_at_or_before() {
    let c = CronExpr::parse("*/10 * * * *").unwrap();
    let at = ts("2026-05-05T10:25:00Z");
    assert_eq!(
        c.prev_at_or_before(at, &TimeZone::UTC),
        Some(ts("2026-05-05T10:20:00Z"))
    );
    assert_eq!(
        c.prev_at_or_before(ts("2026-05-05T10:20:00Z"), &TimeZone::UTC),
        Some(ts("2026-05-05T10:20:00Z"))
    );
    // During Berlin's repeated hour (its second pass: 01:40 UTC is 02:40
    // CET), slots fired at their first occurrence: the latest is 02:50 CEST.
    let daily = CronExpr::parse("*/10 2 * * *").unwrap();
    assert_eq!(
        daily.prev_at_or_before(ts("2026-10-25T01:40:00Z"), &tz("Europe/Berlin")),
        Some(ts("2026-10-25T00:50:00Z"))
    );
}

#[test]
fn bad_expressions_name_the_field_and_the_problem() {
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("", None, "expected 5 fields"),
        ("* * * *", None, "got 4 fields"),
        ("* * * * * *", None, "got 6 fields"),
        ("60 * * * *", Some("minute"), "out of range 0-59"),
        ("* 24 * * *", Some("hour"), "out of range 0-23"),
        ("* * 0 * *", Some("day-of-month"), "out of range 1-31"),
        ("* * * 13 *", Some("month"), "out of range 1-12"),
        ("* * * * 8", Some("day-of-week"), "out of range 0-7"),
        (
            "99999999999999999999 * * * *",
            Some("minute"),
            "out of range",
        ),
        ("*/0 * * * *", Some("minute"), "step"),
        ("*/99999999999 * * * *", Some("minute"), "step"),
        ("*/ * * * *", Some("minute"), "step"),
        ("5-1 * * * *", Some("minute"), "runs backwards"),
        ("MON * * * *", Some("minute"), "not a number"),
        (
            "* * * JANUARY *",
            Some("month"),
            "not a number 1-12 or a name JAN-DEC",
        ),
        (
            "* * * * FUN",
            Some("day-of-week"),
            "not a number 0-7 or a name SUN-SAT",
        ),
        ("1,,2 * * * *", Some("minute"), "empty list item"),
        ("-1 * * * *", Some("minute"), "empty value"),
        ("* * * * é", Some("day-of-week"), "other than ASCII"),
        ("@reboot", None, "unknown macro"),
        ("@every 5m", None, "unknown macro"),
    ];
    for (expr, field, needle) in cases {
        let e = CronExpr::parse(expr).expect_err(expr);
        assert_eq!(e.field, *field, "{expr:?}: {e}");
        assert!(e.to_string().contains(needle), "{expr:?}: {e}");
    }
    let long = format!("{} * * * *", "1,".repeat(300));
    assert!(
        CronExpr::parse(&long)
            .unwrap_err()
            .to_string()
            .contains("longer than")
    );
}

#[test]
fn names_and_sevens_mean_what_cron_means() {
    let a = CronExpr::parse("0 0 * Jan-MAR sun,7").unwrap();
    let b = CronExpr::parse("0 0 * 1-3 0").unwrap();
    let t = ts("2026-01-01T00:00:00Z");
    assert_eq!(
        a.upcoming(t, &TimeZone::UTC, 20),
        b.upcoming(t, &TimeZone::UTC, 20)
    );
}

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Santiago",
];

fn field(max: u32, min: u32) -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_owned()),
        (min..=max).prop_map(|v| v.to_string()),
        (min..=max, min..=max).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
        (1..=max.max(1)).prop_map(|s| format!("*/{s}")),
        prop::collection::vec(min..=max, 1..4).prop_map(|v| v
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")),
    ]
}

fn expression() -> impl Strategy<Value = String> {
    (
        field(59, 0),
        field(23, 0),
        field(31, 1),
        field(12, 1),
        field(7, 0),
    )
        .prop_map(|(a, b, c, d, e)| format!("{a} {b} {c} {d} {e}"))
}

/// A fire time is either a matching wall-clock minute, or the transition
/// that ends a skipped stretch containing one.
fn is_slot(c: &CronExpr, t: Timestamp, zone: &TimeZone) -> bool {
    let local = zone.to_datetime(t);
    if local.second() == 0 && c.matches(local) {
        // And it is the first occurrence of that wall-clock time.
        return contracts::cron::instant(zone, local) == Some(t);
    }
    // A transition: some matching civil minute in the skipped stretch maps
    // to it.
    let before: DateTime = zone.to_datetime(t - jiff::SignedDuration::from_secs(1));
    let mut m = before.with().second(0).build().unwrap();
    while m < local {
        m = m.checked_add(jiff::SignedDuration::from_secs(60)).unwrap();
        if m < local && c.matches(m) && contracts::cron::instant(zone, m) == Some(t) {
            return true;
        }
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn next_is_later_and_is_a_slot(
        expr in expression(),
        zone in prop::sample::select(ZONES),
        secs in 1_600_000_000i64..2_100_000_000,
    ) {
        let c = CronExpr::parse(&expr).unwrap();
        let zone = tz(zone);
        let t = Timestamp::from_second(secs).unwrap();
        if let Some(n) = c.next_after(t, &zone) {
            prop_assert!(n > t, "{expr}: {n} is not after {t}");
            prop_assert!(is_slot(&c, n, &zone), "{expr}: {n} is not a slot in {zone:?}");
            // prev and next agree.
            prop_assert_eq!(c.prev_at_or_before(n, &zone), Some(n));
            let p = c.prev_at_or_before(t, &zone);
            prop_assert!(p.is_none_or(|p| p <= t && c.next_after(p, &zone) == Some(n)),
                "{expr}: prev {p:?} of {t} does not lead to {n}");
        }
    }

    #[test]
    fn nothing_matches_between_t_and_next(
        expr in expression(),
        secs in 1_600_000_000i64..2_100_000_000,
    ) {
        let c = CronExpr::parse(&expr).unwrap();
        let t = Timestamp::from_second(secs).unwrap();
        let n = c.next_after(t, &TimeZone::UTC);
        // Walk minute by minute for up to three days (or to `n`).
        let mut m = TimeZone::UTC.to_datetime(t).with().second(0).subsec_nanosecond(0).build().unwrap();
        for _ in 0..3 * 1440 {
            m = m.checked_add(jiff::SignedDuration::from_secs(60)).unwrap();
            let at = m.to_zoned(TimeZone::UTC).unwrap().timestamp();
            if n.is_some_and(|n| at >= n) {
                break;
            }
            prop_assert!(!c.matches(m), "{expr}: {m} matches but next_after({t}) = {n:?}");
        }
    }
}

#[test]
fn schedule_files_report_every_problem_at_once() {
    use contracts::schedule::parse_schedule;
    let bad = br#"{"id": "../etc", "enabled": "yes", "schedule": "61 * * * *",
        "timezone": "Mars/Olympus_Mons", "catchup": "all", "payload": {"job_id": "x"},
        "timezon": "UTC"}"#;
    let v = parse_schedule(bad).unwrap_err();
    let pointers: Vec<&str> = v.iter().map(|x| x.pointer.as_str()).collect();
    for p in [
        "/id",
        "/enabled",
        "/schedule",
        "/timezone",
        "/catchup",
        "/payload/job_id",
        "/timezon",
    ] {
        assert!(pointers.contains(&p), "{p} missing from {v}");
    }
    let text = v.to_string();
    assert!(text.contains("out of range 0-59"), "{text}");
    assert!(text.contains("unknown time zone"), "{text}");

    // Required fields, wrong document types, hostile bytes.
    let v = parse_schedule(b"{}").unwrap_err();
    assert_eq!(v.len(), 3, "{v}");
    for (bytes, needle) in [
        (&b"[]"[..], "must be a JSON object"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"{\"id\": ", "truncated"),
        (b"", "empty"),
        (
            br#"{"id": "a", "schedule": "99999999999999999999 * * * *", "payload": {"goal": "g"}}"#,
            "out of range",
        ),
        (
            br#"{"id": "a", "schedule": "* * * * *", "timezone": "../../etc/passwd", "payload": {"goal": "g"}}"#,
            "not an IANA time zone name",
        ),
        (
            br#"{"id": "a", "schedule": "0 0 30 2 *", "payload": {"goal": "g"}}"#,
            "never fires",
        ),
        (
            br#"{"id": "a", "id": "b", "schedule": "* * * * *", "payload": {"goal": "g"}}"#,
            "duplicate key",
        ),
        (
            br#"{"id": "a", "enabled": 99999999999999999999999, "schedule": "* * * * *", "payload": {"goal": "g"}}"#,
            "expected true or false",
        ),
    ] {
        let v = parse_schedule(bytes).unwrap_err();
        assert!(
            v.to_string().contains(needle),
            "{:?}: {v}",
            String::from_utf8_lossy(bytes)
        );
    }

    // Defaults, and a payload that is not a valid job is caught by check().
    let s =
        parse_schedule(br#"{"id": "n1", "schedule": "@daily", "payload": {"goal": ""}}"#).unwrap();
    assert!(s.enabled);
    assert_eq!(s.timezone, "UTC");
    assert_eq!(s.catchup, contracts::schedule::Catchup::None);
    let v = s
        .check(&contracts::NormalizeOptions::default())
        .unwrap_err();
    assert!(v.iter().any(|x| x.pointer == "/payload/goal"), "{v}");
}
