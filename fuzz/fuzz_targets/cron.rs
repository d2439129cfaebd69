//! Cron expressions (`contracts::cron`): the input is an instant, a zone
//! and an expression. `CronExpr::parse` never panics; an accepted
//! expression parses again from its `as_str` to the same thing; the next
//! fire time is strictly later than the instant, is the latest fire time at
//! or before itself, and (in UTC, where no wall-clock minute is skipped or
//! repeated) is a matching minute.

#![no_main]

use arbitrary::Unstructured;
use contracts::cron::CronExpr;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use libfuzzer_sys::fuzz_target;

/// Zones with DST gaps and folds of every shape; UTC first.
const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Santiago",
];

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(secs) = u.int_in_range(0i64..=4_102_444_800) else {
        return;
    };
    let Ok(zone_ix) = u.choose_index(ZONES.len()) else {
        return;
    };
    let expr = String::from_utf8_lossy(u.take_rest());

    let Ok(c) = CronExpr::parse(&expr) else {
        return;
    };
    assert_eq!(CronExpr::parse(c.as_str()).as_ref(), Ok(&c), "{expr:?}");

    // A zone missing from this host's tz database is skipped, not failed.
    let Ok(zone) = TimeZone::get(ZONES[zone_ix]) else {
        return;
    };
    let t = Timestamp::from_second(secs).expect("in range");
    if let Some(n) = c.next_after(t, &zone) {
        assert!(n > t, "{expr:?}: next {n} is not after {t}");
        assert_eq!(
            c.prev_at_or_before(n, &zone),
            Some(n),
            "{expr:?} in {}: prev of next {n}",
            ZONES[zone_ix]
        );
        if zone_ix == 0 {
            assert!(
                c.matches(zone.to_datetime(n)),
                "{expr:?}: {n} does not match"
            );
        }
    }
});
