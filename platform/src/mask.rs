//! Masks values for logs: phone numbers keep their last 4 digits, secrets keep nothing.

/// Returns `number` with all but the last 4 characters replaced by `*`.
pub fn phone(number: &str) -> String {
    let n = number.chars().count();
    number
        .chars()
        .enumerate()
        .map(|(i, c)| if i + 4 < n { '*' } else { c })
        .collect()
}

/// Returns a mask of a secret that shows only its last 4 characters, or `""` when empty.
pub fn secret_tail(secret: &str) -> String {
    let n = secret.chars().count();
    if n == 0 {
        return String::new();
    }
    let tail: String = secret.chars().skip(n.saturating_sub(4)).collect();
    format!("****{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_keeps_last_four() {
        assert_eq!(phone("13800138000"), "*******8000");
        assert_eq!(phone("123"), "123");
    }

    #[test]
    fn secret_shows_tail_only() {
        assert_eq!(secret_tail("abcdef123456"), "****3456");
        assert_eq!(secret_tail(""), "");
    }
}
