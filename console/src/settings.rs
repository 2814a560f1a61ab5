//! The console's settings: serde defaults, then `CONSOLE_CONFIG_FILE` (TOML), then `CONSOLE__*`
//! environment variables (double underscores separate levels).

use cco_platform::config::check_range;
use cco_platform::telemetry::LogSettings;
use cco_platform::tls::ClientTls;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Everything the console reads at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the console listens.
    pub http: HttpSettings,
    /// The URL people open (`https://console.example.com`); `https://` makes the session
    /// cookie `Secure`, and form posts must come from this origin.
    pub public_url: String,
    /// The gateway's gRPC endpoint.
    pub gateway: Upstream,
    /// The allocator's gRPC endpoint.
    pub allocator: Upstream,
    /// The session cookie.
    pub session: SessionSettings,
    /// The gateway's public HTTP base URL, shown to administrators as the start of the callback
    /// URL to give Infinity (`https://cco-gateway.example.com`); empty: "not configured".
    pub callback_base_url: String,
    /// Deadline of one call to a service, in milliseconds (1,000-120,000).
    pub request_timeout_ms: u64,
    /// The claims of a person's token the console reads to choose the menu (the same names as
    /// the services' `*__AUTH__JWT__*_CLAIM` settings).
    pub claims: ClaimNames,
    /// Logging.
    pub log: LogSettings,
}

/// Names of the claims of a person's token.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClaimNames {
    /// The tenants (a list, or a string separated by commas or spaces).
    pub tenants: String,
    /// The role: admin, supervisor or collector.
    pub role: String,
    /// A collector's id.
    pub collector: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            tenants: "tenants".into(),
            role: "role".into(),
            collector: "collector_id".into(),
        }
    }
}

/// The listening address.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Interface (`0.0.0.0` in a container).
    pub host: String,
    /// Port.
    pub port: u16,
}

/// One service the console calls.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Upstream {
    /// `http://host:port`, or `https://` with `tls.ca_path`.
    pub url: String,
    /// TLS to the service.
    pub tls: ClientTls,
}

/// The session cookie.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    /// At least 32 bytes; encrypts and authenticates the cookie. Every replica needs the same.
    pub secret: SecretString,
    /// How long a sign-in lasts at most (a token that expires sooner ends it sooner): 5-10,080.
    pub ttl_minutes: u64,
}

impl std::fmt::Debug for SessionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSettings")
            .field("secret", &"[redacted]")
            .field("ttl_minutes", &self.ttl_minutes)
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http: HttpSettings {
                host: "127.0.0.1".into(),
                port: 8081,
            },
            public_url: "http://127.0.0.1:8081".into(),
            gateway: Upstream {
                url: "http://127.0.0.1:50052".into(),
                tls: ClientTls::default(),
            },
            allocator: Upstream {
                url: "http://127.0.0.1:50051".into(),
                tls: ClientTls::default(),
            },
            session: SessionSettings::default(),
            callback_base_url: String::new(),
            request_timeout_ms: 10_000,
            claims: ClaimNames::default(),
            log: LogSettings::default(),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Settings::default().http
    }
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            secret: SecretString::from(""),
            ttl_minutes: 480,
        }
    }
}

/// The shortest session secret accepted.
pub const MIN_SECRET_BYTES: usize = 32;

impl Settings {
    /// Loads and validates the settings.
    ///
    /// # Errors
    /// Names the offending setting.
    pub fn load() -> anyhow::Result<Self> {
        let s: Self = cco_platform::config::load("CONSOLE")?;
        s.validate()?;
        Ok(s)
    }

