//! Grandfather-father-son retention: which recovery points of one item a
//! policy keeps. A pure function of the points' times and the keep counts;
//! the rules are documented (and must stay in step with) docs/retention.md.
//!
//! In short, over the item's live points, newest first:
//!
//! - the newest point is always kept;
//! - `last N` keeps the N newest points;
//! - `daily N` keeps the newest point of each of the N most recent UTC days
//!   that have a point (days without points do not count); `weekly` does the
//!   same with ISO weeks (Monday to Sunday), `monthly` with calendar months,
//!   `yearly` with calendar years;
//! - the rules are independent: a point is kept when any rule keeps it, and
//!   a point kept by one rule still uses up a period of another;
//! - a policy whose counts are all zero keeps everything (retention off).

use serde::Serialize;

use super::schedule::DAY_MS;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Keep {
    pub last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

impl Keep {
    /// All counts zero: retention is off and prune keeps every point.
    pub fn is_off(&self) -> bool {
        *self == Keep::default()
    }
}

/// Why a point is kept; empty means it is pruned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub reasons: Vec<&'static str>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Decisions for points given by their times (Unix ms, UTC), in the order
/// given. Equal times are ordered by position: the later one is newer.
pub fn plan(times_ms: &[i64], keep: &Keep) -> Vec<Decision> {
    let mut out = vec![Decision::default(); times_ms.len()];
    if times_ms.is_empty() {
        return out;
    }
    if keep.is_off() {
        for d in &mut out {
            d.reasons.push("retention off");
        }
        return out;
    }
    let mut order: Vec<usize> = (0..times_ms.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((times_ms[i], i)));
    out[order[0]].reasons.push("newest");
    for &i in order.iter().take(keep.last as usize) {
        out[i].reasons.push("last");
    }
    type Period = fn(i64) -> i64;
    let rules: [(&'static str, u32, Period); 4] =
        [("daily", keep.daily, day_of), ("weekly", keep.weekly, week_of), ("monthly", keep.monthly, month_of), ("yearly", keep.yearly, year_of)];
    for (name, count, period) in rules {
        let mut taken = 0u32;
        let mut current = None;
        for &i in &order {
            if taken == count {
                break;
            }
            let p = period(times_ms[i]);
            if current != Some(p) {
                // The first point met in a period is its newest.
                current = Some(p);
                taken += 1;
                out[i].reasons.push(name);
            }
        }
    }
    out
}

fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// ISO weeks start on Monday; day 0 (1970-01-01) was a Thursday, so
/// shifting by 3 makes every Monday start a new multiple of 7.
fn week_of(ms: i64) -> i64 {
    (day_of(ms) + 3).div_euclid(7)
}

fn month_of(ms: i64) -> i64 {
    let (y, m, _) = civil_from_days(day_of(ms));
    y * 12 + m as i64 - 1
}

fn year_of(ms: i64) -> i64 {
    civil_from_days(day_of(ms)).0
}

/// Proleptic Gregorian (year, month 1-12, day 1-31) of a day number
/// (days since 1970-01-01); Howard Hinnant's `civil_from_days`.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> i64 {
        let s = if s.len() == 10 { format!("{s}T12:00:00Z") } else { s.to_owned() };
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    fn keep(last: u32, daily: u32, weekly: u32, monthly: u32, yearly: u32) -> Keep {
        Keep { last, daily, weekly, monthly, yearly }
    }

    /// The kept times, newest first, as given.
    fn kept(times: &[&str], k: Keep) -> Vec<String> {
        let ms: Vec<i64> = times.iter().map(|s| t(s)).collect();
        let d = plan(&ms, &k);
        let mut out: Vec<(i64, String)> =
            times.iter().zip(&d).filter(|(_, d)| d.keep()).map(|(s, _)| (t(s), s.to_string())).collect();
        out.sort_by_key(|(ms, _)| std::cmp::Reverse(*ms));
        out.into_iter().map(|(_, s)| s).collect()
    }

    #[test]
    fn civil_dates() {
        for s in ["1970-01-01", "2000-02-29", "2024-12-31", "2026-03-01", "1969-12-31", "2100-03-01"] {
            let ms = t(&format!("{s}T00:00:00Z"));
            let (y, m, d) = civil_from_days(day_of(ms));
            assert_eq!(format!("{y:04}-{m:02}-{d:02}"), s);
        }
        // ISO weeks: 2026-03-09 is a Monday, 03-15 the Sunday of the same week.
        assert_eq!(week_of(t("2026-03-09")), week_of(t("2026-03-15")));
        assert_ne!(week_of(t("2026-03-15")), week_of(t("2026-03-16")));
    }

    /// (case, points, keep, expected kept points newest first)
    #[test]
    fn table() {
        let cases: &[(&str, &[&str], Keep, &[&str])] = &[
            ("no points", &[], keep(0, 7, 0, 0, 0), &[]),
            ("retention off keeps all", &["2026-01-01", "2026-01-02"], keep(0, 0, 0, 0, 0), &["2026-01-02", "2026-01-01"]),
            ("last 1 keeps only the newest", &["2026-01-01", "2026-01-02", "2026-01-03"], keep(1, 0, 0, 0, 0), &["2026-01-03"]),
            ("yearly 1 keeps only the newest of the year", &["2026-01-01", "2026-01-02", "2026-01-03"], keep(0, 0, 0, 0, 1), &["2026-01-03"]),
            ("last 2", &["2026-01-01", "2026-01-02", "2026-01-03"], keep(2, 0, 0, 0, 0), &["2026-01-03", "2026-01-02"]),
            (
                "several points a day: daily keeps the newest of each day",
                &["2026-01-01T01:00:00Z", "2026-01-01T13:00:00Z", "2026-01-02T01:00:00Z", "2026-01-02T23:59:59Z"],
                keep(0, 2, 0, 0, 0),
                &["2026-01-02T23:59:59Z", "2026-01-01T13:00:00Z"],
            ),
            (
                "gaps: days without points do not count",
                &["2026-01-01", "2026-01-05", "2026-01-20", "2026-01-21"],
                keep(0, 3, 0, 0, 0),
                &["2026-01-21", "2026-01-20", "2026-01-05"],
            ),
            (
                "weekly: newest of each ISO week (Mon-Sun)",
                // 2026-01-04 is a Sunday, 01-05 a Monday.
                &["2026-01-01", "2026-01-04", "2026-01-05", "2026-01-07", "2026-01-12"],
                keep(0, 0, 3, 0, 0),
                &["2026-01-12", "2026-01-07", "2026-01-04"],
            ),
            (
                "monthly across a gap of months",
                &["2025-10-03", "2025-10-30", "2026-01-02", "2026-01-31", "2026-03-01"],
                keep(0, 0, 0, 3, 0),
                &["2026-03-01", "2026-01-31", "2025-10-30"],
            ),
            (
                "yearly",
                &["2023-06-01", "2024-01-01", "2024-12-31", "2025-07-01"],
                keep(0, 0, 0, 0, 2),
                &["2025-07-01", "2024-12-31"],
            ),
            (
                "rules are independent and overlap",
                &["2026-01-29", "2026-01-30", "2026-01-31", "2026-02-01", "2026-02-02"],
                keep(0, 2, 0, 2, 0),
                // daily: 02-02, 02-01; monthly: 02-02 (Feb), 01-31 (Jan)
                &["2026-02-02", "2026-02-01", "2026-01-31"],
            ),
            (
                "newest kept even when it is the only one of its period beyond the counts",
                &["2026-01-01", "2026-02-01"],
                keep(0, 0, 0, 0, 1),
                &["2026-02-01"],
            ),
            (
                "a count larger than the history keeps everything it can",
                &["2026-01-01", "2026-01-02"],
                keep(0, 30, 0, 0, 0),
                &["2026-01-02", "2026-01-01"],
            ),
        ];
        for (name, points, k, want) in cases {
            assert_eq!(kept(points, *k), want.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "case: {name}");
        }
    }

    #[test]
    fn reasons_and_order() {
        let ms = [t("2026-01-02"), t("2026-01-01"), t("2026-01-02")];
        let d = plan(&ms, &keep(0, 1, 0, 0, 0));
        // Equal times: the later position is the newer point.
        assert_eq!(d[2].reasons, vec!["newest", "daily"]);
        assert!(!d[0].keep());
        assert!(!d[1].keep());
    }

    /// A year of daily points, checked against the rules spelled out by hand.
    #[test]
    fn a_year_of_dailies() {
        let start = t("2025-01-01T02:00:00Z");
        let ms: Vec<i64> = (0..365).map(|i| start + i * DAY_MS).collect();
        let d = plan(&ms, &keep(0, 7, 4, 12, 3));
        let kept: Vec<String> = ms.iter().zip(&d).filter(|(_, d)| d.keep()).map(|(m, _)| crate::timefmt::rfc3339_s(*m)[..10].to_owned()).collect();
        let mut want = vec![
            // daily: the last 7 days
            "2025-12-25", "2025-12-26", "2025-12-27", "2025-12-28", "2025-12-29", "2025-12-30", "2025-12-31",
            // weekly 4: the current week (Mon 12-29 .. Wed 12-31) counts as one, by
            // its newest point 12-31; then the Sundays 12-28, 12-21 and 12-14
            "2025-12-14", "2025-12-21",
            // monthly 12: the last day of each month (December's is 12-31)
            "2025-01-31", "2025-02-28", "2025-03-31", "2025-04-30", "2025-05-31", "2025-06-30", "2025-07-31", "2025-08-31",
            "2025-09-30", "2025-10-31", "2025-11-30",
        ];
        want.sort();
        assert_eq!(kept, want);
    }
}
