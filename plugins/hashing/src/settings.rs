//! The settings check of balancers that take none, done by hand: calling
//! `sluicegate_sdk::settings` would link a TOML parser into the component (about 190 KB instead
//! of about 30 KB) just to refuse everything.

/// Accepts empty settings (blank lines and `#` comments only) and refuses anything else, naming
/// the first offending line, so a typo doesn't pass silently.
pub fn no_settings(plugin: &str, config: &str) -> Result<(), String> {
    let given = config
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'));
    match given {
        Some(line) => Err(format!("{plugin} takes no settings, got `{line}`")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_blank_lines_and_comments_pass() {
        assert!(no_settings("x", "").is_ok());
        assert!(no_settings("x", "\n  # nothing here\n").is_ok());
        let err = no_settings("random", "\nseed = 4\n").unwrap_err();
        assert_eq!(err, "random takes no settings, got `seed = 4`");
    }
}
