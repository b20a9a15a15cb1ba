//! Settings checked when they are built: a bad value is a typed error at
//! `build()` (or `connect()`), never a panic or a silent override later.

use std::fmt;

/// A setting that cannot work, found when a server, client or layer is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct ConfigError {
    setting: &'static str,
    reason: String,
}

impl ConfigError {
    /// A refusal of `setting`, with the reason a user can act on.
    pub fn new(setting: &'static str, reason: impl fmt::Display) -> ConfigError {
        ConfigError {
            setting,
            reason: reason.to_string(),
        }
    }

    /// The name of the setting, as its builder method spells it (`idle_timeout`).
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// Why the value was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_setting_and_the_reason() {
        let e = ConfigError::new("max_connections", "must be at least 1");
        assert_eq!(e.setting(), "max_connections");
        assert_eq!(e.reason(), "must be at least 1");
        assert_eq!(
            e.to_string(),
            "invalid setting `max_connections`: must be at least 1"
        );
    }
}
