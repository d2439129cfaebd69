//! Cron expressions and their fire times in a time zone.
//!
//! The grammar is the classic five fields `minute hour day-of-month month
//! day-of-week` (0-59, 0-23, 1-31, 1-12 or `JAN`-`DEC`, 0-7 or `SUN`-`SAT`
//! with 0 and 7 both Sunday), each a `*`, a value, a range `a-b`, a step
//! `*/n`, `a-b/n` or `a/n` (from `a` to the field's maximum), or a
//! comma-separated list of those; names are case-insensitive. The macros
//! `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`)
//! and `@hourly` stand for their usual expansions. As in every classic cron,
//! when both day fields are restricted a day matches if *either* does, and
//! a day field written starting with `*` counts as unrestricted.
//!
//! Fire times are computed on civil (wall-clock) time in the schedule's
//! zone and then mapped to instants, so daylight-saving changes behave as
//! an operator expects:
//! - a slot whose wall-clock time does not exist (the hour skipped when
//!   clocks go forward) fires once, at the instant of the transition; several
//!   such slots (an every-15-minutes schedule) collapse into that one firing;
//! - a slot whose wall-clock time occurs twice (the hour repeated when
//!   clocks go back) fires once, at its first occurrence.
//!
//! The mapping from civil time to instant is monotone, which is what makes
//! [`CronExpr::next_after`] simple: walk matching civil times upwards and
//! return the first whose instant lies after the given one.
//!
//! Written here rather than taken from a crate: the maintained cron crates
//! compute on `chrono` types (a second date-time library and a second
//! time-zone database beside `jiff`) and resolve skipped and repeated hours
//! differently from each other; this module is small, pure, and its
//! semantics are the ones documented above and tested in
//! `crates/contracts/tests/contracts/cron.rs`.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan};

/// Longest expression accepted (far more than any real one needs).
pub const MAX_EXPRESSION_CHARS: usize = 256;

/// How many years a search for the next or previous fire time looks at
/// before concluding there is none. `0 0 29 2 *` fires at least every eight
/// years; with a weekday restriction too, the calendar repeats every 28.
const SEARCH_YEARS: i16 = 60;

/// Why an expression was refused. `field` names the field (`minute`,
/// `hour`, `day-of-month`, `month`, `day-of-week`) when one is to blame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", field.map(|f| format!("{f} field: ")).unwrap_or_default())]
pub struct CronError {
    pub field: Option<&'static str>,
    pub message: String,
}

fn err(field: Option<&'static str>, message: impl Into<String>) -> CronError {
    CronError {
        field,
        message: message.into(),
    }
}

/// A parsed expression: one bit set per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronExpr {
    source: String,
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday = 0.
    weekdays: u8,
    day_star: bool,
    weekday_star: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MONTH_NAMES: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAY_NAMES: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: MONTH_NAMES,
    },
    Field {
        name: "day-of-week",
        min: 0,
        max: 7,
        names: DAY_NAMES,
    },
];

impl Field {
    /// One value: a number in range or (month, weekday) a name.
    fn value(&self, s: &str) -> Result<u32, CronError> {
        if s.is_empty() {
            return Err(err(Some(self.name), "empty value"));
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            // Compared as text first so 99999999999999999999 is "out of
            // range", not an overflow.
            let n = s
                .trim_start_matches('0')
                .parse::<u32>()
                .ok()
                .or_else(|| s.bytes().all(|b| b == b'0').then_some(0));
            return match n {
                Some(n) if (self.min..=self.max).contains(&n) => Ok(n),
                _ => Err(err(
                    Some(self.name),
                    format!("{} is out of range {}-{}", cut(s), self.min, self.max),
                )),
            };
        }
        let upper = s.to_ascii_uppercase();
        if let Some(i) = self.names.iter().position(|n| *n == upper) {
            // Months are 1-based, weekdays 0-based.
            return Ok(i as u32 + if self.min == 1 { 1 } else { 0 });
        }
        let expected = if self.names.is_empty() {
            format!("a number {}-{}", self.min, self.max)
        } else {
            format!(
                "a number {}-{} or a name {}-{}",
                self.min,
                self.max,
                self.names[0],
                self.names[self.names.len() - 1]
            )
        };
        Err(err(
            Some(self.name),
            format!("{} is not {expected}", quote(s)),
        ))
    }

