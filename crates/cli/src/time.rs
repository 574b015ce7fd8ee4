//! Times for people: RFC 3339 in UTC for output, RFC 3339 or epoch
//! milliseconds for input. A few lines of civil-calendar arithmetic instead
//! of a date crate; nothing here reads a clock.

use domain::Timestamp;

/// (year, month, day) → days since 1970-01-01 (`days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-01T14:02:00Z`, with `.mmm` when the milliseconds are not zero.
pub fn format(at: Timestamp) -> String {
    let (year, month, day, h, m, s, milli) = at.to_utc();
    if milli == 0 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
    }
}

/// Parses RFC 3339 (`2026-11-01T14:02:00Z`, `2026-11-01T15:02:00.250+01:00`)
/// or milliseconds since the Unix epoch (`1793541720000`).
pub fn parse(text: &str) -> Result<Timestamp, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .map(Timestamp::from_millis)
            .map_err(|e| format!("{text:?} is not a millisecond count: {e}"));
    }
    parse_rfc3339(text).ok_or_else(|| {
        format!(
            "{text:?} is not a time: use RFC 3339 like 2026-11-01T14:02:00Z, or epoch milliseconds"
        )
    })
}

fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(range)?;
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day == 0
        || day > month_days[month as usize - 1]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds are the log's unit: further digits are truncated.
        let kept = &frac[..digits.min(3)];
        millis = kept.parse::<i64>().ok()? * 10i64.pow(3 - kept.len() as u32);
        rest = &frac[digits..];
    }
    let offset_ms = match rest {
        "Z" | "z" => 0,
        _ => {
            let ob = rest.as_bytes();
            if ob.len() != 6 || ob[3] != b':' {
                return None;
            }
            let sign = match ob[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3_600_000 + om * 60_000)
        }
    };
    let days = days_from_civil(i64::from(year), month, day);
    let ms = days * 86_400_000
        + i64::from(hour) * 3_600_000
        + i64::from(minute) * 60_000
        + i64::from(second.min(59)) * 1000
        + millis
        - offset_ms;
    Some(Timestamp::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        let t0 = Timestamp::from_millis(1_793_523_600_000);
        assert_eq!(format(t0), "2026-11-01T09:00:00Z");
        assert_eq!(parse("2026-11-01T09:00:00Z"), Ok(t0));
        assert_eq!(parse("1793523600000"), Ok(t0));
        assert_eq!(parse("2026-11-01T10:00:00+01:00"), Ok(t0));
        assert_eq!(
            format(Timestamp::from_millis(t0.millis() + 250)),
            "2026-11-01T09:00:00.250Z"
        );
        assert_eq!(
            parse("2026-11-01T09:00:00.25Z"),
            Ok(Timestamp::from_millis(t0.millis() + 250))
        );
        assert_eq!(format(Timestamp::from_millis(0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            format(Timestamp::from_millis(951_782_400_000)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            format(Timestamp::from_millis(-1)),
            "1969-12-31T23:59:59.999Z"
        );
        for ms in [
            0,
            1,
            86_399_999,
            951_782_400_000,
            4_102_444_800_000,
            -86_400_000,
        ] {
            let t = Timestamp::from_millis(ms);
            assert_eq!(parse(&format(t)), Ok(t), "{ms}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-01T09:00:00",
            "2026-11-01T09:00:00+0100",
            "2026-11-01T24:00:00Z",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
