//! Collections compliance at dial time: a tenant's policy (calling windows in the debtor's
//! local time, holidays, frequency caps, the cool-down after a conversation, overrides), the
//! presets that fill it, the debtor's time zone, and the refusals the gate gives.
//!
//! Everything here is pure: the clock is a parameter, so windows, holidays and rolling caps are
//! tested at their boundaries. Counting attempts is the store's (it must be exact across
//! replicas); the order of the checks is the service's ([`crate::service::Compliance`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::GwError;

/// The longest rolling window a cap or cool-down may have (attempts are kept a little longer).
pub const MAX_WINDOW_SECONDS: u32 = 31 * 86_400;
/// The most holidays a policy holds.
pub const MAX_HOLIDAYS: usize = 1_000;
/// Minutes in a day: a window's end may be 24:00.
const DAY_MINUTES: u16 = 1_440;

/// Why the gate refused a dial: the `reason` of the `google.rpc.ErrorInfo` a client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Outside the calling windows of the debtor's local weekday.
    OutsideCallingHours,
    /// A holiday of the tenant (in the debtor's local date).
    Holiday,
    /// A frequency cap (per number, case or collector) is reached.
    FrequencyCap,
    /// A conversation about the case happened within the cool-down.
    CaseCooldown,
    /// The number is on a do-not-call list.
    DoNotCall,
    /// An emergency, premium-rate, satellite or other blocked kind of number.
    NumberTypeBlocked,
}

names!(Reason {
    OutsideCallingHours = "OUTSIDE_CALLING_HOURS",
    Holiday = "HOLIDAY",
    FrequencyCap = "FREQUENCY_CAP",
    CaseCooldown = "CASE_COOLDOWN",
    DoNotCall = "DO_NOT_CALL",
    NumberTypeBlocked = "NUMBER_TYPE_BLOCKED",
});

impl Reason {
    /// Whether a supervisor's override may let a call through this refusal. Do-not-call
    /// entries (cease-contact requests, attorney representation) and blocked number types are
    /// never overridden.
    pub fn overridable(self) -> bool {
        !matches!(self, Self::DoNotCall | Self::NumberTypeBlocked)
    }
}

/// A refusal: the reason, a message in words, the rule's inputs, and when a later attempt
/// would pass (absent when waiting does not help).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The reason.
    pub reason: Reason,
    /// What a person reads.
    pub message: String,
    /// The rule and its inputs (the `ErrorInfo` metadata and the audit row's details).
    pub metadata: BTreeMap<String, String>,
    /// The next moment the same call would pass this rule.
    pub retry_at: Option<DateTime<Utc>>,
}

impl Refusal {
    /// A refusal with no metadata yet.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            metadata: BTreeMap::new(),
            retry_at: None,
        }
    }

    /// Adds one metadata entry.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.metadata.insert(key.to_owned(), value.to_string());
        self
    }

    /// This refusal, with `other` (a later rule that refuses too) named in `also_refused_by`,
    /// its inputs added where they do not clash, and the later of the two retry moments
    /// (none when either has none).
    #[must_use]
    pub fn and(mut self, other: Refusal) -> Self {
        self.metadata
            .insert("also_refused_by".into(), other.reason.as_str().into());
        for (k, v) in other.metadata {
            self.metadata.entry(k).or_insert(v);
        }
        self.retry_at = match (self.retry_at, other.retry_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        match self.retry_at {
            Some(t) => {
                self.metadata
                    .insert("next_allowed_at".into(), t.to_rfc3339());
            }
            None => {
                self.metadata.remove("next_allowed_at");
            }
        }
        self
    }
}

/// A window of one weekday in local minutes since midnight, `[start, end)`; `end` may be 1440
/// (24:00).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Span {
    /// First minute allowed.
    pub start: u16,
    /// First minute no longer allowed.
    pub end: u16,
}

impl Span {
    /// Parses `HH:MM`-`HH:MM` (`24:00` allowed as an end).
    pub fn parse(start: &str, end: &str) -> Result<Self, String> {
        let s = parse_hhmm(start, false)?;
        let e = parse_hhmm(end, true)?;
        if s >= e {
            return Err(format!("{start}-{end}: the end must be after the start"));
        }
        Ok(Self { start: s, end: e })
    }

    /// `HH:MM` of a minute of the day.
    pub fn hhmm(minute: u16) -> String {
        format!("{:02}:{:02}", minute / 60, minute % 60)
    }
}

fn parse_hhmm(s: &str, end: bool) -> Result<u16, String> {
    let bad = || format!("{s:?} is not a time of day as HH:MM");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m > 59 || h > 24 || (h == 24 && (m != 0 || !end)) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// At most `max_attempts` attempts within any `window_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cap {
    /// Attempts allowed in the window.
    pub max_attempts: u32,
    /// The rolling window.
    pub window_seconds: u32,
}

