//! Field rules shared by both services' domain types (pure functions, no I/O).
//!
//! Lengths are counted in characters (what the error messages say), never in bytes. Error
//! messages never echo a whole value: [`quote`] shows a short prefix, so a 12,000-character id
//! or a pasted secret never travels back in full (and the status stays far below the size a
//! client accepts in a header).

/// How many characters of a bad value an error message shows.
pub const QUOTE_CHARS: usize = 24;

/// A bad value for an error message: its first [`QUOTE_CHARS`] characters, escaped (control and
/// invisible characters shown as `\u{..}`), and its length when it was cut.
pub fn quote(value: &str) -> String {
    let n = value.chars().count();
    if n <= QUOTE_CHARS {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(QUOTE_CHARS).collect();
    format!("{head:?}… ({n} characters)")
}

/// Characters never accepted in stored text: control characters, and the invisible characters
/// that can disguise text: the format characters (bidirectional overrides and isolates,
/// zero-width characters, the soft hyphen, the byte-order mark, interlinear annotations,
/// musical and tag formats), line and paragraph separators, and the fillers and blanks that
/// render as nothing (Hangul fillers, Mongolian and Khmer vowel marks, the combining grapheme
/// joiner). Variation selectors stay allowed: emoji need them.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// Checks free text (a display name, a custom parameter): at most `max` characters, none of
/// them [unsafe](is_unsafe_char). Returns the rule broken.
pub fn text(value: &str, max: usize) -> Result<(), String> {
    let n = value.chars().count();
    if n > max {
        return Err(format!("must be at most {max} characters, got {n}"));
    }
    if let Some((i, c)) = value.chars().enumerate().find(|(_, c)| is_unsafe_char(*c)) {
        return Err(format!(
            "must not contain control or invisible formatting characters (found {:?} at character {})",
            c,
            i + 1
        ));
    }
    Ok(())
}

/// `value` without [unsafe](is_unsafe_char) characters and surrounding whitespace, cut to `max`
/// characters (for text from outside that is kept rather than refused, e.g. a vendor's field).
pub fn strip_unsafe(value: &str, max: usize) -> String {
    value
        .chars()
        .filter(|c| !is_unsafe_char(*c))
        .collect::<String>()
        .trim()
        .chars()
        .take(max)
        .collect()
}

/// Defines an identifier type: 1-`max` characters of `[A-Za-z0-9_.:-]` ([`id`]), parsed once
/// with errors naming the field (`$err::invalid(field, message)`), then only ever valid.
///
/// ```ignore
/// cco_platform::id_type!(
///     /// A tenant id.
///     TenantId, 64, GwError
/// );
/// ```
#[macro_export]
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $max:expr, $err:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `value`; errors name `field`.
            pub fn parse(field: &'static str, value: &str) -> Result<Self, $err> {
                $crate::validate::id(value, $max).map_err(|m| <$err>::invalid(field, m))?;
                Ok(Self(value.to_owned()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// Checks an identifier: 1-`max` characters of `[A-Za-z0-9_.:-]`. Returns the rule broken.
pub fn id(value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err("is required".into());
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(format!(
            "may contain only letters, digits and _ - . : (found {c:?})"
        ));
    }
    // ASCII from here on: bytes are characters.
    if value.len() > max {
        return Err(format!(
            "must be at most {max} characters, got {}",
            value.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(id("tenant-1.a:b_c", 64).is_ok());
        assert_eq!(id("", 64).expect_err("empty"), "is required");
        assert!(id("a b", 64).expect_err("space").contains("' '"));
        assert!(
            id(&"x".repeat(65), 64)
                .expect_err("long")
                .contains("at most 64")
        );
        // A non-ASCII id is refused for its characters, not with a byte count.
        assert!(id("租户", 64).expect_err("cjk").contains("'租'"));
    }

    #[test]
    fn quotes_a_short_prefix() {
        assert_eq!(quote("abc"), "\"abc\"");
        let q = quote(&"y".repeat(12_000));
        assert!(q.len() < 64 && q.ends_with("(12000 characters)"), "{q}");
        assert_eq!(quote("a\u{202e}b\0"), "\"a\\u{202e}b\\0\"");
        // Cut on characters, not bytes.
        let q = quote(&"号".repeat(30));
        assert!(q.starts_with(&format!("\"{}\"", "号".repeat(24))), "{q}");
    }

    #[test]
    fn text_counts_characters_and_refuses_invisible_ones() {
        assert!(text(&"号".repeat(128), 128).is_ok(), "128 CJK characters");
        assert_eq!(
            text(&"号".repeat(129), 128).expect_err("long"),
            "must be at most 128 characters, got 129"
        );
        for bad in [
            "a\0b",
            "line\nbreak",
            "rtl\u{202e}gnp.exe",
            "zero\u{200b}width",
            "\u{feff}bom",
            "Bob\u{2028}Role: admin",
            "soft\u{ad}hyphen",
            "tag\u{e0069}\u{e0067}",
            "mongol\u{180e}",
            "filler\u{3164}",
        ] {
            assert!(text(bad, 128).is_err(), "{bad:?}");
        }
        assert!(text("Zoë O'Brien-李", 128).is_ok());
        assert!(text("❤\u{fe0f} emoji keep their variation selector", 128).is_ok());
        assert_eq!(strip_unsafe(" a\u{202e}b\0c ", 10), "abc");
        assert_eq!(strip_unsafe("abcdef", 3), "abc");
    }
}