    /// Checks every value; errors name the setting.
    ///
    /// # Errors
    /// The first bad value.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.http.host.is_empty() {
            anyhow::bail!("http.host: must not be empty");
        }
        let public = url::Url::parse(&self.public_url)
            .map_err(|e| anyhow::anyhow!("public_url: not a URL ({e})"))?;
        if !matches!(public.scheme(), "http" | "https")
            || public.host_str().is_none()
            || public.path() != "/"
            || public.query().is_some()
            || !public.username().is_empty()
        {
            anyhow::bail!(
                "public_url: must be http(s)://host[:port] with no path, e.g. https://console.example.com"
            );
        }
        for (name, up) in [("gateway", &self.gateway), ("allocator", &self.allocator)] {
            if !(up.url.starts_with("http://") || up.url.starts_with("https://"))
                || up.url.parse::<http::Uri>().is_err()
            {
                anyhow::bail!(
                    "{name}.url: must be an http:// or https:// URL, got {:?}",
                    up.url
                );
            }
            up.tls.validate(&format!("{name}.tls"), &up.url)?;
        }
        if self.session.secret.expose_secret().len() < MIN_SECRET_BYTES {
            anyhow::bail!(
                "session.secret: must be at least {MIN_SECRET_BYTES} bytes (set CONSOLE__SESSION__SECRET; every replica needs the same)"
            );
        }
        check_range("session.ttl_minutes", self.session.ttl_minutes, 5, 10_080)?;
        check_range(
            "request_timeout_ms",
            self.request_timeout_ms,
            1_000,
            120_000,
        )?;
        for (field, name) in [
            ("claims.tenants", &self.claims.tenants),
            ("claims.role", &self.claims.role),
            ("claims.collector", &self.claims.collector),
        ] {
            if name.trim().is_empty() {
                anyhow::bail!("{field}: must name a claim");
            }
        }
        let cb = self.callback_base_url.trim_end_matches('/');
        if !cb.is_empty() {
            let u = url::Url::parse(cb)
                .map_err(|e| anyhow::anyhow!("callback_base_url: not a URL ({e})"))?;
            if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                anyhow::bail!("callback_base_url: must be an http(s) URL");
            }
        }
        self.log.validate("log")?;
        Ok(())
    }

    /// Whether cookies get the `Secure` attribute.
    pub fn secure_cookies(&self) -> bool {
        self.public_url.starts_with("https://")
    }

    /// The origin form posts must come from (`scheme://host[:port]`, as browsers send it:
    /// lowercase host, no default port).
    pub fn origin(&self) -> String {
        url::Url::parse(&self.public_url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Settings {
        let mut s = Settings::default();
        s.session.secret = SecretString::from("0123456789abcdef0123456789abcdef");
        s
    }

    #[test]
    fn defaults_need_only_a_secret() {
        assert!(valid().validate().is_ok());
        let err = Settings::default().validate().expect_err("no secret");
        assert!(err.to_string().starts_with("session.secret:"), "{err}");
    }

    #[test]
    fn bad_values_name_their_setting() {
        type Change = Box<dyn Fn(&mut Settings)>;
        let cases: Vec<(&str, Change)> = vec![
            ("public_url:", Box::new(|s| s.public_url = "ftp://x".into())),
            (
                "public_url:",
                Box::new(|s| s.public_url = "https://x/console".into()),
            ),
            (
                "gateway.url:",
                Box::new(|s| s.gateway.url = "localhost:1".into()),
            ),
            (
                "allocator.tls.ca_path:",
                Box::new(|s| s.allocator.url = "https://a:1".into()),
            ),
            (
                "session.ttl_minutes:",
                Box::new(|s| s.session.ttl_minutes = 1),
            ),
            (
                "request_timeout_ms:",
                Box::new(|s| s.request_timeout_ms = 0),
            ),
            (
                "callback_base_url:",
                Box::new(|s| s.callback_base_url = "javascript:x".into()),
            ),
            ("http.host:", Box::new(|s| s.http.host.clear())),
            ("claims.role:", Box::new(|s| s.claims.role.clear())),
        ];
        for (prefix, change) in cases {
            let mut s = valid();
            change(&mut s);
            let err = s.validate().expect_err(prefix).to_string();
            assert!(err.starts_with(prefix), "{prefix}: {err}");
        }
    }

    #[test]
    fn secure_cookies_follow_the_public_url() {
        let mut s = valid();
        assert!(!s.secure_cookies());
        s.public_url = "https://Console.Example.com:443/".into();
        assert!(s.secure_cookies());
        assert_eq!(s.origin(), "https://console.example.com");
    }
}
