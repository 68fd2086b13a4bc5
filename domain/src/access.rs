//! Who may do what: the roles of API tokens and device credentials (`../shared/TRUST.md`).

use std::str::FromStr;

/// A principal's role. Operator roles are ordered, each allowing what the ones before it do:
/// `viewer` reads; `operator` also requests, pauses, resumes and aborts rollouts; `approver`
/// also approves rollouts that need a second person; `admin` also manages tokens and devices.
/// `device` stands apart: a device's credential allows only its own reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Viewer,
    Operator,
    Approver,
    Admin,
    Device,
}

impl Role {
    /// Every role, operator roles from least to most allowed.
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Operator,
        Role::Approver,
        Role::Admin,
        Role::Device,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Device => "device",
        }
    }

    /// The rank among operator roles; `None` for a device.
    fn rank(self) -> Option<u8> {
        match self {
            Role::Viewer => Some(0),
            Role::Operator => Some(1),
            Role::Approver => Some(2),
            Role::Admin => Some(3),
            Role::Device => None,
        }
    }

    /// Whether a principal of this role may use a route that needs `required`.
    #[must_use]
    pub fn allows(self, required: Role) -> bool {
        match (self.rank(), required.rank()) {
            (Some(have), Some(need)) => have >= need,
            (None, None) => true,
            _ => false,
        }
    }
}

/// A word that is not a role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a role (viewer, operator, approver, admin or device)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_roles_allow_what_the_ones_below_allow_and_devices_only_device_routes() {
        use Role::*;
        let allowed = |have: Role| -> Vec<Role> {
            Role::ALL
                .into_iter()
                .filter(|need| have.allows(*need))
                .collect()
        };
        assert_eq!(allowed(Viewer), [Viewer]);
        assert_eq!(allowed(Operator), [Viewer, Operator]);
        assert_eq!(allowed(Approver), [Viewer, Operator, Approver]);
        assert_eq!(allowed(Admin), [Viewer, Operator, Approver, Admin]);
        assert_eq!(allowed(Device), [Device]);
    }

    #[test]
    fn roles_read_and_print_by_name() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(r.to_string(), r.as_str());
        }
        assert_eq!("root".parse::<Role>(), Err(UnknownRole("root".into())));
        assert_eq!("Admin".parse::<Role>(), Err(UnknownRole("Admin".into())));
    }
}
