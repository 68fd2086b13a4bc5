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

/// Scopes (ADR 0031): a token may be confined to the devices a selector selects. Each list of
/// a selector is "any of" (tags: "all of"), an empty list "any", and the lists combine with AND.
pub mod scope {
    use crate::events::TargetSelector;

    /// What a device is, as a scope sees it.
    #[derive(Debug, Clone, Copy)]
    pub struct DeviceFacts<'a> {
        pub device_id: &'a str,
        pub model: &'a str,
        pub site: &'a str,
        pub tags: &'a [String],
        pub firmware_version: &'a str,
    }

    /// The values both lists allow; `None` when they allow none in common.
    fn both(a: &[String], b: &[String]) -> Option<Vec<String>> {
        match (a.is_empty(), b.is_empty()) {
            (true, _) => Some(b.to_vec()),
            (_, true) => Some(a.to_vec()),
            _ => {
                let common: Vec<String> = a.iter().filter(|v| b.contains(v)).cloned().collect();
                (!common.is_empty()).then_some(common)
            }
        }
    }

    /// The devices `selector` selects within `scope`, as one selector; `None` when no device
    /// can be in both (a rollout asked outside the scope).
    #[must_use]
    pub fn narrow(selector: &TargetSelector, scope: &TargetSelector) -> Option<TargetSelector> {
        let mut tags = selector.tags.clone();
        tags.extend(
            scope
                .tags
                .iter()
                .filter(|t| !selector.tags.contains(t))
                .cloned(),
        );
        Some(TargetSelector {
            models: both(&selector.models, &scope.models)?,
            sites: both(&selector.sites, &scope.sites)?,
            tags,
            current_versions: both(&selector.current_versions, &scope.current_versions)?,
            device_ids: both(&selector.device_ids, &scope.device_ids)?,
        })
    }

    /// Whether every device `selector` selects is within `scope` (a rollout a scoped token may
    /// act on).
    #[must_use]
    pub fn within(selector: &TargetSelector, scope: &TargetSelector) -> bool {
        let inside = |own: &[String], limit: &[String]| {
            limit.is_empty() || (!own.is_empty() && own.iter().all(|v| limit.contains(v)))
        };
        inside(&selector.models, &scope.models)
            && inside(&selector.sites, &scope.sites)
            && inside(&selector.current_versions, &scope.current_versions)
            && inside(&selector.device_ids, &scope.device_ids)
            && scope.tags.iter().all(|t| selector.tags.contains(t))
    }

    /// Whether `scope` selects the device.
    #[must_use]
    pub fn admits(scope: &TargetSelector, d: DeviceFacts<'_>) -> bool {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        any(&scope.models, d.model)
            && any(&scope.sites, d.site)
            && any(&scope.current_versions, d.firmware_version)
            && any(&scope.device_ids, d.device_id)
            && scope.tags.iter().all(|t| d.tags.contains(t))
    }

    /// Reads `model=…,site=…,tag=…,version=…,device=…` (each key repeatable: any of its
    /// values) as a selector, for the command line.
    pub fn parse(text: &str) -> Result<TargetSelector, String> {
        let mut s = TargetSelector::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .filter(|(_, v)| !v.is_empty())
                .ok_or_else(|| format!("{part:?} is not key=value"))?;
            let list = match key {
                "model" => &mut s.models,
                "site" => &mut s.sites,
                "tag" => &mut s.tags,
                "version" => &mut s.current_versions,
                "device" => &mut s.device_ids,
                _ => {
                    return Err(format!(
                        "{key:?} is not a scope key (model, site, tag, version, device)"
                    ))
                }
            };
            list.push(value.to_owned());
        }
        if s == TargetSelector::default() {
            return Err("a scope names at least one model, site, tag, version or device".into());
        }
        Ok(s)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn sel(text: &str) -> TargetSelector {
            parse(text).unwrap_or_default()
        }

        #[test]
        fn a_selector_is_narrowed_to_the_scope_or_found_outside_it() {
            let scope = sel("site=berlin,site=munich,tag=prod");
            assert_eq!(
                narrow(&sel("model=e2"), &scope),
                Some(sel("model=e2,site=berlin,site=munich,tag=prod"))
            );
            assert_eq!(
                narrow(&sel("site=munich,site=oslo,tag=eu"), &scope),
                Some(sel("site=munich,tag=eu,tag=prod"))
            );
            assert_eq!(narrow(&sel("site=oslo"), &scope), None);
            assert_eq!(narrow(&sel("device=d1"), &sel("device=d2")), None);
            assert_eq!(
                narrow(&sel("device=d1,device=d2"), &sel("device=d2")),
                Some(sel("device=d2"))
            );
            assert_eq!(
                narrow(&sel("version=1"), &sel("version=1")),
                Some(sel("version=1"))
            );
        }

        #[test]
        fn a_rollout_is_within_a_scope_only_if_every_device_it_selects_is() {
            let scope = sel("site=berlin,site=munich,tag=prod");
            assert!(within(&sel("site=berlin,tag=prod,model=e2"), &scope));
            assert!(within(
                &sel("site=berlin,site=munich,tag=prod,tag=eu"),
                &scope
            ));
            assert!(
                !within(&sel("site=berlin"), &scope),
                "without the scope's tag"
            );
            assert!(!within(&sel("model=e2,tag=prod"), &scope), "any site");
            assert!(!within(&sel("site=berlin,site=oslo,tag=prod"), &scope));
            assert!(within(&sel("device=d1"), &sel("device=d1,device=d2")));
            assert!(!within(&sel("device=d3"), &sel("device=d1,device=d2")));
            assert!(within(&sel("version=1"), &sel("version=1")));
            assert!(!within(&sel("version=2"), &sel("version=1")));
            assert!(!within(&sel("model=m"), &sel("version=1")));
        }

        #[test]
        fn a_scope_admits_the_devices_it_selects() {
            let tags = vec!["prod".to_owned(), "eu".to_owned()];
            let d = DeviceFacts {
                device_id: "d1",
                model: "e2",
                site: "berlin",
                tags: &tags,
                firmware_version: "1.0",
            };
            for (scope, admitted) in [
                ("site=berlin", true),
                ("site=munich", false),
                ("site=munich,site=berlin", true),
                ("tag=prod,tag=eu", true),
                ("tag=prod,tag=beta", false),
                ("model=e2,version=1.0", true),
                ("model=e3", false),
                ("version=2.0", false),
                ("device=d1", true),
                ("device=d2", false),
            ] {
                assert_eq!(admits(&sel(scope), d), admitted, "{scope}");
            }
        }

        #[test]
        fn scopes_read_from_text() {
            let s = parse(" site=berlin , tag=prod,site=munich").unwrap_or_default();
            assert_eq!(s.sites, ["berlin", "munich"]);
            assert_eq!(s.tags, ["prod"]);
            for bad in ["", "site", "site=", "color=red", ","] {
                assert!(parse(bad).is_err(), "{bad:?}");
            }
        }
    }
}
