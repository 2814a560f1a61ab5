//! Phone numbers, parsed and normalised with `phonenumber` (a port of Google's libphonenumber).
//!
//! A number written with `+` or `00` carries its country; otherwise it is read in the tenant's
//! `phone_region` (CN by default, MX for Mexican tenants, ...). Stored in E.164. When dialled
//! through Infinity it is sent in national digits (`13800138000`, `02566823420`,
//! `5512345678`) if it belongs to the tenant's region, else as `00` + country code + number.

use std::fmt;
use std::str::FromStr;

use phonenumber::country::Id as Region;
use phonenumber::{Mode, PhoneNumber, Type as PhoneType};

/// What kind of number a valid number is, as far as dialling it is concerned. Emergency numbers
/// never get this far (they are refused at parse time, see [`EMERGENCY_NUMBERS`]); of the rest,
/// the costly kinds are refused at dial time unless the tenant allows the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NumberKind {
    /// An ordinary number: fixed line, mobile, toll-free, shared cost, VoIP, ...
    Regular,
    /// Premium rate (`+1 900`, `+44 909`, `+49 900`, `+979`): the called party sets the price.
    PremiumRate,
    /// A satellite phone (`+870` Inmarsat, `+881` Iridium, Globalstar, ...): several dollars a
    /// minute.
    Satellite,
    /// International networks (`+882`, `+883`): carrier-priced, often far above mobile rates.
    InternationalNetwork,
    /// Personal numbers (for example UK `070`): forwarded at a premium.
    PersonalNumber,
}

impl NumberKind {
    /// The costly kinds a tenant may allow (every kind but [`NumberKind::Regular`]).
    pub const COSTLY: [Self; 4] = [
        Self::PremiumRate,
        Self::Satellite,
        Self::InternationalNetwork,
        Self::PersonalNumber,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Regular => "regular",
            Self::PremiumRate => "premium_rate",
            Self::Satellite => "satellite",
            Self::InternationalNetwork => "international_network",
            Self::PersonalNumber => "personal_number",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Regular]
            .into_iter()
            .chain(Self::COSTLY)
            .find(|k| k.as_str() == s)
    }

    /// A phrase for error messages.
    fn describe(self) -> &'static str {
        match self {
            Self::Regular => "a regular number",
            Self::PremiumRate => "a premium-rate number",
            Self::Satellite => "a satellite phone number",
            Self::InternationalNetwork => "an international-network number",
            Self::PersonalNumber => "a personal (forwarding) number",
        }
    }
}

/// Emergency and public-safety service numbers of the markets the platform serves and the
/// common international ones (112, 911, 999, ...). A destination whose digits are one of these
/// is refused with a reason that says so, whatever the tenant allows: a collections platform
/// never dials an emergency service.
pub const EMERGENCY_NUMBERS: &[&str] = &[
    // China: police, fire, ambulance, traffic; 999 (Red Cross ambulance).
    "110", "119", "120", "122", "999", // International GSM, EU, UK, US, Canada, Mexico.
    "112", "911", "08", "000", "060", "065", "066", "080", // Indonesia, Philippines, India.
    "113", "115", "118", "117", "100", "101", "102", "108",
];

/// A valid phone number in E.164.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Phone {
    e164: String,
    national_digits: String,
    region: Option<Region>,
    kind: NumberKind,
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a whole number: logs and panics see the mask only.
        write!(f, "Phone({})", cco_platform::mask::phone(&self.e164))
    }
}

/// Parses a region code such as `CN` or `MX`.
pub fn parse_region(value: &str) -> Result<Region, String> {
    Region::from_str(&value.to_ascii_uppercase()).map_err(|_| {
        format!(
            "must be an ISO 3166 alpha-2 region such as CN or MX, got {}",
            cco_platform::validate::quote(value)
        )
    })
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Full-width digits and punctuation (as typed with a Chinese or Japanese input method) as
/// their ASCII forms; the ideographic space as a space.
fn normalise_width(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{FF10}'..='\u{FF19}' => {
                char::from_u32(u32::from(c) - 0xFF10 + u32::from('0')).unwrap_or(c)
            }
            '\u{FF0B}' => '+',
            '\u{FF0D}' | '\u{2212}' | '\u{2010}' | '\u{2011}' | '\u{2013}' => '-',
            '\u{FF08}' => '(',
            '\u{FF09}' => ')',
            '\u{3000}' => ' ',
            other => other,
        })
        .collect()
}