    /// Bits of a whole field (`*`, lists, ranges, steps) and whether it
    /// starts with `*`.
    fn parse(&self, text: &str) -> Result<(u64, bool), CronError> {
        let mut bits = 0u64;
        for item in text.split(',') {
            if item.is_empty() {
                return Err(err(
                    Some(self.name),
                    format!("{} has an empty list item", quote(text)),
                ));
            }
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => {
                    let step = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                        s.parse::<u32>().ok().filter(|n| *n >= 1 && *n <= self.max)
                    } else {
                        None
                    };
                    let Some(step) = step else {
                        return Err(err(
                            Some(self.name),
                            format!(
                                "step {} must be a whole number from 1 to {}",
                                quote(s),
                                self.max
                            ),
                        ));
                    };
                    (r, Some(step))
                }
                None => (item, None),
            };
            let (lo, hi) = if range == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                let (a, b) = (self.value(a)?, self.value(b)?);
                if a > b {
                    return Err(err(
                        Some(self.name),
                        format!("range {} runs backwards", quote(range)),
                    ));
                }
                (a, b)
            } else {
                let a = self.value(range)?;
                // `a/n` means from a to the maximum, every n.
                (a, if step.is_some() { self.max } else { a })
            };
            let step = step.unwrap_or(1);
            let mut v = lo;
            while v <= hi {
                bits |= 1 << v;
                v += step;
            }
        }
        Ok((bits, text.starts_with('*')))
    }
}

fn quote(s: &str) -> String {
    format!("{:?}", cut(s))
}

fn cut(s: &str) -> String {
    let mut c: String = s.chars().take(24).collect();
    if c.len() < s.len() {
        c.push('…');
    }
    c
}