/// A day on which no call is allowed (the debtor's local date).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holiday {
    /// The date.
    pub date: NaiveDate,
    /// An optional name.
    #[serde(default)]
    pub name: String,
}

/// A tenant's compliance policy. The default restricts nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Policy {
    /// The preset it started from (informational).
    #[serde(default)]
    pub preset: String,
    /// Calling windows by weekday, Monday first (seven lists); `None`: any hour. An empty
    /// list means no calls that day.
    #[serde(default)]
    pub windows: Option<Vec<Vec<Span>>>,
    /// The zone used when neither the number nor the case determines one (IANA name).
    #[serde(default)]
    pub default_zone: Option<String>,
    /// Days without calls.
    #[serde(default)]
    pub holidays: Vec<Holiday>,
    /// Attempts per debtor number.
    #[serde(default)]
    pub number_cap: Option<Cap>,
    /// Attempts per case (the debt).
    #[serde(default)]
    pub case_cap: Option<Cap>,
    /// Attempts per collector.
    #[serde(default)]
    pub collector_cap: Option<Cap>,
    /// No call about a case this long after a connected call about it.
    #[serde(default)]
    pub case_cooldown_seconds: Option<u32>,
    /// Whether supervisors may grant one-call overrides.
    #[serde(default)]
    pub allow_overrides: bool,
}

/// The presets: starting points taken from the rules named, to be checked by the tenant's
/// counsel and edited; not legal advice.
pub const PRESETS: [&str; 3] = ["us_reg_f", "mx_condusef", "id_ojk"];

fn every_day(start: u16, end: u16) -> Vec<Vec<Span>> {
    vec![vec![Span { start, end }]; 7]
}

impl Policy {
    /// A preset by name (see [`PRESETS`] and the README's "Compliance" section).
    pub fn preset(name: &str) -> Option<Self> {
        let p = match name {
            // 12 CFR 1006.14(b)(2) (7 calls in 7 days about a debt; none within 7 days after a
            // conversation), FDCPA 805(a)(1) (8:00-21:00 at the consumer's location).
            "us_reg_f" => Self {
                windows: Some(every_day(8 * 60, 21 * 60)),
                default_zone: Some("America/New_York".into()),
                case_cap: Some(Cap {
                    max_attempts: 7,
                    window_seconds: 7 * 86_400,
                }),
                case_cooldown_seconds: Some(7 * 86_400),
                ..Self::default()
            },
            // CONDUSEF's rules for collection agencies: contact from 7:00 to 22:00.
            "mx_condusef" => Self {
                windows: Some(every_day(7 * 60, 22 * 60)),
                default_zone: Some("America/Mexico_City".into()),
                ..Self::default()
            },
            // OJK (POJK 22/2023): Monday to Saturday, 8:00-20:00 local time, not on public
            // holidays (the tenant enters the year's holidays).
            "id_ojk" => {
                let mut w = every_day(8 * 60, 20 * 60);
                if let Some(sunday) = w.get_mut(6) {
                    sunday.clear();
                }
                Self {
                    windows: Some(w),
                    default_zone: Some("Asia/Jakarta".into()),
                    ..Self::default()
                }
            }
            _ => return None,
        };
        Some(Self {
            preset: name.to_owned(),
            ..p
        })
    }

