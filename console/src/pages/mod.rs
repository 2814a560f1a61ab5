//! The pages, one module per area of the console.

pub mod calls;
pub mod collectors;
pub mod config;
pub mod live;
pub mod overview;
pub mod pool;
pub mod signin;
pub mod workbench;

/// A form body's fields in order (repeated names allowed, e.g. the pool's checkboxes).
#[derive(Debug, Default)]
pub struct Pairs(Vec<(String, String)>);

/// Parses an `application/x-www-form-urlencoded` body.
pub fn form_pairs(body: &str) -> Pairs {
    Pairs(
        url::form_urlencoded::parse(body.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    )
}

impl Pairs {
    /// The first value of `name`, or "".
    pub fn one(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A query-string value, encoded.
pub fn q(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_fields_are_kept() {
        let p = form_pairs("csrf=a&ext=1&ext=2&numbers=8001%0A80+02");
        assert_eq!(p.one("csrf"), "a");
        assert_eq!(p.all("ext"), vec!["1", "2"]);
        assert_eq!(p.one("numbers"), "8001\n80 02");
        assert_eq!(p.one("missing"), "");
        assert_eq!(q("a b&c"), "a+b%26c");
    }
}
