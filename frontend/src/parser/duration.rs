//! Go's `time.ParseDuration`, which HEALTHCHECK flags use: a signed sequence of decimal numbers
//! with optional fractions and a unit each (`300ms`, `1.5h`, `2h45m`); units `ns`, `us`/`µs`,
//! `ms`, `s`, `m`, `h`; a bare `0` is allowed.

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {0:?}")]
    Invalid(String),
    #[error("missing unit in duration {0:?}")]
    MissingUnit(String),
    #[error("unknown unit {unit:?} in duration {input:?}")]
    UnknownUnit { unit: String, input: String },
    #[error("duration {0:?} is out of range")]
    Overflow(String),
}

/// Parses a Go duration into signed nanoseconds.
pub fn parse_go_duration(input: &str) -> Result<i128, DurationError> {
    let invalid = || DurationError::Invalid(input.to_string());
    let (negative, mut rest) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        _ => (false, input),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        let (frac_digits, after_number) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                after_dot.split_at(frac_len)
            }
            None => ("", after_int),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(invalid());
        }
        let unit_len = after_number
            .char_indices()
            .find(|&(_, c)| c == '.' || c.is_ascii_digit())
            .map_or(after_number.len(), |(i, _)| i);
        let (unit, after_unit) = after_number.split_at(unit_len);
        let scale: i128 = match unit {
            "" => return Err(DurationError::MissingUnit(input.to_string())),
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_string(),
                    input: input.to_string(),
                });
            }
        };
        let overflow = || DurationError::Overflow(input.to_string());
        // Digits beyond what i128 can hold are out of range anyway.
        let whole: i128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| overflow())?
        };
        let mut part = whole.checked_mul(scale).ok_or_else(overflow)?;
        if !frac_digits.is_empty() {
            // Only the first 19 fraction digits can matter at nanosecond precision.
            let kept = &frac_digits[..frac_digits.len().min(19)];
            let numerator: i128 = kept.parse().map_err(|_| invalid())?;
            let denominator = 10i128.pow(kept.len() as u32);
            part += numerator * scale / denominator;
        }
        total = total.checked_add(part).ok_or_else(overflow)?;
        if total > i128::from(i64::MAX) {
            return Err(overflow());
        }
        rest = after_unit;
    }
    Ok(if negative { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("30s"), Ok(30_000_000_000));
        assert_eq!(parse_go_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_go_duration("500ms"), Ok(500_000_000));
        assert_eq!(parse_go_duration("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration(".5s"), Ok(500_000_000));
        assert_eq!(parse_go_duration("50ns"), Ok(50));
        assert_eq!(parse_go_duration("2µs"), Ok(2_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("-1s"), Ok(-1_000_000_000));
    }

    #[test]
    fn bad_durations() {
        assert!(matches!(
            parse_go_duration("5"),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            parse_go_duration("5d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_go_duration(""),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_go_duration("s"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_go_duration("."),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_go_duration("99999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }
}
