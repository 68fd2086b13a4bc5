use serde_json::json;

use super::director::{DeviceTrust, DirectedTarget, Statement};
use super::metadata::{
    canonical, snapshot_json, targets_json, timestamp_json, Root, Signed, Target,
};
use super::{format_time, parse_time, SigningKey, TufError};

const NOW: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

fn key(n: u8) -> SigningKey {
    SigningKey::from_seed([n; 32]).unwrap_or_else(|e| panic!("{e}"))
}

fn root_v1(root: &SigningKey, targets: &SigningKey, online: &SigningKey) -> Signed {
    Signed::sign(
        Root::build(
            1,
            NOW + 365 * DAY,
            (&[root.public()], 1),
            (&[targets.public()], 1),
            online.public(),
        ),
        &[root],
    )
}

fn target(name: &str, length: u64) -> Target {
    Target {
        name: name.into(),
        length,
        sha256: "ab".repeat(32),
        custom: json!({"version": "2.0.0", "models": ["lift-x"], "hardware_revs": ["r2"]}),
    }
}

#[test]
fn canonical_json_sorts_keys_and_drops_whitespace() {
    let v = json!({"b": 1, "a": {"d": "x\"y", "c": [true, null]}});
    assert_eq!(
        canonical(&v),
        br#"{"a":{"c":[true,null],"d":"x\"y"},"b":1}"#.to_vec()
    );
}

#[test]
fn times_are_whole_utc_seconds() {
    assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
    assert_eq!(parse_time("2027-01-01T00:00:00Z"), Ok(1_798_761_600));
    assert!(parse_time("2027-01-01T00:00:00+01:00").is_err());
}

#[test]
fn a_key_file_round_trips_and_halves_must_match() {
    let k = key(1);
    let back = SigningKey::from_file(&k.to_file()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.public(), k.public());
    let other = key(2).public().to_tuf()["keyval"]["public"].clone();
    let mut v: serde_json::Value = serde_json::from_str(&k.to_file()).unwrap_or_default();
    v["keyval"]["public"] = other;
    assert!(SigningKey::from_file(&v.to_string()).is_err());
    assert!(!format!("{k:?}").contains(&k.to_file()[60..80]));
}

#[test]
fn a_first_root_must_be_signed_by_its_own_root_keys() {
    let (r, t, o) = (key(1), key(2), key(3));
    let good = root_v1(&r, &t, &o);
    let root = Root::accept(None, &good, NOW).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(root.version, 1);
    // Signed by the targets key instead: not a root.
    let wrong = Signed::sign(good.signed.clone(), &[&t]);
    assert!(matches!(
        Root::accept(None, &wrong, NOW),
        Err(TufError::Threshold { valid: 0, .. })
    ));
    // Expired at the boundary.
    assert!(matches!(
        Root::accept(None, &good, NOW + 365 * DAY),
        Err(TufError::Expired { .. })
    ));
    assert!(Root::accept(None, &good, NOW + 365 * DAY - 1).is_ok());
}

#[test]
fn a_rotated_root_needs_the_old_keys_and_the_new_and_the_next_version() {
    let (r, t, o, r2) = (key(1), key(2), key(3), key(4));
    let v1 = Root::accept(None, &root_v1(&r, &t, &o), NOW).unwrap_or_else(|e| panic!("{e}"));
    let body = |v| {
        Root::build(
            v,
            NOW + DAY,
            (&[r2.public()], 1),
            (&[t.public()], 1),
            o.public(),
        )
    };
    assert!(Root::accept(Some(&v1), &Signed::sign(body(2), &[&r, &r2]), NOW).is_ok());
    // The new key alone (a thief's root) and the old alone both fail.
    assert!(Root::accept(Some(&v1), &Signed::sign(body(2), &[&r2]), NOW).is_err());
    assert!(Root::accept(Some(&v1), &Signed::sign(body(2), &[&r]), NOW).is_err());
    assert!(matches!(
        Root::accept(Some(&v1), &Signed::sign(body(3), &[&r, &r2]), NOW),
        Err(TufError::Version { got: 3, .. })
    ));
}

#[test]
fn a_threshold_counts_distinct_keys() {
    let (r1, r2, t, o) = (key(1), key(2), key(3), key(4));
    let body = Root::build(
        1,
        NOW + DAY,
        (&[r1.public(), r2.public()], 2),
        (&[t.public()], 1),
        o.public(),
    );
    let twice = Signed::sign(body.clone(), &[&r1, &r1]);
    assert!(matches!(
        Root::accept(None, &twice, NOW),
        Err(TufError::Threshold {
            valid: 1,
            threshold: 2,
            ..
        })
    ));
    assert!(Root::accept(None, &Signed::sign(body, &[&r1, &r2]), NOW).is_ok());
    let over = Root::build(
        1,
        NOW + DAY,
        (&[r1.public()], 2),
        (&[t.public()], 1),
        o.public(),
    );
    assert!(matches!(
        Root::parse(&Signed::sign(over, &[&r1])),
        Err(TufError::Malformed { .. })
    ));
}

