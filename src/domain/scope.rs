//! Scope strings (RFC 6749 §3.3): the broker stores them space-separated,
//! whatever separator the vendor uses on the wire.

/// A vendor's scope answer, space-separated (some vendors answer with commas).
pub fn normalize(scope: &str) -> String {
    scope.replace(',', " ")
}

/// Requested scopes as stored when the vendor does not echo them.
pub fn join(scopes: &[String]) -> String {
    scopes.join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn commas_become_spaces() {
        assert_eq!(super::normalize("a,b c"), "a b c");
        assert_eq!(super::join(&["a".into(), "b".into()]), "a b");
    }
}
