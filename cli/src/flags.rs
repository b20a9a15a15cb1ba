//! Checks on command-line values, run by clap while it parses: a bad value
//! stops the command with a usage error (exit code 2) before anything starts.

use std::time::Duration;

/// A count of at least one (connections, frames in flight, rounds, sessions).
pub(crate) fn count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A whole number of at least one (milliseconds, seconds).
pub(crate) fn positive(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A rate above zero (frames per second).
pub(crate) fn rate(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err("must be a number above 0".into())
    }
}

/// A duration in seconds above zero, as a decimal number (`0.5`, `10`).
pub(crate) fn seconds(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err("must be a number of seconds above 0".into());
    }
    Duration::try_from_secs_f64(value).map_err(|e| e.to_string())?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_negative_and_non_finite_values_are_refused() {
        assert!(count("0").is_err());
        assert_eq!(positive("0"), Err("must be at least 1".to_owned()));
        assert_eq!(positive("7"), Ok(7));
        assert_eq!(count("3"), Ok(3));
        for bad in ["0", "-1", "NaN", "inf", "x"] {
            assert!(rate(bad).is_err(), "{bad}");
            assert!(seconds(bad).is_err(), "{bad}");
        }
        assert!(seconds("1e300").is_err());
        assert_eq!(rate("0.5"), Ok(0.5));
        assert_eq!(seconds("0.5"), Ok(0.5));
    }
}