#[test]
fn a_key_id_must_be_its_keys_and_one_key_cannot_count_twice() {
    let (r1, t, o) = (key(1), key(3), key(4));
    let mut body = Root::build(
        1,
        NOW + DAY,
        (&[r1.public()], 1),
        (&[t.public()], 1),
        o.public(),
    );
    // The same key under a second id, and the root role asking for both: one holder, two votes.
    let alias = "0".repeat(64);
    body["keys"][&alias] = r1.public().to_tuf();
    body["roles"]["root"] = json!({"keyids": [r1.public().key_id(), alias], "threshold": 2});
    let twice = Signed::sign(body, &[&r1]);
    let mut both = twice.clone();
    both.signatures.push(super::metadata::Signature {
        keyid: "0".repeat(64),
        sig: twice.signatures[0].sig.clone(),
    });
    assert!(matches!(
        Root::accept(None, &both, NOW),
        Err(TufError::Malformed { .. })
    ));
}

#[test]
fn a_float_is_not_canonical_and_signs_nothing() {
    let t = key(2);
    let with_float = json!({"_type": "targets", "custom": {"x": 0.5}});
    assert!(Signed::sign(with_float.clone(), &[&t])
        .signatures
        .is_empty());
    // A signature over the empty bytes, as a careless signer would make it, verifies nothing.
    let (r, o) = (key(1), key(3));
    let root = Root::accept(None, &root_v1(&r, &t, &o), NOW).unwrap_or_else(|e| panic!("{e}"));
    let forged = Signed {
        signed: with_float,
        signatures: vec![super::metadata::Signature {
            keyid: t.public().key_id(),
            sig: t.sign(b""),
        }],
    };
    assert!(matches!(
        forged.verify(&root, "targets"),
        Err(TufError::Malformed { .. })
    ));
}

#[test]
fn a_chain_of_roots_checks_the_expiry_of_the_last_only() {
    let (r, t, o, r2) = (key(1), key(2), key(3), key(4));
    let v1 = Root::accept(None, &root_v1(&r, &t, &o), NOW).unwrap_or_else(|e| panic!("{e}"));
    let expired = Root::build(
        2,
        NOW - 1,
        (&[r2.public()], 1),
        (&[t.public()], 1),
        o.public(),
    );
    let v2 = Signed::sign(expired, &[&r, &r2]);
    assert!(matches!(
        Root::accept(Some(&v1), &v2, NOW),
        Err(TufError::Expired { .. })
    ));
    assert_eq!(Root::next(Some(&v1), &v2).map(|r| r.version), Ok(2));
}

#[test]
fn altered_targets_no_longer_verify() {
    let (r, t, o) = (key(1), key(2), key(3));
    let root = Root::accept(None, &root_v1(&r, &t, &o), NOW).unwrap_or_else(|e| panic!("{e}"));
    let mut m = Signed::sign(targets_json(1, NOW + DAY, &[target("a", 10)]), &[&t]);
    assert!(m.verify(&root, "targets").is_ok());
    assert!(Signed::sign(m.signed.clone(), &[&o])
        .verify(&root, "targets")
        .is_err());
    m.signed["targets"]["a"]["length"] = json!(11);
    assert!(m.verify(&root, "targets").is_err());
}

struct Repo {
    root: Root,
    timestamp: Signed,
    snapshot: Signed,
    targets: Signed,
    director: SigningKey,
}

fn repo() -> Repo {
    let (r, t, o) = (key(1), key(2), key(3));
    let root = Root::accept(None, &root_v1(&r, &t, &o), NOW).unwrap_or_else(|e| panic!("{e}"));
    Repo {
        root,
        targets: Signed::sign(targets_json(4, NOW + DAY, &[target("fw-2", 10)]), &[&t]),
        snapshot: Signed::sign(snapshot_json(7, NOW + DAY, 4), &[&o]),
        timestamp: Signed::sign(timestamp_json(9, NOW + DAY, 7), &[&o]),
        director: key(5),
    }
}

fn statement(device: &str, hw: &str, counter: u64, expires: i64) -> Statement {
    Statement {
        device_id: device.into(),
        target: DirectedTarget {
            name: "fw-2".into(),
            length: 10,
            sha256: "ab".repeat(32),
            hardware_id: hw.into(),
        },
        counter,
        expires,
    }
}

