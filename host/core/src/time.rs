//! Points in time typed by an operator (restore targets), and durations
//! written in configuration files ([`Interval`]).
//!
//! One parser for every command that takes a time, so that `strata restore
//! pg --to-time` and `strata restore hana --until` accept the same text and
//! refuse the same mistakes. It lives in core, beside the planner that works
//! in UTC, because it is engine-agnostic: it knows RFC 3339 and the forms
//! PostgreSQL prints and accepts for `timestamptz`, not any engine's rules.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone, Utc};

use crate::error::{Error, Result};

/// Parses a point in time that names its time zone.
///
/// Accepted, as RFC 3339 and PostgreSQL's `timestamptz` input write them:
///
/// - the date `YYYY-MM-DD`, then `T` or a space (either case of `T`), then
///   `HH:MM:SS`, optionally with a fraction of a second (`.5`, up to
///   nanoseconds), or `HH:MM`;
/// - then the zone, right after the time or after a space: `Z`, `UTC` or
///   `GMT`, or an offset from UTC written `+HH`, `+HH:MM` or `+HHMM` (or with
///   `-`), at most 15:59.
///
/// So `2026-11-22T01:02:03.5Z`, `2026-11-22 01:02:03.5+00` (what PostgreSQL
/// prints), `2026-11-30 10:00:00+0530` and `2026-11-30 04:30:00 UTC` are all
/// accepted.
///
/// **A time without a zone is refused**, whatever the engine: the same
/// wall-clock time is a different instant on a host in another zone, and a
/// guess there restores the wrong data. The error shows the text with `+00`
/// appended, the form to use for UTC. Zone names other than `UTC`/`GMT`
/// (`CET`, `Europe/Berlin`) are refused too, with the offset form as the
/// fix: their offset depends on the date and on the host's zone database.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    let trimmed = text.trim();
    let not_a_time = |why: &str| {
        Error::config(format!("`{text}` is not a time: {why}")).hint(
            "write the date, the time and the zone, e.g. 2026-11-22T01:02:03.5Z or '2026-11-22 01:02:03.5+00'",
        )
    };
    let date = trimmed
        .get(..10)
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .ok_or_else(|| not_a_time("it does not start with a date YYYY-MM-DD"))?;
    let rest = &trimmed[10..];
    let rest = rest
        .strip_prefix(['T', 't'])
        .or_else(|| rest.starts_with(' ').then(|| rest.trim_start()))
        .ok_or_else(|| not_a_time("the date is not followed by `T` or a space and the time"))?;
    let time_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.'))
        .unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(time_len);
    let time = parse_clock(clock)
        .ok_or_else(|| not_a_time("the time of day is not HH:MM:SS[.fraction]"))?;
    let zone = zone.trim_start();
    if zone.is_empty() {
        let example = format!("{date} {clock}+00");
        return Err(
            Error::config(format!("`{text}` has no time zone")).hint(format!(
                "Strata never guesses the zone: write '{example}' for UTC, or the zone's offset (e.g. +05:30 or -0800) instead of +00"
            )),
        );
    }
    let offset = parse_zone(zone).ok_or_else(|| {
        Error::config(format!(
            "`{text}` has a time zone Strata does not read: `{zone}`"
        ))
        .hint(format!(
            "write the offset from UTC instead, e.g. '{date} {clock}+01:00', or Z/+00 for UTC"
        ))
    })?;
    offset
        .from_local_datetime(&date.and_time(time))
        .single()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| not_a_time("it is out of range"))
}

/// `HH:MM`, `HH:MM:SS` or `HH:MM:SS.fraction`.
fn parse_clock(clock: &str) -> Option<NaiveTime> {
    let mut fields = clock.splitn(3, ':');
    let hour: u32 = two_digits(fields.next()?)?.parse().ok()?;
    let minute: u32 = two_digits(fields.next()?)?.parse().ok()?;
    let (second, nanos) = match fields.next() {
        None => (0, 0),
        Some(s) => {
            let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
            let second: u32 = two_digits(whole)?.parse().ok()?;
            let nanos = match fraction {
                "" if !s.contains('.') => 0,
                f if (1..=9).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()) => {
                    f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32)
                }
                _ => return None,
            };
            (second, nanos)
        }
    };
    NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)
}

