//! Bearer tokens, their scopes and project limits.
//!
//! Two sources, both from the MVP: `WEBHOOK_TOKEN` (one token, every scope,
//! every project) and `WEBHOOK_TOKENS` (`token=proj1|proj2,token2=*`). orch
//! extends an entry with an optional scope list after a colon,
//! `token=proj1|proj2:submit+read+admin`; an entry without one keeps the
//! MVP's meaning, `submit` and `read` for the listed projects.
//!
//! Tokens are never stored or compared in the clear: each is kept as its
//! SHA-256 digest and a presented token is hashed and compared against
//! *every* configured digest in constant time, so neither the position of
//! the first differing byte nor which entry matched shows in the timing.
//! Logs and metrics name a token only by its [`Principal::name`], a short
//! fingerprint that cannot be turned back into the token.

use crate::crypto::{ct_eq, hex, sha256};
use contracts::env::{self as ev, ConfigError};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Submit,
    Read,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// Projects a token is limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Projects {
    All,
    Only(Vec<String>),
}

impl Projects {
    /// Whether a job with `project_id` is within this limit. A job without
    /// a project is only within `All`.
    pub fn allows(&self, project_id: Option<&str>) -> bool {
        match (self, project_id) {
            (Projects::All, _) => true,
            (Projects::Only(list), Some(p)) => list.iter().any(|x| x == p),
            (Projects::Only(_), None) => false,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// A fingerprint safe to log (`tok-1a2b3c4d`), or `github` for signed
    /// GitHub deliveries.
    pub name: String,
    pub scopes: Vec<Scope>,
    pub projects: Projects,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

#[derive(Clone)]
struct TokenEntry {
    digest: [u8; 32],
    principal: Principal,
}

/// Every configured token, as digests.
#[derive(Clone, Default)]
pub struct TokenSet {
    entries: Vec<TokenEntry>,
    /// `WEBHOOK_TOKEN` is the well-known `dev-token`.
    pub is_dev_token: bool,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: digests are not secrets, but nothing is gained by
        // printing them.
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.principal.name))
            .finish()
    }
}

fn fingerprint(token: &str) -> String {
    format!("tok-{}", &hex(&sha256(token.as_bytes()))[..8])
}

impl TokenSet {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The principal of a presented token, or `None`. Always looks at every
    /// entry, so the time taken does not depend on which one matches.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let digest = sha256(presented.as_bytes());
        let mut found: Option<&TokenEntry> = None;
        for e in &self.entries {
            if ct_eq(&e.digest, &digest) && found.is_none() {
                found = Some(e);
            }
        }
        found.map(|e| e.principal.clone())
    }
}

/// Parses `WEBHOOK_TOKEN` and `WEBHOOK_TOKENS`. Errors never quote a token.
pub fn parse_tokens(single: Option<&str>, list: Option<&str>) -> Result<TokenSet, ConfigError> {
    let mut set = TokenSet::default();
    if let Some(tok) = single.map(str::trim).filter(|t| !t.is_empty()) {
        set.is_dev_token = tok == "dev-token";
        set.entries.push(TokenEntry {
            digest: sha256(tok.as_bytes()),
            principal: Principal {
                name: fingerprint(tok),
                scopes: vec![Scope::Submit, Scope::Read, Scope::Admin],
                projects: Projects::All,
            },
        });
    }
    for (i, item) in list
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
    {
        let bad = |why: &str| ConfigError::Invalid {
            var: ev::WEBHOOK_TOKENS.name,
            value: "<hidden>".into(),
            expected: format!("entry {} to be token=projects[:scopes]: {why}", i + 1),
        };
        // The token is everything before the last '=': base64 tokens may
        // end in '=' padding, project lists never contain one.
        let (token, spec) = item.rsplit_once('=').ok_or_else(|| bad("no '='"))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(bad("empty token"));
        }
        let (projects, scopes) = match spec.split_once(':') {
            Some((p, s)) => (p.trim(), Some(s.trim())),
            None => (spec.trim(), None),
        };
        let projects = if projects == "*" {
            Projects::All
        } else {
            let list: Vec<String> = projects
                .split('|')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            if list.is_empty()
                || !list
                    .iter()
                    .all(|p| contracts::validate::is_valid_project_id(p))
            {
                return Err(bad("projects must be * or proj1|proj2"));
            }
            Projects::Only(list)
        };
        let scopes = match scopes {
            None => vec![Scope::Submit, Scope::Read],
            Some(s) => {
                let mut out = Vec::new();
                for word in s.split('+').map(str::trim) {
                    out.push(match word {
                        "submit" => Scope::Submit,
                        "read" => Scope::Read,
                        "admin" => Scope::Admin,
                        _ => return Err(bad("scopes are submit, read, admin joined by '+'")),
                    });
                }
                out
            }
        };
        let digest = sha256(token.as_bytes());
        if set.entries.iter().any(|e| e.digest == digest) {
            return Err(bad("the same token appears twice"));
        }
        set.entries.push(TokenEntry {
            digest,
            principal: Principal {
                name: fingerprint(token),
                scopes,
                projects,
            },
        });
    }
    Ok(set)
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let tok = rest.trim();
    (!tok.is_empty()).then_some(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mvp_and_scoped_entries() {
        let set = parse_tokens(
            Some("dev-token"),
            Some("aa11==proj1|proj2, bb22=*:read ,cc33=*:submit+read+admin"),
        )
        .unwrap();
        assert!(set.is_dev_token);
        assert_eq!(set.len(), 4);
        let a = set.authenticate("aa11=").unwrap();
        assert_eq!(a.scopes, vec![Scope::Submit, Scope::Read]);
        assert!(a.projects.allows(Some("proj2")));
        assert!(!a.projects.allows(Some("proj3")));
        assert!(!a.projects.allows(None));
        let b = set.authenticate("bb22").unwrap();
        assert!(b.has(Scope::Read) && !b.has(Scope::Submit));
        assert!(set.authenticate("cc33").unwrap().has(Scope::Admin));
        assert!(set.authenticate("nope").is_none());
        assert!(set.authenticate("").is_none());
    }

    #[test]
    fn errors_never_quote_tokens() {
        for bad in ["secret-token", "s3cr3t=", "s3cr3t=p1:write", "s3cr3t=../x"] {
            let e = parse_tokens(None, Some(bad)).unwrap_err().to_string();
            assert!(!e.contains("s3cr3t") && !e.contains("secret-token"), "{e}");
        }
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer   abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