    /// Checks every rule of the policy; the error names the field.
    pub fn validate(&mut self) -> Result<(), GwError> {
        if !self.preset.is_empty() && !PRESETS.contains(&self.preset.as_str()) {
            return Err(GwError::invalid(
                "preset",
                format!(
                    "unknown preset {:?}; one of {}",
                    self.preset,
                    PRESETS.join(", ")
                ),
            ));
        }
        if let Some(w) = &mut self.windows {
            if w.len() != 7 {
                return Err(GwError::invalid(
                    "days",
                    format!("seven weekdays expected, got {}", w.len()),
                ));
            }
            for (i, day) in w.iter_mut().enumerate() {
                day.sort();
                if day.len() > 24 {
                    return Err(GwError::invalid("days", "at most 24 windows a day"));
                }
                for s in day.iter() {
                    if s.start >= s.end || s.end > DAY_MINUTES {
                        return Err(GwError::invalid(
                            "days",
                            format!("{} has an empty or out-of-day window", weekday_name(i)),
                        ));
                    }
                }
                if day.windows(2).any(|p| p[0].end > p[1].start) {
                    return Err(GwError::invalid(
                        "days",
                        format!("{} has overlapping windows", weekday_name(i)),
                    ));
                }
            }
        }
        match &self.default_zone {
            Some(z) => {
                z.parse::<Tz>().map_err(|_| {
                    GwError::invalid(
                        "default_time_zone",
                        format!("{z:?} is not an IANA time zone such as America/Chicago"),
                    )
                })?;
            }
            None if self.windows.is_some() || !self.holidays.is_empty() => {
                return Err(GwError::invalid(
                    "default_time_zone",
                    "is required with calling windows or holidays (used when neither the number nor the case gives the debtor's zone)",
                ));
            }
            None => {}
        }
        if self.holidays.len() > MAX_HOLIDAYS {
            return Err(GwError::invalid(
                "holidays",
                format!("at most {MAX_HOLIDAYS}, got {}", self.holidays.len()),
            ));
        }
        self.holidays.sort_by_key(|h| h.date);
        if self.holidays.windows(2).any(|p| p[0].date == p[1].date) {
            return Err(GwError::invalid("holidays", "a date is listed twice"));
        }
        for h in &self.holidays {
            cco_platform::validate::text(&h.name, 100)
                .map_err(|m| GwError::invalid("holidays", format!("name of {}: {m}", h.date)))?;
        }
        for (field, cap) in [
            ("number_cap", self.number_cap),
            ("case_cap", self.case_cap),
            ("collector_cap", self.collector_cap),
        ] {
            if let Some(c) = cap {
                if !(1..=10_000).contains(&c.max_attempts) {
                    return Err(GwError::invalid(
                        field,
                        format!("max_attempts must be 1-10000, got {}", c.max_attempts),
                    ));
                }
                if !(60..=MAX_WINDOW_SECONDS).contains(&c.window_seconds) {
                    return Err(GwError::invalid(
                        field,
                        format!(
                            "window_seconds must be 60-{MAX_WINDOW_SECONDS} (31 days), got {}",
                            c.window_seconds
                        ),
                    ));
                }
            }
        }
        if let Some(s) = self.case_cooldown_seconds
            && !(1..=MAX_WINDOW_SECONDS).contains(&s)
        {
            return Err(GwError::invalid(
                "case_cooldown_seconds",
                format!("must be 1-{MAX_WINDOW_SECONDS} (31 days) or unset, got {s}"),
            ));
        }
        Ok(())
    }

    /// Whether the policy restricts anything the store must count.
    pub fn counts(&self) -> bool {
        self.number_cap.is_some()
            || self.case_cap.is_some()
            || self.collector_cap.is_some()
            || self.case_cooldown_seconds.is_some()
    }

    /// The default zone, parsed (validated on the way in).
    pub fn zone(&self) -> Option<Tz> {
        self.default_zone.as_deref().and_then(|z| z.parse().ok())
    }

    fn holiday(&self, date: NaiveDate) -> Option<&Holiday> {
        self.holidays
            .binary_search_by_key(&date, |h| h.date)
            .ok()
            .and_then(|i| self.holidays.get(i))
    }

    fn spans(&self, weekday: usize) -> Option<&[Span]> {
        self.windows
            .as_ref()
            .map(|w| w.get(weekday).map_or(&[][..], Vec::as_slice))
    }

    fn allowed_local(&self, local: NaiveDateTime) -> bool {
        if self.holiday(local.date()).is_some() {
            return false;
        }
        let minute = minute_of(local);
        self.spans(weekday_index(local.date()))
            .is_none_or(|spans| spans.iter().any(|s| s.start <= minute && minute < s.end))
    }

