//! Phone numbers, parsed and normalised with `phonenumber` (a port of Google's libphonenumber).
//!
//! A number written with `+` or `00` carries its country; otherwise it is read in the tenant's
//! `phone_region` (CN by default, MX for Mexican tenants, ...). Stored in E.164. When dialled
//! through Infinity it is sent in national digits (`13800138000`, `02566823420`,
//! `5512345678`) if it belongs to the tenant's region, else as `00` + country code + number.

use std::fmt;
use std::str::FromStr;

use phonenumber::country::Id as Region;
use phonenumber::{Mode, PhoneNumber};

/// A valid phone number in E.164.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Phone {
    e164: String,
    national_digits: String,
    region: Option<Region>,
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a whole number: logs and panics see the mask only.
        write!(f, "Phone({})", cco_platform::mask::phone(&self.e164))
    }
}

/// Parses a region code such as `CN` or `MX`.
pub fn parse_region(value: &str) -> Result<Region, String> {
    Region::from_str(&value.to_ascii_uppercase())
        .map_err(|_| format!("must be an ISO 3166 alpha-2 region such as CN or MX, got {value:?}"))
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

impl Phone {
    /// Parses `raw` in `region`; the error says what is wrong (without the field name).
    pub fn parse(raw: &str, region: Region) -> Result<Self, String> {
        let s = raw.trim();
        if s.is_empty() {
            return Err("is empty".into());
        }
        if s.len() > 32 {
            return Err(format!("must be at most 32 characters, got {}", s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')')))
        {
            return Err(format!(
                "may contain only digits, spaces, + - ( ), found {c:?}"
            ));
        }
        let normalised = match s.strip_prefix("00") {
            Some(rest) if !s.starts_with('+') => format!("+{rest}"),
            _ => s.to_owned(),
        };
        // The parser is third-party code fed with network input: contain any panic.
        let parsed = std::panic::catch_unwind(|| phonenumber::parse(Some(region), &normalised))
            .map_err(|_| format!("is not a phone number: {s:?}"))?
            .map_err(|e| format!("is not a phone number ({e}): {s:?}"))?;
        if !phonenumber::is_valid(&parsed) {
            return Err(format!(
                "is not a valid phone number for region {}: {s:?}",
                region.as_ref()
            ));
        }
        Ok(Self::from_parsed(&parsed))
    }

    fn from_parsed(p: &PhoneNumber) -> Self {
        Self {
            e164: p.format().mode(Mode::E164).to_string(),
            national_digits: digits(&p.format().mode(Mode::National).to_string()),
            region: p.country().id(),
        }
    }

    /// Reads a stored E.164 number back.
    pub fn from_e164(e164: &str) -> Result<Self, String> {
        let p = std::panic::catch_unwind(|| phonenumber::parse(None, e164))
            .map_err(|_| format!("stored number is corrupt: {e164:?}"))?
            .map_err(|e| format!("stored number is corrupt ({e}): {e164:?}"))?;
        Ok(Self::from_parsed(&p))
    }

    /// The number in E.164 (`+8613800138000`).
    pub fn e164(&self) -> &str {
        &self.e164
    }

    /// The digits to send to Infinity for a tenant in `region`.
    pub fn dial_digits(&self, region: Region) -> String {
        if self.region == Some(region) {
            self.national_digits.clone()
        } else {
            format!("00{}", self.e164.trim_start_matches('+'))
        }
    }

    /// The number masked for logs (last 4 digits).
    pub fn masked(&self) -> String {
        cco_platform::mask::phone(&self.e164)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cn() -> Region {
        parse_region("cn").expect("CN")
    }

    #[test]
    fn chinese_mobile_and_landline() {
        let m = Phone::parse("138 0013 8000", cn()).expect("mobile");
        assert_eq!(m.e164(), "+8613800138000");
        assert_eq!(m.dial_digits(cn()), "13800138000");
        let l = Phone::parse("025-66823420", cn()).expect("landline");
        assert_eq!(l.e164(), "+862566823420");
        assert_eq!(l.dial_digits(cn()), "02566823420");
        assert_eq!(
            Phone::parse("+86 138 0013 8000", cn())
                .expect("intl")
                .e164(),
            "+8613800138000"
        );
        assert_eq!(
            Phone::parse("008613800138000", cn()).expect("00").e164(),
            "+8613800138000"
        );
    }

    #[test]
    fn mexican_numbers() {
        let mx = parse_region("MX").expect("MX");
        let m = Phone::parse("55 1234 5678", mx).expect("cdmx");
        assert_eq!(m.e164(), "+525512345678");
        assert_eq!(m.dial_digits(mx), "5512345678");
        assert_eq!(m.dial_digits(cn()), "00525512345678");
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            "",
            "abc",
            "12",
            "+",
            "++++",
            "138001380000000000000000000000000",
            "1380013800x",
            "(((((",
            "+999 1234",
        ] {
            assert!(Phone::parse(bad, cn()).is_err(), "{bad:?} accepted");
        }
        assert!(parse_region("XX").is_err());
    }

    #[test]
    fn debug_is_masked() {
        let m = Phone::parse("13800138000", cn()).expect("mobile");
        assert_eq!(format!("{m:?}"), "Phone(**********8000)");
    }
}
