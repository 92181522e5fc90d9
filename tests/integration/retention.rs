//! Retention at the CLI: a simulated year of scheduled daily backups (with an
//! outage and an extra manual backup), driven by `kluis run-due` under
//! `KLUIS_NOW`, checked against the rules of docs/retention.md as written
//! out independently here.

use std::collections::BTreeSet;
use std::process::Output;

use jiff::civil::Date;
use jiff::{Timestamp, ToSpan};
use serde_json::Value;

use super::common::*;

fn at(env: &Env, now: Timestamp, args: &[&str]) -> Output {
    env.cmd().env("KLUIS_NOW", now.to_string()).args(args).output().unwrap()
}

fn at_json(env: &Env, now: Timestamp, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = at(env, now, &a);
    assert!(o.status.success(), "kluis {args:?} at {now}: {}{}", text(&o.stdout), text(&o.stderr));
    serde_json::from_str(&text(&o.stdout)).unwrap()
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// docs/retention.md, spelled out: the newest point; for each rule the newest
/// point of each of the N most recent periods that have a point.
fn expected(times: &[Timestamp], daily: usize, weekly: usize, monthly: usize, yearly: usize) -> BTreeSet<Timestamp> {
    let mut newest_first = times.to_vec();
    newest_first.sort();
    newest_first.reverse();
    let mut keep = BTreeSet::new();
    keep.insert(newest_first[0]);
    let date = |t: &Timestamp| -> Date { t.to_zoned(jiff::tz::TimeZone::UTC).date() };
    type Period<'a> = Box<dyn Fn(&Timestamp) -> (i32, i32) + 'a>;
    let rules: [(usize, Period); 4] = [
        (daily, Box::new(|t| (date(t).year() as i32, date(t).day_of_year() as i32))),
        (weekly, Box::new(|t| {
            let w = date(t).iso_week_date();
            (w.year() as i32, w.week() as i32)
        })),
        (monthly, Box::new(|t| (date(t).year() as i32, date(t).month() as i32))),
        (yearly, Box::new(|t| (date(t).year() as i32, 0))),
    ];
    for (n, period) in rules {
        let mut periods = Vec::new();
        for t in &newest_first {
            let p = period(t);
            if !periods.contains(&p) {
                if periods.len() == n {
                    break;
                }
                periods.push(p);
                keep.insert(*t);
            }
        }
    }
    keep
}

fn live_times(env: &Env) -> Vec<Timestamp> {
    env.points(Some("vm")).iter().map(|p| ts(p.json["time"].as_str().unwrap())).collect()
}

#[test]
fn a_simulated_year_of_daily_backups() {
    let env = Env::new();
    let disk = env.path("os.img");
    std::fs::write(&disk, vec![7u8; 64 * 1024]).unwrap();
    let start = ts("2025-01-01T00:00:00Z");
    at_json(&env, start, &["policy", "set", "gfs", "--schedule", "daily 02:00", "--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "6", "--keep-yearly", "2"]);
    at_json(&env, start, &["protect", "vm", "--disk", &format!("os={}", disk.display()), "--policy", "gfs"]);

    // Nothing is due right after protecting: the first slot is 02:00.
    let r = at_json(&env, start + 1.hour(), &["run-due"]);
    assert!(r["ran"].as_array().unwrap().iter().all(|j| j["kind"] != "backup"), "{r}");

    let mut all = Vec::new();
    let mut day = start + 2.hours();
    let end = ts("2026-01-11T02:00:00Z"); // a year and ten days
    let mut n = 0;
    while day <= end {
        let date = day.to_zoned(jiff::tz::TimeZone::UTC).date();
        // An outage: no backups from 2025-06-10 to 2025-07-19.
        let outage = date >= "2025-06-10".parse::<Date>().unwrap() && date < "2025-07-20".parse::<Date>().unwrap();
        if !outage {
            let r = at_json(&env, day, &["run-due"]);
            let ran = r["ran"].as_array().unwrap();
            let b = ran.iter().find(|j| j["kind"] == "backup").unwrap_or_else(|| panic!("no backup at {day}: {r}"));
            assert_eq!(b["status"], "ok", "{r}");
            assert!(ran.iter().any(|j| j["kind"] == "prune" && j["status"] == "ok"), "{r}");
            all.push(day);
            // Several points in a day: a manual backup in the afternoon.
            if n % 50 == 0 {
                let t = day + 13.hours();
                at_json(&env, t, &["backup", "vm"]);
                all.push(t);
            }
            // Running again at the same instant does nothing.
            if n % 97 == 1 {
                let again = at_json(&env, day, &["run-due"]);
                assert!(again["ran"].as_array().unwrap().is_empty(), "{again}");
            }
            n += 1;
            // The rules hold at every step, the newest point is never pruned.
            if n % 61 == 0 {
                let live = live_times(&env);
                assert_eq!(live.iter().copied().collect::<BTreeSet<_>>(), expected(&all, 7, 4, 6, 2), "at {day}");
                assert_eq!(live.last(), all.last());
            }
        }
        day += 24.hours();
    }

    let live: BTreeSet<Timestamp> = live_times(&env).into_iter().collect();
    let want = expected(&all, 7, 4, 6, 2);
    assert_eq!(live, want);
    // The same, written out by hand for the reader (2026-01-11 is a Sunday).
    let by_hand: BTreeSet<Timestamp> = [
        // daily 7
        "2026-01-05", "2026-01-06", "2026-01-07", "2026-01-08", "2026-01-09", "2026-01-10", "2026-01-11",
        // weekly 4: weeks ending 01-11 (kept above), 01-04, 2025-12-28, 2025-12-21
        "2026-01-04", "2025-12-28", "2025-12-21",
        // monthly 6: 2026-01 (above), Dec .. Aug 2025
        "2025-12-31", "2025-11-30", "2025-10-31", "2025-09-30", "2025-08-31",
        // yearly 2: 2026 (above), 2025 (12-31, above)
    ]
    .iter()
    .map(|d| ts(&format!("{d}T02:00:00Z")))
    .collect();
    assert_eq!(live, by_hand);

    // Pruned points are soft-deleted: those pruned in the last 14 days are
    // still listed; gc (weekly, Sundays 04:00 by default) purged the others.
    let everything = env.json(&["points", "vm", "--deleted"]);
    let deleted: Vec<&Value> = everything.as_array().unwrap().iter().filter(|p| !p["deleted"].is_null()).collect();
    assert!(!deleted.is_empty());
    for p in &deleted {
        let d = ts(p["deleted"].as_str().unwrap());
        assert!(d > end - (21 * 24).hours(), "a point deleted at {d} should have been purged by gc");
    }
    let gcs = env.json(&["jobs"]);
    let gc_count = gcs.as_array().unwrap().iter().filter(|j| j["kind"] == "gc").count();
    assert!((40..=56).contains(&gc_count), "{gc_count} gc runs in a year of weekly gc");

    // prune --dry-run now has nothing to do.
    let dry = at_json(&env, end, &["prune", "--dry-run"]);
    assert!(dry[0]["pruned"].as_array().unwrap().is_empty(), "{dry}");
}