    /// Refuses `now` when it is a holiday or outside the windows in `zone`, with the next
    /// moment that passes both.
    pub fn check_hours(&self, now: DateTime<Utc>, zone: Tz) -> Result<(), Refusal> {
        let local = now.with_timezone(&zone).naive_local();
        if self.allowed_local(local) {
            return Ok(());
        }
        let retry_at = self.next_allowed(now, zone);
        let date = local.date();
        let weekday = weekday_name(weekday_index(date));
        let mut r = if let Some(h) = self.holiday(date) {
            Refusal::new(
                Reason::Holiday,
                format!(
                    "{date} is a holiday{} in the debtor's time zone {zone}: no calls",
                    if h.name.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", h.name)
                    }
                ),
            )
            .with("holiday", date)
            .with("holiday_name", &h.name)
        } else {
            let windows = self
                .spans(weekday_index(date))
                .unwrap_or_default()
                .iter()
                .map(|s| format!("{}-{}", Span::hhmm(s.start), Span::hhmm(s.end)))
                .collect::<Vec<_>>()
                .join(",");
            Refusal::new(
                Reason::OutsideCallingHours,
                format!(
                    "it is {} {weekday} in the debtor's time zone {zone}, outside the calling hours ({})",
                    local.format("%H:%M:%S"),
                    if windows.is_empty() {
                        "no calls that day".to_owned()
                    } else {
                        windows.clone()
                    }
                ),
            )
            .with("windows", windows)
        };
        let rule = if r.reason == Reason::Holiday {
            "holidays"
        } else {
            "calling_windows"
        };
        r = r
            .with("rule", rule)
            .with("debtor_local_time", local.format("%Y-%m-%dT%H:%M:%S"))
            .with("weekday", weekday)
            .with("time_zone", zone);
        r.retry_at = retry_at;
        if let Some(t) = retry_at {
            r = r.with("next_allowed_at", t.to_rfc3339());
        }
        Err(r)
    }

    /// The first moment after `now` at which a call passes the windows and holidays in `zone`
    /// (within 400 days), resolving local times that a DST change skips to the first valid one.
    pub fn next_allowed(&self, now: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        let local_now = now.with_timezone(&zone).naive_local();
        let whole_day = [Span {
            start: 0,
            end: DAY_MINUTES,
        }];
        for d in 0..400 {
            let date = local_now.date().checked_add_days(chrono::Days::new(d))?;
            if self.holiday(date).is_some() {
                continue;
            }
            let spans = self.spans(weekday_index(date)).unwrap_or(&whole_day);
            for s in spans {
                let Some(start) =
                    date.and_hms_opt(u32::from(s.start / 60), u32::from(s.start % 60), 0)
                else {
                    continue;
                };
                // Later the same day when now is past the start (now is refused, so it is not
                // inside this span).
                let start = if start <= local_now {
                    let next_minute = local_now
                        .with_second(0)
                        .and_then(|t| t.with_nanosecond(0))?
                        .checked_add_signed(chrono::Duration::minutes(1))?;
                    if minute_of(next_minute) >= s.end || next_minute.date() != date {
                        continue;
                    }
                    next_minute.max(start)
                } else {
                    start
                };
                if let Some(t) = first_instant_at_or_after(zone, start)
                    && t > now
                {
                    let local = t.with_timezone(&zone).naive_local();
                    if local.date() == date && minute_of(local) < s.end {
                        return Some(t);
                    }
                }
            }
        }
        None
    }
}

/// The earliest instant whose local time in `zone` is `local` or, when a DST change skips
/// `local`, the first local time after the gap.
fn first_instant_at_or_after(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let mut t = local;
    for _ in 0..=24 * 60 {
        if let Some(i) = zone.from_local_datetime(&t).earliest() {
            return Some(i.with_timezone(&Utc));
        }
        t = t.checked_add_signed(chrono::Duration::minutes(1))?;
    }
    None
}

fn minute_of(t: NaiveDateTime) -> u16 {
    // hour <= 23, minute <= 59: fits.
    u16::try_from(t.hour() * 60 + t.minute()).unwrap_or(DAY_MINUTES)
}

fn weekday_index(d: NaiveDate) -> usize {
    usize::try_from(d.weekday().num_days_from_monday()).unwrap_or(0)
}

/// The weekday's English name, Monday = 0.
pub fn weekday_name(i: usize) -> &'static str {
    [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ]
    .get(i)
    .copied()
    .unwrap_or("?")
}

/// Where the debtor's zone came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneSource {
    /// The number's country has one zone.
    Number,
    /// The case (MakeCall's `debtor_time_zone`).
    Case,
    /// The tenant's default.
    TenantDefault,
}

names!(ZoneSource {
    Number = "number",
    Case = "case",
    TenantDefault = "tenant_default",
});

/// The debtor's zone: from the number where its country has a single zone, else from the case,
/// else the tenant's default.
pub fn debtor_zone(
    number_region: Option<&str>,
    case_zone: Option<Tz>,
    default: Option<Tz>,
) -> Option<(Tz, ZoneSource)> {
    number_region
        .and_then(single_zone)
        .map(|z| (z, ZoneSource::Number))
        .or_else(|| case_zone.map(|z| (z, ZoneSource::Case)))
        .or_else(|| default.map(|z| (z, ZoneSource::TenantDefault)))
}

/// Parses a zone a client gave (`field` names it in the error).
pub fn parse_zone(field: &'static str, s: &str) -> Result<Option<Tz>, GwError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<Tz>().map(Some).map_err(|_| {
        GwError::invalid(
            field,
            format!(
                "{} is not an IANA time zone such as America/Chicago",
                cco_platform::validate::quote(s)
            ),
        )
    })
}

