use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::tuf::metadata::{targets_json, Root, Signed};
use crate::tuf::SigningKey;

const NOW: i64 = 1_800_000_000;

fn reg(id: &str) -> RegisterIn {
    RegisterIn {
        release_id: id.into(),
        version: "2.0.0".into(),
        models: vec!["lift-x".into()],
        hardware_revs: vec![],
        sha256: "AB".repeat(32),
        length: 10,
        notes: String::new(),
    }
}

fn key(n: u8) -> SigningKey {
    SigningKey::from_seed([n; 32]).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_registration_checks_every_field() {
    let r = reg("fw-2.0.0")
        .parse("alice")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.sha256, "ab".repeat(32), "digests are kept in lowercase");
    assert_eq!(r.registered_by, "alice");
    let bad = |f: &dyn Fn(&mut RegisterIn)| {
        let mut r = reg("fw");
        f(&mut r);
        r.parse("a").unwrap_err()
    };
    assert_eq!(bad(&|r| r.release_id = "-fw".into()), ReleaseError::Id);
    assert_eq!(bad(&|r| r.release_id = "f/w".into()), ReleaseError::Id);
    assert_eq!(bad(&|r| r.release_id = "f".repeat(65)), ReleaseError::Id);
    assert!(reg(&"f".repeat(64)).parse("a").is_ok());
    assert!(matches!(
        bad(&|r| r.version = "2.0".into()),
        ReleaseError::Version(_)
    ));
    assert!(matches!(
        bad(&|r| r.sha256 = "ab".into()),
        ReleaseError::Sha256(_)
    ));
    assert_eq!(bad(&|r| r.length = 0), ReleaseError::Length);
    assert!(reg("fw").parse("a").is_ok_and(|r| r.length == 10));
    assert_eq!(bad(&|r| r.models.clear()), ReleaseError::Names("models"));
    assert_eq!(
        bad(&|r| r.models.push("lift-x".into())),
        ReleaseError::Names("models")
    );
    assert_eq!(
        bad(&|r| r.hardware_revs = vec!["a\u{0}".into()]),
        ReleaseError::Names("hardware_revs")
    );
    assert_eq!(
        bad(&|r| r.hardware_revs = vec![" ".into()]),
        ReleaseError::Names("hardware_revs")
    );
    assert_eq!(
        bad(&|r| r.hardware_revs = vec!["r".into(); 2]),
        ReleaseError::Names("hardware_revs")
    );
    assert_eq!(
        bad(&|r| r.models = (0..65).map(|i| i.to_string()).collect()),
        ReleaseError::Names("models")
    );
    assert!(reg("fw").parse("a").is_ok());
    let mut most = reg("fw");
    most.models = (0..64).map(|i| i.to_string()).collect();
    most.hardware_revs = vec!["\u{1b}r".into(), "x".repeat(128)];
    assert!(
        most.parse("a").is_ok(),
        "64 models, control characters but NUL, 128 characters"
    );
    assert_eq!(
        bad(&|r| r.models = vec!["x".repeat(129)]),
        ReleaseError::Names("models")
    );
    assert_eq!(bad(&|r| r.notes = "x\u{0}".into()), ReleaseError::Notes);
}

#[test]
fn states_only_go_forward() {
    use ReleaseState::{Deprecated, Draft, Published};
    assert_eq!(Draft.to(Published), Ok(Published));
    assert_eq!(Draft.to(Deprecated), Ok(Deprecated));
    assert_eq!(Published.to(Deprecated), Ok(Deprecated));
    for (a, b) in [
        (Published, Draft),
        (Deprecated, Published),
        (Published, Published),
        (Deprecated, Deprecated),
        (Draft, Draft),
    ] {
        assert!(a.to(b).is_err(), "{a} → {b}");
    }
    for s in [Draft, Published, Deprecated] {
        assert_eq!(ReleaseState::parse(s.as_str()), Some(s));
    }
}

struct Repo {
    root: Root,
    targets_key: SigningKey,
}

fn repo() -> Repo {
    let (r, t, o) = (key(1), key(2), key(3));
    let body = Root::build(
        1,
        NOW + 1000,
        (&[r.public()], 1),
        (&[t.public()], 1),
        o.public(),
    );
    let root =
        Root::accept(None, &Signed::sign(body, &[&r]), NOW).unwrap_or_else(|e| panic!("{e}"));
    Repo {
        root,
        targets_key: t,
    }
}

