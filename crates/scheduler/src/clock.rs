//! The clock schedules are judged by: the system clock, or, for tests, a
//! clock that reads a chosen instant at a chosen real instant and runs a
//! chosen number of times faster (`SCHEDULER_TEST_CLOCK`). Every process
//! given the same setting reads the same time, so two schedulers under test
//! still agree on which slot is due, and minute boundaries pass in seconds.

use jiff::{SignedDuration, Timestamp};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    fake: Option<Fake>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Fake {
    fake_start: Timestamp,
    real_start: Timestamp,
    speed: f64,
}

impl Clock {
    pub fn system() -> Self {
        Self { fake: None }
    }

    /// `FAKE_START,REAL_START,SPEED`: two RFC 3339 instants and a speed
    /// from 1 to 3600.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let [fake, real, speed] = parts[..] else {
            return Err("FAKE_START,REAL_START,SPEED".into());
        };
        let ts = |x: &str| {
            x.parse::<Timestamp>()
                .map_err(|_| format!("{x:?} is not an RFC 3339 instant"))
        };
        let speed: f64 = speed
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && (1.0..=3600.0).contains(v))
            .ok_or_else(|| format!("speed {speed:?} is not a number from 1 to 3600"))?;
        Ok(Self {
            fake: Some(Fake {
                fake_start: ts(fake)?,
                real_start: ts(real)?,
                speed,
            }),
        })
    }

    pub fn now(&self) -> Timestamp {
        let real = Timestamp::now();
        match self.fake {
            None => real,
            Some(f) => {
                let elapsed = real.duration_since(f.real_start).as_secs_f64() * f.speed;
                f.fake_start
                    .checked_add(SignedDuration::from_secs_f64(elapsed))
                    .unwrap_or(f.fake_start)
            }
        }
    }

    /// Real time to wait until the clock reads `at` (zero when it already
    /// does).
    pub fn real_wait(&self, at: Timestamp) -> Duration {
        let ahead = at.duration_since(self.now()).as_secs_f64();
        if ahead <= 0.0 {
            return Duration::ZERO;
        }
        let speed = self.fake.map_or(1.0, |f| f.speed);
        Duration::try_from_secs_f64(ahead / speed).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fake_clock_runs_from_its_start_at_its_speed() {
        let real_start = Timestamp::now() - SignedDuration::from_secs(2);
        let c = Clock::parse(&format!("2030-01-01T00:00:00Z,{real_start},30")).unwrap();
        let now = c.now();
        let t0: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        // Two real seconds at 30x: at least a minute has passed.
        assert!(now >= t0 + SignedDuration::from_secs(60), "{now}");
        assert!(c.real_wait(now + SignedDuration::from_secs(30)) <= Duration::from_secs(1));
        for bad in [
            "",
            "x,y,1",
            "2030-01-01T00:00:00Z,2030-01-01T00:00:00Z,0",
            "2030-01-01T00:00:00Z,2030-01-01T00:00:00Z,1e9",
        ] {
            assert!(Clock::parse(bad).is_err(), "{bad}");
        }
    }
}
