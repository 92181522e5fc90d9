//! When a policy's backups run. All times are UTC, like the names of
//! recovery points.
//!
//! | written                | slots                                                        |
//! |------------------------|--------------------------------------------------------------|
//! | `manual`               | none: backups run only when asked (`kluis backup ITEM`)      |
//! | `hourly`               | every hour at minute 0 (= `every 1h`)                        |
//! | `every 4h`, `every 30m`| from 00:00 UTC every N hours (minutes), restarting each day: `every 5h` runs at 00, 05, 10, 15, 20 |
//! | `daily 02:00`          | every day at 02:00                                           |
//! | `weekly sun 03:00`     | every Sunday at 03:00 (`mon` … `sun`, or full names)         |
//!
//! A backup is due when a slot has passed since the item's last backup
//! began (or, before its first, since it was protected); see
//! crate::scheduler.

use std::fmt;

use crate::error::{Error, Result};

pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 86_400_000;
const DAY_MIN: u32 = 24 * 60;
const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    Manual,
    /// Every `minutes` from midnight, restarting each day (divides nothing).
    Every { minutes: u32 },
    Daily { minute: u32 },
    /// `weekday` 0 = Monday.
    Weekly { weekday: u32, minute: u32 },
}

/// Days since 1970-01-01 of a time, and minutes into that day.
fn split(ms: i64) -> (i64, i64) {
    (ms.div_euclid(DAY_MS), ms.rem_euclid(DAY_MS) / MINUTE_MS)
}

/// 0 = Monday (1970-01-01 was a Thursday).
pub fn weekday(day: i64) -> i64 {
    (day + 3).rem_euclid(7)
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Schedule> {
        let bad = |why: &str| {
            Error::InvalidInput(format!(
                "schedule {s:?}: {why}; expected manual, hourly, 'every 4h', 'every 30m', 'daily 02:00' or 'weekly sun 03:00' (UTC)"
            ))
        };
        let words: Vec<String> = s.split_whitespace().map(|w| w.to_ascii_lowercase()).collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["manual"] | ["none"] => Ok(Schedule::Manual),
            ["hourly"] => Ok(Schedule::Every { minutes: 60 }),
            ["every", n] => {
                let (num, unit) = n.split_at(n.find(|c: char| !c.is_ascii_digit()).unwrap_or(n.len()));
                let num: u32 = num.parse().map_err(|_| bad("no number"))?;
                let minutes = match unit {
                    "h" | "hour" | "hours" => num.checked_mul(60).ok_or_else(|| bad("too long"))?,
                    "m" | "min" | "minutes" => num,
                    _ => return Err(bad("unit must be h or m")),
                };
                if minutes == 0 || minutes > DAY_MIN {
                    return Err(bad("the interval must be between 1 minute and 24 hours"));
                }
                Ok(Schedule::Every { minutes })
            }
            ["daily", t] => Ok(Schedule::Daily { minute: parse_hhmm(t).ok_or_else(|| bad("time must be HH:MM"))? }),
            ["weekly", d, t] => {
                let weekday = WEEKDAYS
                    .iter()
                    .position(|w| d.starts_with(w) && "monday tuesday wednesday thursday friday saturday sunday".contains(*d))
                    .ok_or_else(|| bad("unknown day"))? as u32;
                Ok(Schedule::Weekly { weekday, minute: parse_hhmm(t).ok_or_else(|| bad("time must be HH:MM"))? })
            }
            _ => Err(bad("not understood")),
        }
    }

    /// The latest slot at or before `now`; None for manual.
    pub fn last_slot(&self, now: i64) -> Option<i64> {
        let (day, min) = split(now);
        let at = |day: i64, minute: u32| day * DAY_MS + minute as i64 * MINUTE_MS;
        Some(match *self {
            Schedule::Manual => return None,
            Schedule::Every { minutes } => at(day, (min as u32 / minutes) * minutes),
            Schedule::Daily { minute } => {
                if min >= minute as i64 { at(day, minute) } else { at(day - 1, minute) }
            }
            Schedule::Weekly { weekday: wd, minute } => {
                let this_week = at(day - weekday(day) + wd as i64, minute);
                if this_week <= now { this_week } else { this_week - 7 * DAY_MS }
            }
        })
    }

    /// The first slot after `t`; None for manual.
    pub fn next_slot(&self, t: i64) -> Option<i64> {
        let last = self.last_slot(t)?;
        Some(match *self {
            Schedule::Manual => unreachable!(),
            Schedule::Every { minutes } => {
                let next = last + minutes as i64 * MINUTE_MS;
                let next_day = (t.div_euclid(DAY_MS) + 1) * DAY_MS;
                next.min(next_day)
            }
            Schedule::Daily { .. } => last + DAY_MS,
            Schedule::Weekly { .. } => last + 7 * DAY_MS,
        })
    }

    /// True when a slot lies in (anchor, now].
    pub fn due(&self, anchor: i64, now: i64) -> bool {
        self.last_slot(now).is_some_and(|s| s > anchor)
    }
}

fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && !s.starts_with('+')).then_some(h * 60 + m)
}

impl fmt::Display for Schedule {
    /// The canonical spelling; parses back to the same schedule.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Schedule::Manual => write!(f, "manual"),
            Schedule::Every { minutes: 60 } => write!(f, "hourly"),
            Schedule::Every { minutes } if minutes % 60 == 0 => write!(f, "every {}h", minutes / 60),
            Schedule::Every { minutes } => write!(f, "every {minutes}m"),
            Schedule::Daily { minute } => write!(f, "daily {:02}:{:02}", minute / 60, minute % 60),
            Schedule::Weekly { weekday, minute } => {
                write!(f, "weekly {} {:02}:{:02}", WEEKDAYS[weekday as usize], minute / 60, minute % 60)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn parse_and_display() {
        for (given, canon) in [
            ("hourly", "hourly"),
            ("every 4h", "every 4h"),
            ("every 90m", "every 90m"),
            ("every 120m", "every 2h"),
            ("daily 02:00", "daily 02:00"),
            ("Daily 2:05", "daily 02:05"),
            ("weekly sun 03:00", "weekly sun 03:00"),
            ("weekly Sunday 03:00", "weekly sun 03:00"),
            ("manual", "manual"),
        ] {
            let s = Schedule::parse(given).unwrap();
            assert_eq!(s.to_string(), canon, "{given}");
            assert_eq!(Schedule::parse(canon).unwrap(), s);
        }
        for bad in ["", "daily", "daily 24:00", "daily 2:60", "every 0h", "every 25h", "every 3x", "weekly sunny 03:00", "weekly su 03:00", "monthly 1"] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn slots() {
        let d = Schedule::parse("daily 02:00").unwrap();
        assert_eq!(d.last_slot(t("2026-03-10T02:00:00Z")), Some(t("2026-03-10T02:00:00Z")));
        assert_eq!(d.last_slot(t("2026-03-10T01:59:59Z")), Some(t("2026-03-09T02:00:00Z")));
        assert_eq!(d.next_slot(t("2026-03-10T02:00:00Z")), Some(t("2026-03-11T02:00:00Z")));

        let e = Schedule::parse("every 5h").unwrap();
        assert_eq!(e.last_slot(t("2026-03-10T23:30:00Z")), Some(t("2026-03-10T20:00:00Z")));
        assert_eq!(e.next_slot(t("2026-03-10T20:00:00Z")), Some(t("2026-03-11T00:00:00Z")));
        assert_eq!(e.next_slot(t("2026-03-10T04:59:00Z")), Some(t("2026-03-10T05:00:00Z")));

        // 2026-03-15 is a Sunday.
        let w = Schedule::parse("weekly sun 03:00").unwrap();
        assert_eq!(w.last_slot(t("2026-03-15T03:00:00Z")), Some(t("2026-03-15T03:00:00Z")));
        assert_eq!(w.last_slot(t("2026-03-15T02:59:00Z")), Some(t("2026-03-08T03:00:00Z")));
        assert_eq!(w.last_slot(t("2026-03-18T12:00:00Z")), Some(t("2026-03-15T03:00:00Z")));
        assert_eq!(w.next_slot(t("2026-03-15T03:00:00Z")), Some(t("2026-03-22T03:00:00Z")));

        let h = Schedule::parse("hourly").unwrap();
        assert!(h.due(t("2026-03-10T01:00:00Z"), t("2026-03-10T02:00:00Z")));
        assert!(!h.due(t("2026-03-10T02:00:00Z"), t("2026-03-10T02:59:59Z")));
        assert!(!Schedule::Manual.due(0, t("2026-03-10T02:00:00Z")));
    }
}