/// The zone of a country (ISO 3166 alpha-2) that has exactly one: the markets the platform
/// serves and the common ones. Countries spanning several zones (US, CA, MX, BR, ID, AU, RU,
/// ...) are absent: their debtor's zone comes from the case or the tenant.
pub fn single_zone(region: &str) -> Option<Tz> {
    use chrono_tz::{Africa, America, Asia, Europe};
    Some(match region {
        "CN" => Asia::Shanghai,
        "HK" => Asia::Hong_Kong,
        "MO" => Asia::Macau,
        "TW" => Asia::Taipei,
        "SG" => Asia::Singapore,
        "MY" => Asia::Kuala_Lumpur,
        "TH" => Asia::Bangkok,
        "VN" => Asia::Ho_Chi_Minh,
        "PH" => Asia::Manila,
        "JP" => Asia::Tokyo,
        "KR" => Asia::Seoul,
        "IN" => Asia::Kolkata,
        "PK" => Asia::Karachi,
        "BD" => Asia::Dhaka,
        "LK" => Asia::Colombo,
        "NP" => Asia::Kathmandu,
        "AE" => Asia::Dubai,
        "SA" => Asia::Riyadh,
        "IL" => Asia::Jerusalem,
        "TR" => Europe::Istanbul,
        "EG" => Africa::Cairo,
        "NG" => Africa::Lagos,
        "KE" => Africa::Nairobi,
        "ZA" => Africa::Johannesburg,
        "GH" => Africa::Accra,
        "GB" => Europe::London,
        "IE" => Europe::Dublin,
        "FR" => Europe::Paris,
        "DE" => Europe::Berlin,
        "IT" => Europe::Rome,
        "NL" => Europe::Amsterdam,
        "BE" => Europe::Brussels,
        "CH" => Europe::Zurich,
        "AT" => Europe::Vienna,
        "PL" => Europe::Warsaw,
        "SE" => Europe::Stockholm,
        "CO" => America::Bogota,
        "PE" => America::Lima,
        "GT" => America::Guatemala,
        "CR" => America::Costa_Rica,
        "AR" => America::Argentina::Buenos_Aires,
        _ => return None,
    })
}

/// Why a number is on a do-not-call list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DncReason {
    /// The debtor asked not to be contacted.
    CeaseContact,
    /// The number is not the debtor's.
    WrongNumber,
    /// The debtor is represented by an attorney.
    AttorneyRepresented,
    /// A complaint was filed.
    Complaint,
}

names!(DncReason {
    CeaseContact = "cease_contact",
    WrongNumber = "wrong_number",
    AttorneyRepresented = "attorney_represented",
    Complaint = "complaint",
});

/// The scope of the platform-wide do-not-call list.
pub const GLOBAL_SCOPE: &str = "*";

/// One do-not-call entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DncEntry {
    /// A tenant id, or [`GLOBAL_SCOPE`].
    pub scope: String,
    /// Digits of the E.164 form without `+` (a prefix of them for prefix entries).
    pub digits: String,
    /// Whether every number starting with `digits` is listed.
    pub prefix: bool,
    /// Why.
    pub reason: DncReason,
    /// A free note (at most 256 characters).
    pub note: String,
    /// When the entry stops applying.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// Parses a prefix entry: `+` and 1-15 digits (spaces and dashes ignored).
pub fn parse_prefix(raw: &str) -> Result<String, String> {
    let s = raw.trim();
    let Some(rest) = s.strip_prefix('+') else {
        return Err("a prefix is written in international form, starting with +".into());
    };
    let digits: String = rest.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    if digits.is_empty() || digits.len() > 15 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err("a prefix is + and 1-15 digits".into());
    }
    Ok(digits)
}

/// The candidate prefixes of a number's digits, shortest first (the number itself last).
pub fn prefixes(digits: &str) -> Vec<&str> {
    (1..=digits.len()).filter_map(|n| digits.get(..n)).collect()
}

/// What the gate decided about one dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Dialled (or about to be).
    Allowed,
    /// Refused.
    Refused,
    /// Refused by a rule but let through by a supervisor's override.
    Overridden,
}

names!(Outcome {
    Allowed = "allowed",
    Refused = "refused",
    Overridden = "overridden",
});

/// One audited decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Its id (a UUID).
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// When.
    pub decided_at: DateTime<Utc>,
    /// Collector.
    pub collector_id: String,
    /// Case.
    pub case_id: String,
    /// The debtor's number, masked.
    pub number_masked: String,
    /// Outcome.
    pub outcome: Outcome,
    /// The rule that refused (also for an override); `None` when nothing did.
    pub reason: Option<Reason>,
    /// The rule's inputs: zone, local time, counts, windows.
    pub details: BTreeMap<String, String>,
    /// The call, when dialled.
    pub call_id: Option<String>,
    /// The override used.
    pub override_id: Option<String>,
    /// Why an allowed call was not dialled after all.
    pub not_dialled: Option<String>,
}

/// What the store counted for a dial: the times of the attempts in each capped rolling window
/// (newest first, at most the cap's size), and the end of the newest conversation about the
/// case within the cool-down.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Attempts to the number.
    pub number: Vec<DateTime<Utc>>,
    /// Attempts about the case.
    pub case: Vec<DateTime<Utc>>,
    /// Attempts by the collector.
    pub collector: Vec<DateTime<Utc>>,
    /// The newest connected call about the case.
    pub last_connected: Option<DateTime<Utc>>,
    /// Calls about the case still open (dialing, ringing, unknown): each may be a
    /// conversation Infinity has not reported yet.
    pub open_calls: u32,
}

