//! Who may do what: the roles of API tokens and device credentials (`../shared/TRUST.md`).

use std::str::FromStr;

/// A principal's role. Operator roles are ordered, each allowing what the ones before it do:
/// `viewer` reads; `operator` also requests, pauses, resumes and aborts rollouts; `approver`
/// also approves rollouts that need a second person; `admin` also manages tokens and devices.
/// `device` and `gateway` stand apart: a device's credential allows only its own reports, a
/// gateway's only its own batches (over AMQP, as its own RabbitMQ user: ADR 0029).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Viewer,
    Operator,
    Approver,
    Admin,
    Device,
    Gateway,
}

impl Role {
    /// Every role, operator roles from least to most allowed.
    pub const ALL: [Role; 6] = [
        Role::Viewer,
        Role::Operator,
        Role::Approver,
        Role::Admin,
        Role::Device,
        Role::Gateway,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Device => "device",
            Role::Gateway => "gateway",
        }
    }

    /// The rank among operator roles; `None` for a device or a gateway.
    fn rank(self) -> Option<u8> {
        match self {
            Role::Viewer => Some(0),
            Role::Operator => Some(1),
            Role::Approver => Some(2),
            Role::Admin => Some(3),
            Role::Device | Role::Gateway => None,
        }
    }

    /// Whether a principal of this role may use a route that needs `required`.
    #[must_use]
    pub fn allows(self, required: Role) -> bool {
        match (self.rank(), required.rank()) {
            (Some(have), Some(need)) => have >= need,
            // A device's routes are a device's alone, and a gateway's a gateway's.
            (None, None) => self == required,
            _ => false,
        }
    }
}

/// A word that is not a role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a role (viewer, operator, approver, admin, device or gateway)")]
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
        assert_eq!(allowed(Gateway), [Gateway]);
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
