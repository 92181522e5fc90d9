//! How recovery point times are written and named.
//!
//! A point's name is its UTC time to the second (`2026-11-21T04:00:00Z`), as
//! in the mount and the selectors. Backup gives every point of an item its
//! own whole second (see crate::backup), so a name is a pure function of the
//! point's time and never changes while the point exists.

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
    times_ms.iter().map(|&t| rfc3339_s(t)).collect()
}

/// True when `name` (as given by a user) names the point at `ms`: its
/// second, or its exact millisecond.
pub fn point_name_matches(ms: i64, name: &str) -> bool {
    name.parse::<Timestamp>().map(|t| {
        let given = t.as_millisecond();
        given == ms || (!name.contains('.') && given == ms - ms.rem_euclid(1000))
    }).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn names() {
        let t = 1_795_752_000_000i64;
        let n = point_names(&[t, t + 1000]);
        assert_eq!(n, vec!["2026-11-27T04:00:00Z".to_owned(), "2026-11-27T04:00:01Z".to_owned()]);
        assert!(point_name_matches(t, &n[0]));
        assert!(point_name_matches(t + 250, &n[0]));
        assert!(point_name_matches(t + 250, "2026-11-27T04:00:00.250Z"));
        assert!(!point_name_matches(t + 1000, &n[0]));
    }
}
