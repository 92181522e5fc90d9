//! How recovery point times are written and named.
//!
//! A point's name is its UTC time to the second (`2026-11-21T04:00:00Z`), as
//! in the mount and the selectors. Backup gives every point of an item its
//! own whole second (see crate::backup), so a name is a pure function of the
//! point's time and never changes while the point exists. Points that share
//! a second (made before backup allocated times under the index's write
//! lock) get longer names rather than one name for two points.

use jiff::Timestamp;

pub fn rfc3339_ms(ms: i64) -> String {
    let t = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

pub fn rfc3339_s(ms: i64) -> String {
    let t = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Names for the points of one item, given their times oldest first, all
/// distinct: the time to the second; for a later point of the same second
/// (made by a kluis that let concurrent backups share one), the time to the
/// millisecond; and for a later point of the same millisecond that with
/// `~2`, `~3`, ... (such a point is selected by its id prefix).
pub fn point_names(times_ms: &[i64]) -> Vec<String> {
    let mut taken = std::collections::HashSet::new();
    times_ms
        .iter()
        .map(|&t| {
            let mut name = rfc3339_s(t);
            if taken.contains(&name) {
                name = rfc3339_ms(t);
            }
            let base = name.clone();
            let mut n = 1;
            while taken.contains(&name) {
                n += 1;
                name = format!("{base}~{n}");
            }
            taken.insert(name.clone());
            name
        })
        .collect()
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

    /// Points that share a second, or a millisecond, still get names of
    /// their own (a mount shows one folder per point).
    #[test]
    fn shared_times_get_distinct_names() {
        let t = 1_795_752_000_000i64;
        let n = point_names(&[t, t, t + 250, t + 250, t + 1000]);
        assert_eq!(
            n,
            vec!["2026-11-27T04:00:00Z", "2026-11-27T04:00:00.000Z", "2026-11-27T04:00:00.250Z", "2026-11-27T04:00:00.250Z~2", "2026-11-27T04:00:01Z"]
        );
        assert!(point_name_matches(t + 250, &n[2]));
    }
}