#[test]
fn only_targets_signed_by_the_release_keys_that_list_the_release_exactly_publish_it() {
    let repo = repo();
    let r = reg("fw-2").parse("a").unwrap_or_else(|e| panic!("{e}"));
    let signed =
        |ts: &[Target], v, k: &SigningKey| Signed::sign(targets_json(v, NOW + 100, ts), &[k]);
    let ok = signed(&[target(&r)], 1, &repo.targets_key);
    assert_eq!(check_targets(&r, &ok, &repo.root, None, NOW), Ok(1));
    // Wrongly signed (the online key), or not signed at all.
    assert!(matches!(
        check_targets(
            &r,
            &signed(&[target(&r)], 1, &key(3)),
            &repo.root,
            None,
            NOW
        ),
        Err(TufError::Threshold { .. })
    ));
    let mut unsigned = ok.clone();
    unsigned.signatures.clear();
    assert!(check_targets(&r, &unsigned, &repo.root, None, NOW).is_err());
    // A target that says another length, or another model.
    let mut t = target(&r);
    t.length = 11;
    assert!(matches!(
        check_targets(
            &r,
            &signed(&[t], 1, &repo.targets_key),
            &repo.root,
            None,
            NOW
        ),
        Err(TufError::Mismatch(_))
    ));
    let mut t = target(&r);
    t.custom["models"] = json!(["lift-y"]);
    assert!(matches!(
        check_targets(
            &r,
            &signed(&[t], 1, &repo.targets_key),
            &repo.root,
            None,
            NOW
        ),
        Err(TufError::Mismatch(_))
    ));
    assert!(check_targets(
        &r,
        &signed(&[], 1, &repo.targets_key),
        &repo.root,
        None,
        NOW
    )
    .is_err());
    // Not the next version; expired.
    assert!(matches!(
        check_targets(
            &r,
            &signed(&[target(&r)], 2, &repo.targets_key),
            &repo.root,
            None,
            NOW
        ),
        Err(TufError::Version { .. })
    ));
    assert!(matches!(
        check_targets(&r, &ok, &repo.root, None, NOW + 100),
        Err(TufError::Expired { .. })
    ));
}

#[test]
fn publishing_keeps_every_target_already_published() {
    let repo = repo();
    let a = reg("fw-1").parse("x").unwrap_or_else(|e| panic!("{e}"));
    let b = reg("fw-2").parse("x").unwrap_or_else(|e| panic!("{e}"));
    let before: BTreeMap<String, Target> = [(a.release_id.clone(), target(&a))].into();
    let both = Signed::sign(
        targets_json(2, NOW + 100, &[target(&a), target(&b)]),
        &[&repo.targets_key],
    );
    assert_eq!(
        check_targets(&b, &both, &repo.root, Some((1, &before)), NOW),
        Ok(2)
    );
    let dropped = Signed::sign(
        targets_json(2, NOW + 100, &[target(&b)]),
        &[&repo.targets_key],
    );
    assert!(
        matches!(check_targets(&b, &dropped, &repo.root, Some((1, &before)), NOW), Err(TufError::Mismatch(m)) if m.contains("fw-1"))
    );
}

#[test]
fn compatibility_narrows_and_downgrades_need_permission() {
    let release = vec!["a".to_owned(), "b".to_owned()];
    assert_eq!(compatible_models(&release, &[]), release);
    assert_eq!(
        compatible_models(&release, &["b".into(), "c".into()]),
        vec!["b".to_owned()]
    );
    assert!(compatible_models(&release, &["c".into()]).is_empty());
    assert!(allowed("1.9.9", "2.0.0", false));
    assert!(
        !allowed("2.0.0", "2.0.0", false),
        "the same version is no upgrade"
    );
    assert!(!allowed("2.0.1", "2.0.0", false));
    assert!(allowed("2.0.1", "2.0.0", true));
    assert!(
        allowed("", "2.0.0", false),
        "a device that never reported a version"
    );
}

#[test]
fn a_length_may_be_written_as_a_whole_float() {
    let r: RegisterIn = serde_json::from_value(json!({"release_id": "a", "version": "1.0.0",
        "models": ["m"], "sha256": "ab".repeat(32), "length": 4.0e3}))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.length, 4000);
    assert!(
        serde_json::from_value::<RegisterIn>(json!({"release_id": "a", "version": "1.0.0",
        "models": ["m"], "sha256": "ab".repeat(32), "length": 4.5}))
        .is_err()
    );
}

#[test]
fn a_renewal_re_signs_exactly_the_current_targets() {
    let repo = repo();
    let a = reg("fw-1").parse("x").unwrap_or_else(|e| panic!("{e}"));
    let b = reg("fw-2").parse("x").unwrap_or_else(|e| panic!("{e}"));
    let current: BTreeMap<String, Target> = [(a.release_id.clone(), target(&a))].into();
    let sign =
        |ts: &[Target], v| Signed::sign(targets_json(v, NOW + 100, ts), &[&repo.targets_key]);
    assert_eq!(
        check_renewal(&sign(&[target(&a)], 4), &repo.root, (3, &current), NOW),
        Ok(4)
    );
    assert!(check_renewal(&sign(&[target(&a)], 3), &repo.root, (3, &current), NOW).is_err());
    assert!(check_renewal(
        &sign(&[target(&a), target(&b)], 4),
        &repo.root,
        (3, &current),
        NOW
    )
    .is_err());
    assert!(check_renewal(&sign(&[], 4), &repo.root, (3, &current), NOW).is_err());
    let by_other = Signed::sign(targets_json(4, NOW + 100, &[target(&a)]), &[&key(3)]);
    assert!(check_renewal(&by_other, &repo.root, (3, &current), NOW).is_err());
}