fn device(repo: &Repo, last: u64) -> DeviceTrust {
    DeviceTrust {
        device_id: "d-1".into(),
        hardware_id: "lift-x".into(),
        hardware_rev: Some("r2".into()),
        director: repo.director.public(),
        last_counter: last,
    }
}

#[test]
fn a_device_accepts_a_fresh_statement_for_itself_that_the_images_agree_with() {
    let r = repo();
    let text = statement("d-1", "lift-x", 6, NOW + 60).sign(&r.director);
    let st = device(&r, 5)
        .check_statement(&text, NOW)
        .unwrap_or_else(|e| panic!("{e}"));
    let t = device(&r, 5)
        .check_image(&r.root, &r.timestamp, &r.snapshot, &r.targets, &st, NOW)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.length, 10);
}

#[test]
fn a_device_refuses_replays_expired_foreign_and_forged_statements() {
    let r = repo();
    let d = device(&r, 5);
    let check = |s: Statement| d.check_statement(&s.sign(&r.director), NOW);
    assert!(
        matches!(check(statement("d-1", "lift-x", 5, NOW + 60)), Err(TufError::Mismatch(m)) if m.contains("replay"))
    );
    assert!(matches!(
        check(statement("d-1", "lift-x", 6, NOW)),
        Err(TufError::Expired { .. })
    ));
    assert!(check(statement("d-1", "lift-x", 6, NOW + 1)).is_ok());
    assert!(
        matches!(check(statement("d-2", "lift-x", 6, NOW + 60)), Err(TufError::Mismatch(m)) if m.contains("device d-2"))
    );
    assert!(
        matches!(check(statement("d-1", "lift-y", 6, NOW + 60)), Err(TufError::Mismatch(m)) if m.contains("hardware lift-y"))
    );
    let forged = statement("d-1", "lift-x", 6, NOW + 60).sign(&key(9));
    assert!(matches!(
        d.check_statement(&forged, NOW),
        Err(TufError::Threshold { .. })
    ));
    // A signed statement altered afterwards (another counter) fails its signature.
    let text = statement("d-1", "lift-x", 6, NOW + 60)
        .sign(&r.director)
        .replace("\"counter\":6", "\"counter\":60");
    assert!(d.check_statement(&text, NOW).is_err());
}

#[test]
fn a_device_refuses_images_the_repository_does_not_vouch_for() {
    let r = repo();
    let d = device(&r, 0);
    let st = statement("d-1", "lift-x", 1, NOW + 60);
    let check = |ts: &Signed, sn: &Signed, tg: &Signed, st: &Statement, now| {
        d.check_image(&r.root, ts, sn, tg, st, now)
    };
    // Expired timestamp: a frozen repository.
    assert!(matches!(
        check(&r.timestamp, &r.snapshot, &r.targets, &st, NOW + DAY),
        Err(TufError::Expired { .. })
    ));
    // A snapshot other than the one the timestamp names (mix-and-match of versions).
    let old_snapshot = Signed::sign(snapshot_json(6, NOW + DAY, 4), &[&key(3)]);
    assert!(matches!(
        check(&r.timestamp, &old_snapshot, &r.targets, &st, NOW),
        Err(TufError::Version { .. })
    ));
    // The director names a length the image repository did not sign.
    let mut longer = st.clone();
    longer.target.length = 11;
    assert!(matches!(
        check(&r.timestamp, &r.snapshot, &r.targets, &longer, NOW),
        Err(TufError::Mismatch(_))
    ));
    let mut other = st.clone();
    other.target.name = "fw-3".into();
    assert!(check(&r.timestamp, &r.snapshot, &r.targets, &other, NOW).is_err());
    // Hardware the target is not signed for: another model, another revision.
    let mut d2 = device(&r, 0);
    d2.hardware_rev = Some("r1".into());
    assert!(d2
        .check_image(&r.root, &r.timestamp, &r.snapshot, &r.targets, &st, NOW)
        .is_err());
    d2.hardware_rev = None;
    assert!(d2
        .check_image(&r.root, &r.timestamp, &r.snapshot, &r.targets, &st, NOW)
        .is_err());
    d2.hardware_id = "lift-y".into();
    d2.hardware_rev = Some("r2".into());
    assert!(d2
        .check_image(&r.root, &r.timestamp, &r.snapshot, &r.targets, &st, NOW)
        .is_err());
    // Targets signed by the online key instead of the release key.
    let forged = Signed::sign(r.targets.signed.clone(), &[&key(3)]);
    assert!(matches!(
        check(&r.timestamp, &r.snapshot, &forged, &st, NOW),
        Err(TufError::Threshold { .. })
    ));
}
