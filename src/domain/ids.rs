//! Integration names and connection ids, with the contract's character rules.
//!
//! Both are safe as Table Storage keys (no `/`, `\`, `#`, `?`, `'` or control
//! characters) and in URLs, so they are used verbatim as PartitionKey/RowKey.

use std::fmt;

/// Why a name was refused; the message is safe to show to a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(&'static str);

/// An integration: one OAuth app at one vendor. `[a-z0-9][a-z0-9-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IntegrationName(String);

/// A connection: one consented grant of an integration. `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(String);

impl IntegrationName {
    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        let ok = matches!(s.as_bytes().first(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.len() <= 63
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidName(
                "integration names are 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl ConnectionId {
    pub const DEFAULT: &'static str = "default";

    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        let ok = matches!(s.as_bytes().first(), Some(c) if c.is_ascii_alphanumeric())
            && s.len() <= 128
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidName(
                "connection ids are 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IntegrationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integration_names_follow_the_contract() {
        for good in ["a", "0", "xero", "quick-books-2", &"a".repeat(63)] {
            assert!(IntegrationName::parse(good).is_ok(), "{good} should parse");
        }
        for bad in [
            "",
            "-a",
            "Xero",
            "a_b",
            "a.b",
            "a/b",
            "a'b",
            &"a".repeat(64),
        ] {
            assert!(
                IntegrationName::parse(bad).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn connection_ids_follow_the_contract() {
        for good in ["default", "A", "acme.co_uk-1", &"x".repeat(128)] {
            assert!(ConnectionId::parse(good).is_ok(), "{good} should parse");
        }
        for bad in [
            "",
            ".a",
            "_a",
            "a b",
            "a/b",
            "a'b",
            "a#b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(ConnectionId::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
