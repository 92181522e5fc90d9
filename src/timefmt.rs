//! How recovery point times are written and named.
//!
//! A point's name is its UTC time to the second (`2026-11-21T04:00:00Z`), as
//! in the mount and the selectors. Times are kept in milliseconds, so two
//! points of one item within the same second stay distinct; the later ones
//! are then named with milliseconds (`…:00.250Z`).

use jiff::Timestamp;

pub fn rfc3339_ms(ms: i64) -> String {
    let t = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

pub fn rfc3339_s(ms: i64) -> String {
    let t = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Names for the points of one item, given their times oldest first.
pub fn point_names(times_ms: &[i64]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(times_ms.len());
    for (i, &t) in times_ms.iter().enumerate() {
        let short = rfc3339_s(t);
        if i > 0 && rfc3339_s(times_ms[i - 1]) == short {
            out.push(rfc3339_ms(t));
        } else {
            out.push(short);
        }
    }
    out
}

/// True when `name` (as given by a user) names exactly the point at `ms`.
pub fn point_name_matches(ms: i64, name: &str) -> bool {
    name.parse::<Timestamp>().map(|t| {
        let given = t.as_millisecond();
        if name.contains('.') { given == ms } else { given == ms - ms.rem_euclid(1000) }
    }).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn names() {
        let t = 1_795_752_000_000i64; // 2026-11-26T...
        let n = point_names(&[t, t + 250, t + 1000]);
        assert_eq!(n[0], rfc3339_s(t));
        assert!(n[1].ends_with(".250Z"));
        assert!(!n[2].contains('.'));
        assert!(point_name_matches(t + 250, &n[1]));
        assert!(point_name_matches(t, &n[0]));
    }
}
