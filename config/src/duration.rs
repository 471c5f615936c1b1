//! Human-friendly durations in the config (`"250ms"`, `"2s"`, `"1m"`), so timeouts read as what they are.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A duration written as an integer and a unit: `ms`, `s`, `m` or `h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

/// Parses `"250ms"`, `"2s"`, `"1m"`, `"1h"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit: write it like \"2s\" or \"250ms\""))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: write it like \"2s\" or \"250ms\""))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit `{unit}`: use ms, s, m or h"
            ));
        }
    };
    // Deadlines are instants this far ahead: a duration past any real use could overflow one.
    if d > MAX_DURATION {
        return Err(format!(
            "`{text}` is longer than a year (365 days), the longest duration the config takes"
        ));
    }
    Ok(d)
}

/// The longest duration the config takes.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(ConfigDuration)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn refuses_missing_or_unknown_units() {
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("10d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").unwrap_err().contains("not a duration"));
        assert!(
            parse_duration("18446744073709551615h")
                .unwrap_err()
                .contains("a year")
        );
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
    }
}