/// How [`Phone::parse`] ends its refusal of an emergency number.
const EMERGENCY: &str = "is an emergency service number: never dialled";

/// Whether [`Phone::parse`]'s error `message` refused an emergency number.
pub fn is_emergency_refusal(message: &str) -> bool {
    message.ends_with(EMERGENCY)
}

/// The most characters a phone number may be written with.
pub const MAX_CHARS: usize = 32;

impl Phone {
    /// Parses `raw` in `region`; the error says what is wrong (without the field name, and
    /// without echoing more than the last 4 digits of the number).
    pub fn parse(raw: &str, region: Region) -> Result<Self, String> {
        let n = raw.chars().count();
        if n > MAX_CHARS {
            return Err(format!("must be at most {MAX_CHARS} characters, got {n}"));
        }
        let s = normalise_width(raw);
        let s = s.trim();
        if s.is_empty() {
            return Err("is empty".into());
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')')))
        {
            return Err(format!(
                "may contain only digits, spaces, + - ( ), found {c:?}"
            ));
        }
        let plain = digits(s);
        if !s.starts_with('+')
            && !s.starts_with("00")
            && EMERGENCY_NUMBERS.contains(&plain.as_str())
        {
            return Err(format!("{plain} {EMERGENCY}"));
        }
        let masked = cco_platform::mask::phone(&plain);
        let normalised = match s.strip_prefix("00") {
            Some(rest) if !s.starts_with('+') => format!("+{rest}"),
            _ => s.to_owned(),
        };
        // The parser is third-party code fed with network input: contain any panic.
        // A number in international form is parsed without the region: with one whose
        // national prefix is 1 (US, CA, ...), the parser strips a leading 1 after the country
        // code too (+86 137... became +86 37...).
        let hint = (!normalised.starts_with('+')).then_some(region);
        let parsed = std::panic::catch_unwind(|| phonenumber::parse(hint, &normalised))
            .map_err(|_| format!("is not a phone number ({masked})"))?
            .map_err(|e| format!("is not a phone number ({e}): {masked}"))?;
        if EMERGENCY_NUMBERS.contains(&parsed.national().value().to_string().as_str()) {
            return Err(format!("{} {EMERGENCY}", parsed.national().value()));
        }
        if !phonenumber::is_valid(&parsed) {
            return Err(format!(
                "is not a valid phone number for region {}: {masked}",
                region.as_ref()
            ));
        }
        Ok(Self::from_parsed(&parsed))
    }

    fn from_parsed(p: &PhoneNumber) -> Self {
        let kind = match p.code().value() {
            870 | 881 => NumberKind::Satellite,
            882 | 883 => NumberKind::InternationalNetwork,
            979 => NumberKind::PremiumRate,
            _ => match p.number_type(&phonenumber::metadata::DATABASE) {
                PhoneType::PremiumRate => NumberKind::PremiumRate,
                PhoneType::PersonalNumber => NumberKind::PersonalNumber,
                _ => NumberKind::Regular,
            },
        };
        Self {
            e164: p.format().mode(Mode::E164).to_string(),
            national_digits: digits(&p.format().mode(Mode::National).to_string()),
            region: p.country().id(),
            kind,
        }
    }

    /// Reads a stored E.164 number back.
    pub fn from_e164(e164: &str) -> Result<Self, String> {
        let masked = cco_platform::mask::phone(e164);
        let p = std::panic::catch_unwind(|| phonenumber::parse(None, e164))
            .map_err(|_| format!("stored number is corrupt: {masked}"))?
            .map_err(|e| format!("stored number is corrupt ({e}): {masked}"))?;
        Ok(Self::from_parsed(&p))
    }

    /// The number in E.164 (`+8613800138000`).
    pub fn e164(&self) -> &str {
        &self.e164
    }

    /// The number's region (ISO 3166 alpha-2), when it has one.
    pub fn region_code(&self) -> Option<&str> {
        self.region.as_ref().map(AsRef::as_ref)
    }

    /// What kind of number it is.
    pub fn kind(&self) -> NumberKind {
        self.kind
    }

    /// Refuses a costly kind the tenant has not allowed; the error says which kind it is.
    pub fn check_kind(&self, allowed: &[NumberKind]) -> Result<(), String> {
        if self.kind == NumberKind::Regular || allowed.contains(&self.kind) {
            Ok(())
        } else {
            Err(format!(
                "{} is {}: refused (a tenant may allow {:?} in allowed_number_types)",
                self.masked(),
                self.kind.describe(),
                self.kind.as_str()
            ))
        }
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
    fn international_numbers_keep_their_digits_in_every_region() {
        for r in ["US", "CA", "CN", "MX", "GB"] {
            let p =
                Phone::parse("+8613700137000", parse_region(r).expect("region")).expect("valid");
            assert_eq!(p.e164(), "+8613700137000", "read in {r}");
            let p =
                Phone::parse("0044 20 7946 0018", parse_region(r).expect("region")).expect("valid");
            assert_eq!(p.e164(), "+442079460018", "read in {r}");
        }
    }

    #[test]
    fn costly_and_emergency_numbers_by_kind() {
        let us = parse_region("US").expect("US");
        for (raw, kind) in [
            ("+1 900 555 0199", NumberKind::PremiumRate),
            ("+44 909 8790879", NumberKind::PremiumRate),
            ("+49 900 1234567", NumberKind::PremiumRate),
            ("+881 6 1234 5678", NumberKind::Satellite),
            ("+870 773 111 632", NumberKind::Satellite),
            ("+883 510 012345", NumberKind::InternationalNetwork),
            ("+1 800 555 0199", NumberKind::Regular),
            ("13800138000", NumberKind::Regular),
            ("+86 400 123 4567", NumberKind::Regular),
        ] {
            let p = Phone::parse(raw, cn()).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(p.kind(), kind, "{raw}");
            assert_eq!(
                p.check_kind(&[]).is_ok(),
                kind == NumberKind::Regular,
                "{raw}"
            );
            assert!(
                p.check_kind(&NumberKind::COSTLY).is_ok(),
                "{raw} allowed explicitly"
            );
        }
        let e = Phone::parse("+1 900 555 0199", us)
            .expect("valid")
            .check_kind(&[NumberKind::Satellite])
            .expect_err("premium refused");
        assert!(
            e.contains("premium-rate") && e.contains("premium_rate"),
            "{e}"
        );
        for (raw, region) in [
            ("110", cn()),
            ("120", cn()),
            ("911", us),
            ("112", us),
            ("999", cn()),
            ("+86 110", cn()),
        ] {
            let e = Phone::parse(raw, region).expect_err(raw);
            assert!(e.contains("emergency"), "{raw}: {e}");
        }
    }

    #[test]
    fn full_width_digits_and_lengths_in_characters() {
        let p = Phone::parse("１３８００１３８０００", cn()).expect("full-width digits");
        assert_eq!(p.e164(), "+8613800138000");
        let e = Phone::parse(&"１".repeat(33), cn()).expect_err("33 characters");
        assert_eq!(e, "must be at most 32 characters, got 33");
        let e = Phone::parse("138001380001", cn()).expect_err("invalid");
        assert!(
            !e.contains("138001380001"),
            "the whole number is not echoed: {e}"
        );
    }

    #[test]
    fn debug_is_masked() {
        let m = Phone::parse("13800138000", cn()).expect("mobile");
        assert_eq!(format!("{m:?}"), "Phone(**********8000)");
    }
}