fn two_digits(s: &str) -> Option<&str> {
    (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
}

/// `Z`, `UTC`, `GMT`, `+HH`, `+HH:MM`, `+HHMM` (or `-`).
fn parse_zone(zone: &str) -> Option<FixedOffset> {
    if ["z", "utc", "gmt"].contains(&zone.to_ascii_lowercase().as_str()) {
        return FixedOffset::east_opt(0);
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
    let colons = zone[1..].matches(':').count();
    let well_formed = match (zone.len() - 1, colons) {
        (2, 0) | (4, 0) => true,
        (5, 1) => zone.as_bytes()[3] == b':',
        _ => false,
    };
    if !well_formed || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits
        .get(2..)
        .filter(|m| !m.is_empty())
        .map_or(Some(0), |m| m.parse().ok())?;
    if hours > 15 || minutes > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn ok(text: &str) -> DateTime<Utc> {
        parse_time(text).unwrap_or_else(|e| panic!("`{text}`: {e:?}"))
    }

    fn refused(text: &str) -> Error {
        parse_time(text).expect_err(&format!("`{text}` should be refused"))
    }

    #[test]
    fn rfc_3339() {
        let t = utc("2026-11-22T01:02:03Z");
        assert_eq!(ok("2026-11-22T01:02:03Z"), t);
        assert_eq!(ok("2026-11-22t01:02:03z"), t);
        assert_eq!(ok("2026-11-22T01:02:03+00:00"), t);
        assert_eq!(ok("2026-11-22T02:02:03+01:00"), t);
        assert_eq!(ok("2026-11-21T20:02:03-05:00"), t);
        assert_eq!(ok("  2026-11-22T01:02:03Z  "), t);
    }

    #[test]
    fn postgres_forms() {
        let t = utc("2026-11-22T01:02:03Z");
        assert_eq!(ok("2026-11-22 01:02:03+00"), t);
        assert_eq!(ok("2026-11-22 01:02:03 +00"), t);
        assert_eq!(ok("2026-11-22 01:02:03-00"), t);
        assert_eq!(ok("2026-11-22 03:02:03+02"), t);
        assert_eq!(ok("2026-11-21 22:02:03-03"), t);
        assert_eq!(ok("2026-11-22 01:02:03 UTC"), t);
        assert_eq!(ok("2026-11-22 01:02:03utc"), t);
        assert_eq!(ok("2026-11-22 01:02:03 GMT"), t);
        assert_eq!(ok("2026-11-22 01:02:03Z"), t);
    }

    #[test]
    fn offsets_with_minutes_in_every_notation() {
        // The case that used to be refused: PostgreSQL's +HHMM.
        let t = utc("2026-11-30T04:30:00Z");
        assert_eq!(ok("2026-11-30 10:00:00+0530"), t);
        assert_eq!(ok("2026-11-30 10:00:00+05:30"), t);
        assert_eq!(ok("2026-11-30T10:00:00+05:30"), t);
        assert_eq!(ok("2026-11-29 18:30:00-1000"), t);
        assert_eq!(ok("2026-11-30 20:15:00+15:45"), t);
    }

    #[test]
    fn fractions_and_minutes_only() {
        assert_eq!(
            ok("2026-11-22 01:24:58.6+00"),
            utc("2026-11-22T01:24:58.600Z")
        );
        assert_eq!(
            ok("2026-11-22T01:24:58.123456789Z"),
            utc("2026-11-22T01:24:58.123456789Z")
        );
        assert_eq!(
            ok("2026-11-22 01:24:58.000001+01"),
            utc("2026-11-22T00:24:58.000001Z")
        );
        assert_eq!(ok("2026-11-22 01:24+00"), utc("2026-11-22T01:24:00Z"));
    }

    #[test]
    fn a_time_without_a_zone_is_refused_with_the_form_to_use() {
        for text in [
            "2026-11-22 01:02:03",
            "2026-11-22T01:02:03",
            "2026-11-22 01:02:03.5",
            "2026-11-22 01:02",
        ] {
            let err = refused(text);
            assert_eq!(err.kind(), crate::ErrorKind::Config);
            assert_eq!(err.to_string(), format!("`{text}` has no time zone"));
            assert!(err.hint_text().unwrap().contains("+00'"), "{err:?}");
        }
        let err = refused("2026-11-22 01:02:03");
        assert!(
            err.hint_text()
                .unwrap()
                .contains("write '2026-11-22 01:02:03+00' for UTC"),
            "{err:?}"
        );
    }

    #[test]
    fn zone_names_and_bad_offsets_are_refused() {
        for text in [
            "2026-11-22 01:02:03 CET",
            "2026-11-22 01:02:03 Europe/Berlin",
            "2026-11-22 01:02:03+5",
            "2026-11-22 01:02:03+053",
            "2026-11-22 01:02:03+05:3",
            "2026-11-22 01:02:03+0530:",
            "2026-11-22 01:02:03+16",
            "2026-11-22 01:02:03+05:60",
            "2026-11-22 01:02:03+",
        ] {
            let err = refused(text);
            assert!(
                err.to_string().contains("time zone Strata does not read"),
                "{text}: {err}"
            );
            assert!(err.hint_text().unwrap().contains("offset"), "{err:?}");
        }
    }

    #[test]
    fn things_that_are_not_times_are_refused() {
        for text in [
            "",
            "yesterday",
            "2026-11-22",
            "2026-13-01 00:00:00Z",
            "2026-11-31 00:00:00Z",
            "2026-11-22_01:02:03Z",
            "2026-11-22 1:02:03Z",
            "2026-11-22 25:00:00Z",
            "2026-11-22 01:02:03.Z",
            "2026-11-22 01:02:03.1234567890Z",
            "2026-11-22 01:02:03:04Z",
        ] {
            let err = refused(text);
            assert!(err.to_string().contains("is not a time"), "{text}: {err}");
            assert!(err.hint_text().unwrap().contains("+00"), "{err:?}");
        }
    }
}

/// A duration written with units (`15m`, `1h 30m`, `90s`), parsed and
/// shown with `humantime`: the service's schedules and log intervals, a
/// PostgreSQL cluster's `archive_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interval(pub std::time::Duration);

impl std::str::FromStr for Interval {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        humantime::parse_duration(text)
            .map(Interval)
            .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. \"15m\" or \"1h\""))
    }
}

impl<'de> serde::Deserialize<'de> for Interval {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Interval {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}
