//! Scopes as stored and shown: sorted, deduplicated, space-separated (oxide-auth's `Scope`
//! is a hash set whose printed order changes from run to run).

use oxide_auth::primitives::scope::Scope;

pub fn normalize<'a>(tokens: impl IntoIterator<Item = &'a str>) -> String {
    let mut tokens: Vec<&str> = tokens.into_iter().filter(|t| !t.is_empty()).collect();
    tokens.sort_unstable();
    tokens.dedup();
    tokens.join(" ")
}

pub fn to_string(scope: &Scope) -> String {
    normalize(scope.iter())
}

pub fn parse(text: &str) -> Option<Scope> {
    text.parse().ok()
}

/// Whether every token of `requested` is in `granted` (both space-separated).
pub fn covers(granted: &str, requested: &str) -> bool {
    requested
        .split(' ')
        .filter(|t| !t.is_empty())
        .all(|t| granted.split(' ').any(|g| g == t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_scopes_are_sorted_and_unique() {
        assert_eq!(normalize("write read read".split(' ')), "read write");
        assert_eq!(to_string(&"b a".parse().unwrap()), "a b");
        assert!(covers("openid read write", "read openid"));
        assert!(!covers("read", "read write"));
        assert!(covers("read", ""));
    }
}
