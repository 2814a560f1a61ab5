//! Field rules shared by both services' domain types (pure functions, no I/O).

/// Checks an identifier: 1-`max` characters of `[A-Za-z0-9_.:-]`. Returns the rule broken.
pub fn id(value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err("is required".into());
    }
    if value.len() > max {
        return Err(format!(
            "must be at most {max} characters, got {}",
            value.len()
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(format!(
            "may contain only letters, digits and _ - . : (found {c:?})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids() {
        assert!(super::id("tenant-1.a:b_c", 64).is_ok());
        assert_eq!(super::id("", 64).expect_err("empty"), "is required");
        assert!(super::id("a b", 64).expect_err("space").contains("' '"));
        assert!(
            super::id(&"x".repeat(65), 64)
                .expect_err("long")
                .contains("at most 64")
        );
    }
}