impl CronExpr {
    /// Parses an expression; the error names the field and the problem.
    pub fn parse(expr: &str) -> Result<Self, CronError> {
        if expr.chars().count() > MAX_EXPRESSION_CHARS {
            return Err(err(
                None,
                format!("the expression is longer than {MAX_EXPRESSION_CHARS} characters"),
            ));
        }
        let trimmed = expr.trim();
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            m if m.starts_with('@') => {
                return Err(err(
                    None,
                    format!(
                        "unknown macro {}: expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly",
                        quote(trimmed)
                    ),
                ));
            }
            _ => trimmed,
        };
        let parts: Vec<&str> = expanded.split_ascii_whitespace().collect();
        if parts.len() != 5 {
            return Err(err(
                None,
                format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week) or a macro such as @daily, got {} field{}",
                    parts.len(),
                    if parts.len() == 1 { "" } else { "s" }
                ),
            ));
        }
        let mut bits = [0u64; 5];
        let mut stars = [false; 5];
        for (i, (field, text)) in FIELDS.iter().zip(&parts).enumerate() {
            if !text.is_ascii() {
                return Err(err(
                    Some(field.name),
                    format!("{} contains characters other than ASCII", quote(text)),
                ));
            }
            (bits[i], stars[i]) = field.parse(text)?;
        }
        // Day-of-week 7 is Sunday too.
        let mut weekdays = bits[4];
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        Ok(Self {
            source: trimmed.to_owned(),
            minutes: bits[0],
            hours: bits[1] as u32,
            days: bits[2] as u32,
            months: bits[3] as u16,
            weekdays: weekdays as u8,
            day_star: stars[2],
            weekday_star: stars[4],
        })
    }

    /// The expression as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    fn date_matches(&self, d: Date) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let day = self.days & (1 << d.day()) != 0;
        let weekday = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.day_star || self.weekday_star {
            day && weekday
        } else {
            day || weekday
        }
    }

    /// Whether a civil date and time (to the minute; seconds are ignored)
    /// matches the expression.
    pub fn matches(&self, dt: DateTime) -> bool {
        self.date_matches(dt.date())
            && self.hours & (1 << dt.hour()) != 0
            && self.minutes & (1 << dt.minute()) != 0
    }

    fn hour_list(&self) -> impl DoubleEndedIterator<Item = i8> + '_ {
        (0..24i8).filter(|h| self.hours & (1 << h) != 0)
    }

    fn minute_list(&self) -> impl DoubleEndedIterator<Item = i8> + '_ {
        (0..60i8).filter(|m| self.minutes & (1 << m) != 0)
    }

    /// The earliest matching civil minute at or after `from` (rounded up to
    /// a whole minute), within `SEARCH_YEARS`.
    pub fn next_civil(&self, from: DateTime) -> Option<DateTime> {
        let from = if from.second() != 0 || from.subsec_nanosecond() != 0 {
            floor_minute(from).checked_add(1.minute()).ok()?
        } else {
            from
        };
        let last_year = from.year().saturating_add(SEARCH_YEARS).min(9999);
        for year in from.year()..=last_year {
            for month in 1..=12i8 {
                if self.months & (1 << month) == 0 || (year == from.year() && month < from.month())
                {
                    continue;
                }
                let first = if (year, month) == (from.year(), from.month()) {
                    from.day()
                } else {
                    1
                };
                let Ok(d1) = Date::new(year, month, 1) else {
                    continue;
                };
                for day in first..=d1.days_in_month() {
                    let Ok(date) = Date::new(year, month, day) else {
                        continue;
                    };
                    if !self.date_matches(date) {
                        continue;
                    }
                    let today = date == from.date();
                    for h in self.hour_list() {
                        if today && h < from.hour() {
                            continue;
                        }
                        for m in self.minute_list() {
                            if today && h == from.hour() && m < from.minute() {
                                continue;
                            }
                            return Some(date.to_datetime(Time::constant(h, m, 0, 0)));
                        }
                    }
                }
            }
        }
        None
    }

    /// The latest matching civil minute at or before `from`, within
    /// `SEARCH_YEARS`.
    pub fn prev_civil(&self, from: DateTime) -> Option<DateTime> {
        let from = floor_minute(from);
        let first_year = from.year().saturating_sub(SEARCH_YEARS).max(-9999);
        for year in (first_year..=from.year()).rev() {
            for month in (1..=12i8).rev() {
                if self.months & (1 << month) == 0 || (year == from.year() && month > from.month())
                {
                    continue;
                }
                let Ok(d1) = Date::new(year, month, 1) else {
                    continue;
                };
                let last = if (year, month) == (from.year(), from.month()) {
                    from.day()
                } else {
                    d1.days_in_month()
                };
                for day in (1..=last).rev() {
                    let Ok(date) = Date::new(year, month, day) else {
                        continue;
                    };
                    if !self.date_matches(date) {
                        continue;
                    }
                    let today = date == from.date();
                    for h in self.hour_list().rev() {
                        if today && h > from.hour() {
                            continue;
                        }
                        for m in self.minute_list().rev() {
                            if today && h == from.hour() && m > from.minute() {
                                continue;
                            }
                            return Some(date.to_datetime(Time::constant(h, m, 0, 0)));
                        }
                    }
                }
            }
        }
        None
    }

    /// The first fire time strictly after `t` in zone `tz`; `None` when the
    /// expression never matches (`0 0 30 2 *`).
    pub fn next_after(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = floor_minute(tz.to_datetime(t));
        let mut c = local.checked_add(1.minute()).ok()?;
        // Candidates are skipped only while the wall clock repeats an hour
        // or inside a skipped hour: a few hundred at most.
        for _ in 0..10_000 {
            c = self.next_civil(c)?;
            let s = instant(tz, c)?;
            if s > t {
                return Some(s);
            }
            c = c.checked_add(1.minute()).ok()?;
        }
        None
    }

    /// The latest fire time at or before `t` in zone `tz`.
    pub fn prev_at_or_before(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        // A civil time up to a day later can still map to an instant at or
        // before `t` (when clocks went back): start there and walk down.
        let local = floor_minute(tz.to_datetime(t));
        let mut c = local.checked_add(1.day()).unwrap_or(local);
        for _ in 0..10_000 {
            c = self.prev_civil(c)?;
            let s = instant(tz, c)?;
            if s <= t {
                return Some(s);
            }
            c = c.checked_sub(1.minute()).ok()?;
        }
        None
    }

    /// The next `n` fire times after `t`.
    pub fn upcoming(&self, t: Timestamp, tz: &TimeZone, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            match self.next_after(at, tz) {
                Some(s) => {
                    out.push(s);
                    at = s;
                }
                None => break,
            }
        }
        out
    }
}

impl std::fmt::Display for CronExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

fn floor_minute(dt: DateTime) -> DateTime {
    dt.with()
        .second(0)
        .subsec_nanosecond(0)
        .build()
        .unwrap_or(dt)
}

/// The instant a matching civil time fires at in `tz`: the only one when
/// unambiguous, the first of two when the clock repeats it, the transition
/// when the clock skips it.
pub fn instant(tz: &TimeZone, c: DateTime) -> Option<Timestamp> {
    match tz.to_ambiguous_timestamp(c).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(c).ok(),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(c).ok(),
        AmbiguousOffset::Gap { after, .. } => {
            // `c` read with the later offset lies just before the
            // transition; the next transition from there is the one.
            let early = after.to_timestamp(c).ok()?;
            tz.following(early).next().map(|tr| tr.timestamp())
        }
    }
}
