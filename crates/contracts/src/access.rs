//! What a step may do to its workspace: `access: read` (look only) or
//! `access: write` (change files). Every agent integration derives its tool
//! restrictions and sandbox mode from [`Step::access`](crate::Step::access),
//! never from the role's wording.
//!
//! A step without an explicit `access` gets the access of its role from
//! [`ROLE_ACCESS`], an exact table (ASCII case-insensitive, surrounding
//! spaces ignored); **any role not in the table is read-only**. A misspelt
//! role (`reviwer`) therefore never gains write access, and a role that
//! merely contains a word (`code reviewer`) is not mistaken for another.
//! Normalisation writes the resulting value into every step, so a stored
//! job says explicitly what each step may do.

use serde::{Deserialize, Serialize};

/// A step's access to its workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Read the workspace; change nothing.
    Read,
    /// Read and change the workspace.
    Write,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            _ => None,
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The default access of each known role (documented in
/// docs/SECURITY.md). Anything else is [`Access::Read`].
pub const ROLE_ACCESS: &[(&str, Access)] = &[
    ("planner", Access::Read),
    ("architect", Access::Read),
    ("analyst", Access::Read),
    ("reviewer", Access::Read),
    ("auditor", Access::Read),
    ("critic", Access::Read),
    ("qa", Access::Read),
    ("implementer", Access::Write),
    ("coder", Access::Write),
    ("developer", Access::Write),
    ("engineer", Access::Write),
    ("fixer", Access::Write),
];

/// The access a step with `role` and no explicit `access` gets.
pub fn default_access(role: &str) -> Access {
    let role = role.trim();
    ROLE_ACCESS
        .iter()
        .find(|(r, _)| r.eq_ignore_ascii_case(role))
        .map_or(Access::Read, |(_, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_roles_of_the_table_get_write() {
        assert_eq!(default_access("implementer"), Access::Write);
        assert_eq!(default_access(" Implementer "), Access::Write);
        assert_eq!(default_access("reviewer"), Access::Read);
        // Misspelt, unknown or merely similar roles are read-only.
        for role in [
            "reviwer",
            "implementor",
            "senior implementer",
            "code",
            "",
            "root",
        ] {
            assert_eq!(default_access(role), Access::Read, "{role:?}");
        }
    }
}
