//! Roles and what each may do (API.md, "Keys and roles").
//!
//! Routes name one [`Capability`]; a key's [`Role`] grants a fixed set of
//! them. This table is the one place that decides access.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Event types, sources, imports, ingest.
    Ops,
    /// Writes segments, experiments and metrics; reads everything.
    Editor,
    /// Reads everything (including queries and results), writes nothing.
    Viewer,
    /// Writes users and events.
    Ingest,
    /// Per-user evaluation endpoints, OFREP, and writing events.
    Sdk,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Admin,
        Role::Ops,
        Role::Editor,
        Role::Viewer,
        Role::Ingest,
        Role::Sdk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Ops => "ops",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
            Role::Ingest => "ingest",
            Role::Sdk => "sdk",
        }
    }

    pub fn can(self, capability: Capability) -> bool {
        use Capability::*;
        use Role::*;
        match capability {
            ManageKeys => self == Admin,
            ManageSchemas => matches!(self, Admin | Ops),
            WriteUsers => matches!(self, Admin | Ops | Ingest),
            WriteEvents => matches!(self, Admin | Ops | Ingest | Sdk),
            ReadIngest => matches!(self, Admin | Ops | Editor | Viewer),
            ReadSchemas => matches!(self, Admin | Ops | Editor | Viewer),
            Read => matches!(self, Admin | Editor | Viewer),
            EditConfig => matches!(self, Admin | Editor),
            Evaluate => matches!(self, Admin | Editor | Viewer | Sdk),
            ReadAudit => self == Admin,
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role '{s}' (admin, ops, editor, viewer, ingest, sdk)"))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// Create, list, revoke API keys.
    ManageKeys,
    /// Declare event types and the attribute schema.
    ManageSchemas,
    /// Create, replace, merge, erase users.
    WriteUsers,
    /// Send events and orders.
    WriteEvents,
    /// Ingestion status per source.
    ReadIngest,
    /// Read event types and the attribute schema.
    ReadSchemas,
    /// Read users, events, segments, experiments, results.
    Read,
    /// Write segments, experiments, metrics.
    EditConfig,
    /// Per-user evaluation (a user's experiments, OFREP).
    Evaluate,
    /// Read the audit log.
    ReadAudit,
}

impl Capability {
    pub const ALL: [Capability; 10] = [
        Capability::ManageKeys,
        Capability::ManageSchemas,
        Capability::WriteUsers,
        Capability::WriteEvents,
        Capability::ReadIngest,
        Capability::ReadSchemas,
        Capability::Read,
        Capability::EditConfig,
        Capability::Evaluate,
        Capability::ReadAudit,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_can_do_everything_and_viewer_writes_nothing() {
        use Capability::*;
        assert!(Capability::ALL.iter().all(|c| Role::Admin.can(*c)));
        for write in [
            ManageKeys,
            ManageSchemas,
            WriteUsers,
            WriteEvents,
            EditConfig,
        ] {
            assert!(!Role::Viewer.can(write), "{write:?}");
        }
        assert!(Role::Sdk.can(WriteEvents) && !Role::Sdk.can(WriteUsers) && !Role::Sdk.can(Read));
        assert!(Role::Ingest.can(WriteUsers) && !Role::Ingest.can(Read));
    }

    #[test]
    fn roles_parse_from_their_names_only() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