impl Policy {
    /// Refuses when a cap is reached or the case is cooling down; otherwise the counts, for
    /// the audit.
    pub fn check_counts(
        &self,
        f: &Facts,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<String, String>, Refusal> {
        let mut seen = BTreeMap::new();
        for (rule, what, cap, times) in [
            ("case_cap", "about this case", self.case_cap, &f.case),
            ("number_cap", "to this number", self.number_cap, &f.number),
            (
                "collector_cap",
                "by this collector",
                self.collector_cap,
                &f.collector,
            ),
        ] {
            let Some(cap) = cap else { continue };
            let count = u32::try_from(times.len()).unwrap_or(u32::MAX);
            seen.insert(format!("{rule}_count"), count.to_string());
            if count >= cap.max_attempts {
                // The oldest attempt still counted leaves the window first.
                let oldest = times
                    .get(
                        usize::try_from(cap.max_attempts)
                            .unwrap_or(usize::MAX)
                            .saturating_sub(1),
                    )
                    .or(times.last())
                    .copied();
                let retry_at = oldest.and_then(|t| {
                    t.checked_add_signed(chrono::Duration::seconds(i64::from(cap.window_seconds)))
                });
                let mut r = Refusal::new(
                    Reason::FrequencyCap,
                    format!(
                        "{count} attempts {what} in the last {}: the cap is {}",
                        words(cap.window_seconds),
                        cap.max_attempts
                    ),
                )
                .with("rule", rule)
                .with("count", count)
                .with("max_attempts", cap.max_attempts)
                .with("window_seconds", cap.window_seconds);
                if let Some(t) = retry_at {
                    r = r.with("next_allowed_at", t.to_rfc3339());
                }
                r.retry_at = retry_at;
                return Err(r);
            }
        }
        if self.case_cooldown_seconds.is_some() && f.open_calls > 0 {
            return Err(Refusal::new(
                Reason::CaseCooldown,
                format!(
                    "{} call(s) about this case are still in progress: any of them may be a conversation, which starts the cool-down",
                    f.open_calls
                ),
            )
            .with("rule", "case_cooldown")
            .with("open_calls", f.open_calls));
        }
        if let (Some(secs), Some(last)) = (self.case_cooldown_seconds, f.last_connected) {
            let until = last.checked_add_signed(chrono::Duration::seconds(i64::from(secs)));
            if until.is_some_and(|u| u > now) {
                let mut r = Refusal::new(
                    Reason::CaseCooldown,
                    format!(
                        "a call about this case connected at {}: no call for {} after a conversation",
                        last.to_rfc3339(),
                        words(secs)
                    ),
                )
                .with("rule", "case_cooldown")
                .with("last_connected_at", last.to_rfc3339())
                .with("cooldown_seconds", secs);
                if let Some(u) = until {
                    r = r.with("next_allowed_at", u.to_rfc3339());
                }
                r.retry_at = until;
                return Err(r);
            }
        }
        Ok(seen)
    }
}

/// A duration in words (`7 days`, `36 hours`, `90 minutes`, `45 seconds`).
pub fn words(secs: u32) -> String {
    let plural = |n: u32, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if secs.is_multiple_of(86_400) {
        plural(secs / 86_400, "day")
    } else if secs.is_multiple_of(3_600) {
        plural(secs / 3_600, "hour")
    } else if secs.is_multiple_of(60) {
        plural(secs / 60, "minute")
    } else {
        plural(secs, "second")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .expect("time")
    }

    fn reg_f() -> Policy {
        let mut p = Policy::preset("us_reg_f").expect("preset");
        p.validate().expect("valid");
        p
    }

    #[test]
    fn the_last_second_before_nine_pm_passes_and_nine_pm_does_not() {
        let p = reg_f();
        let chicago: Tz = "America/Chicago".parse().expect("zone");
        // 2026-12-02 is a Wednesday; Chicago is UTC-6 in December.
        assert!(p.check_hours(at("2026-12-03T02:59:59Z"), chicago).is_ok());
        let r = p
            .check_hours(at("2026-12-03T03:00:00Z"), chicago)
            .expect_err("21:00 refused");
        assert_eq!(r.reason, Reason::OutsideCallingHours);
        assert_eq!(r.metadata["debtor_local_time"], "2026-12-02T21:00:00");
        assert_eq!(r.metadata["time_zone"], "America/Chicago");
        // Next: 08:00 Thursday in Chicago = 14:00 UTC.
        assert_eq!(r.retry_at, Some(at("2026-12-03T14:00:00Z")));
        // 07:59:59 refused, 08:00:00 passes.
        assert!(p.check_hours(at("2026-12-03T13:59:59Z"), chicago).is_err());
        assert!(p.check_hours(at("2026-12-03T14:00:00Z"), chicago).is_ok());
    }

    #[test]
    fn windows_follow_the_debtors_clock_across_a_dst_change() {
        let p = reg_f();
        let ny: Tz = "America/New_York".parse().expect("zone");
        // US DST starts 2027-03-14 02:00 local. Saturday 13th: 20:59:59 EST = 01:59:59Z next day.
        assert!(p.check_hours(at("2027-03-14T01:59:59Z"), ny).is_ok());
        let r = p
            .check_hours(at("2027-03-14T02:00:00Z"), ny)
            .expect_err("21:00 EST");
        // Sunday 08:00 is EDT (UTC-4): 12:00Z, not 13:00Z.
        assert_eq!(r.retry_at, Some(at("2027-03-14T12:00:00Z")));
        assert!(p.check_hours(at("2027-03-14T11:59:59Z"), ny).is_err());
        assert!(p.check_hours(at("2027-03-14T12:00:00Z"), ny).is_ok());
        // And back in November: 20:59:59 EST on 2027-11-07 = 01:59:59Z on the 8th.
        assert!(p.check_hours(at("2027-11-08T01:59:59Z"), ny).is_ok());
        assert!(p.check_hours(at("2027-11-08T02:00:00Z"), ny).is_err());
    }

    #[test]
    fn a_window_starting_in_a_skipped_hour_opens_when_the_clock_resumes() {
        let mut p = Policy {
            windows: Some(every_day(2 * 60 + 30, 4 * 60)),
            default_zone: Some("America/New_York".into()),
            ..Policy::default()
        };
        p.validate().expect("valid");
        let ny: Tz = "America/New_York".parse().expect("zone");
        // 2027-03-14 02:30 does not exist in New York; 03:00 EDT = 07:00Z.
        let next = p.next_allowed(at("2027-03-14T06:00:00Z"), ny);
        assert_eq!(next, Some(at("2027-03-14T07:00:00Z")));
    }

    #[test]
    fn holidays_refuse_the_whole_local_day() {
        let mut p = Policy::preset("id_ojk").expect("preset");
        p.holidays = vec![Holiday {
            date: NaiveDate::from_ymd_opt(2027, 8, 17).expect("date"),
            name: "Hari Kemerdekaan".into(),
        }];
        p.validate().expect("valid");
        let jakarta: Tz = "Asia/Jakarta".parse().expect("zone");
        // 2027-08-17 is a Tuesday; 10:00 WIB = 03:00Z.
        let r = p
            .check_hours(at("2027-08-17T03:00:00Z"), jakarta)
            .expect_err("holiday");
        assert_eq!(r.reason, Reason::Holiday);
        assert_eq!(r.metadata["holiday_name"], "Hari Kemerdekaan");
        // Next: Wednesday 08:00 WIB = 01:00Z.
        assert_eq!(r.retry_at, Some(at("2027-08-18T01:00:00Z")));
        // Sundays have no window: Saturday 20:00 WIB -> Monday 08:00 WIB.
        let r = p
            .check_hours(at("2027-08-21T13:00:00Z"), jakarta)
            .expect_err("saturday 20:00");
        assert_eq!(r.retry_at, Some(at("2027-08-23T01:00:00Z")));
    }

    #[test]
    fn the_zone_comes_from_the_number_then_the_case_then_the_tenant() {
        let ny: Tz = "America/New_York".parse().expect("zone");
        let la: Tz = "America/Los_Angeles".parse().expect("zone");
        assert_eq!(
            debtor_zone(Some("CN"), Some(la), Some(ny)),
            Some((chrono_tz::Asia::Shanghai, ZoneSource::Number))
        );
        assert_eq!(
            debtor_zone(Some("US"), Some(la), Some(ny)),
            Some((la, ZoneSource::Case))
        );
        assert_eq!(
            debtor_zone(Some("US"), None, Some(ny)),
            Some((ny, ZoneSource::TenantDefault))
        );
        assert_eq!(debtor_zone(Some("MX"), None, None), None);
    }

    #[test]
    fn bad_policies_name_their_field() {
        let cases: Vec<(Policy, &str)> = vec![
            (
                Policy {
                    windows: Some(every_day(60, 120)),
                    ..Policy::default()
                },
                "default_time_zone",
            ),
            (
                Policy {
                    windows: Some(vec![
                        vec![
                            Span {
                                start: 60,
                                end: 120
                            },
                            Span {
                                start: 100,
                                end: 200
                            }
                        ];
                        7
                    ]),
                    default_zone: Some("UTC".into()),
                    ..Policy::default()
                },
                "days",
            ),
            (
                Policy {
                    case_cap: Some(Cap {
                        max_attempts: 0,
                        window_seconds: 86_400,
                    }),
                    ..Policy::default()
                },
                "case_cap",
            ),
            (
                Policy {
                    number_cap: Some(Cap {
                        max_attempts: 3,
                        window_seconds: MAX_WINDOW_SECONDS + 1,
                    }),
                    ..Policy::default()
                },
                "number_cap",
            ),
            (
                Policy {
                    default_zone: Some("Mars/Olympus".into()),
                    ..Policy::default()
                },
                "default_time_zone",
            ),
        ];
        for (mut p, field) in cases {
            match p.validate() {
                Err(GwError::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        for name in PRESETS {
            let mut p = Policy::preset(name).expect("preset");
            p.validate().expect(name);
        }
    }

    #[test]
    fn the_seventh_attempt_passes_and_the_eighth_waits_for_the_oldest_to_leave() {
        let p = reg_f();
        let now = at("2026-12-02T15:00:00Z");
        let hours = |h: i64| now - chrono::Duration::hours(h);
        // Newest first, as the store gives them.
        let mut f = Facts {
            case: (1..=6).map(hours).collect(),
            ..Facts::default()
        };
        let counts = p.check_counts(&f, now).expect("the 7th passes");
        assert_eq!(counts["case_cap_count"], "6");
        f.case = (1..=7).map(hours).collect();
        let r = p.check_counts(&f, now).expect_err("the 8th is refused");
        assert_eq!(r.reason, Reason::FrequencyCap);
        assert_eq!(r.metadata["count"], "7");
        // The oldest counted (7 hours ago) leaves the 7-day window 7 days after it.
        assert_eq!(r.retry_at, Some(hours(7) + chrono::Duration::days(7)));
    }

    #[test]
    fn the_cooldown_ends_seven_days_after_the_conversation() {
        let p = reg_f();
        let talked = at("2026-12-01T10:00:00Z");
        let f = Facts {
            last_connected: Some(talked),
            ..Facts::default()
        };
        let day7 = talked + chrono::Duration::days(7) - chrono::Duration::seconds(1);
        let r = p.check_counts(&f, day7).expect_err("day 7");
        assert_eq!(r.reason, Reason::CaseCooldown);
        assert_eq!(r.retry_at, Some(talked + chrono::Duration::days(7)));
        assert!(
            p.check_counts(&f, talked + chrono::Duration::days(7))
                .is_ok()
        );
        assert!(
            p.check_counts(&f, talked + chrono::Duration::days(8))
                .is_ok()
        );
    }

    #[test]
    fn an_open_call_about_the_case_holds_the_next_one() {
        let p = reg_f();
        let f = Facts {
            open_calls: 1,
            ..Facts::default()
        };
        let r = p
            .check_counts(&f, at("2026-12-02T15:00:00Z"))
            .expect_err("in progress");
        assert_eq!(r.reason, Reason::CaseCooldown);
        assert_eq!(r.retry_at, None);
        let mut no_cooldown = reg_f();
        no_cooldown.case_cooldown_seconds = None;
        assert!(
            no_cooldown
                .check_counts(&f, at("2026-12-02T15:00:00Z"))
                .is_ok()
        );
    }

    #[test]
    fn two_refusals_wait_for_the_later_moment() {
        let mut hours = Refusal::new(Reason::OutsideCallingHours, "late");
        hours.retry_at = Some(at("2026-12-03T14:00:00Z"));
        let mut cap = Refusal::new(Reason::FrequencyCap, "often").with("count", 7);
        cap.retry_at = Some(at("2026-12-05T10:00:00Z"));
        let both = hours.and(cap);
        assert_eq!(both.reason, Reason::OutsideCallingHours);
        assert_eq!(both.metadata["also_refused_by"], "FREQUENCY_CAP");
        assert_eq!(both.metadata["count"], "7");
        assert_eq!(both.retry_at, Some(at("2026-12-05T10:00:00Z")));
    }

    #[test]
    fn times_of_day_parse_strictly() {
        assert_eq!(
            Span::parse("08:00", "21:00"),
            Ok(Span {
                start: 480,
                end: 1260
            })
        );
        assert_eq!(
            Span::parse("00:00", "24:00"),
            Ok(Span {
                start: 0,
                end: 1440
            })
        );
        assert!(Span::parse("24:00", "24:00").is_err());
        assert!(Span::parse("8:00", "21:00").is_err());
        assert!(Span::parse("21:00", "08:00").is_err());
        assert!(Span::parse("08:60", "09:00").is_err());
    }

    #[test]
    fn prefixes_and_their_candidates() {
        assert_eq!(parse_prefix("+86 138"), Ok("86138".to_owned()));
        assert!(parse_prefix("86138").is_err());
        assert!(parse_prefix("+").is_err());
        assert_eq!(prefixes("8613"), vec!["8", "86", "861", "8613"]);
    }
}
