use super::*;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-identity-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn names_read_both_ways_and_refuse_odd_parts() {
    let n = Name::new("cluster.local", "default", "square").unwrap();
    assert_eq!(n.spiffe(), "spiffe://cluster.local/ns/default/sa/square");
    assert_eq!(n.dns(), "square.default.serviceaccount.identity.cluster.local");
    assert_eq!(Name::from_spiffe(&n.spiffe()), Some(n));
    assert!(Name::from_spiffe("spiffe://cluster.local/ns/default/sa/square/extra").is_none());
    assert!(Name::from_spiffe("https://cluster.local/ns/default/sa/square").is_none());
    assert!(
        Name::new("cluster.local", "Default", "square")
            .unwrap_err()
            .contains("namespace")
    );
    assert!(Name::new("cluster.local", "default", "a.b").is_err());
    assert!(Name::new("", "default", "square").is_err());
}

#[test]
fn the_ca_is_created_private_loaded_again_and_issues_what_the_token_says_not_what_the_csr_asks() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp("ca");
    let (ca, created) = Ca::load_or_create(&dir, "cluster.local").unwrap();
    assert!(created);
    for f in [files::ANCHOR_KEY, files::ISSUER_KEY] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f} is {mode:o}");
    }
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let (again, created) = Ca::load_or_create(&dir, "cluster.local").unwrap();
    assert!(!created);
    assert_eq!(again.anchors(), ca.anchors());

    // A CSR that asks for another identity: it gets the token's, only.
    let key = KeyPair::generate().unwrap();
    let asked = CertificateParams::new(vec![
        "admin.kube-system.serviceaccount.identity.cluster.local".to_string(),
    ])
    .unwrap()
    .serialize_request(&key)
    .unwrap();
    let name = Name::new("cluster.local", "default", "square").unwrap();
    let issued = again.issue(asked.der(), &name, Duration::from_secs(10)).unwrap();
    let info = inspect(&issued.leaf).unwrap();
    assert_eq!(
        info.sans,
        vec![format!("uri:{}", name.spiffe()), format!("dns:{}", name.dns())]
    );
    assert_eq!(info.spiffe(), Some(name.spiffe().as_str()));
    assert_eq!(
        info.public_key,
        key.public_key_raw(),
        "the CSR's key is the one certified"
    );
    let life = info.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(
        life <= Duration::from_secs(10) && life > Duration::from_secs(5),
        "{life:?}"
    );
    verify_chain(&issued.leaf, &issued.intermediates, again.anchors()).unwrap();

    // Another CA's anchors do not verify it.
    let other = Ca::create(&temp("other"), "cluster.local").unwrap();
    assert!(verify_chain(&issued.leaf, &issued.intermediates, other.anchors()).is_err());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(temp("other"));
}

#[test]
fn a_csr_with_a_bad_signature_or_no_csr_at_all_is_refused() {
    let dir = temp("bad");
    let ca = Ca::create(&dir, "cluster.local").unwrap();
    let name = Name::new("cluster.local", "default", "square").unwrap();
    let (_, mut csr) = request().unwrap();
    let n = csr.len();
    csr[n - 3] ^= 0xff; // inside the signature
    assert!(ca.issue(&csr, &name, Duration::from_secs(60)).is_err());
    assert!(ca.issue(b"not a csr", &name, Duration::from_secs(60)).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tokens_round_trip_privately() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp("tokens");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokens.yaml");
    let token = new_token();
    assert_eq!(token.len(), 32);
    assert_ne!(token, new_token());
    let mut t = Tokens::default();
    t.0.insert(
        token.clone(),
        TokenIdentity {
            namespace: "default".into(),
            service_account: "square".into(),
        },
    );
    t.write(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let back = Tokens::read(&path).unwrap();
    assert_eq!(back, t);
    assert_eq!(
        back.name(&token, "cluster.local").unwrap().spiffe(),
        "spiffe://cluster.local/ns/default/sa/square"
    );
    assert!(back.name("wrong", "cluster.local").is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_trust_anchor_rotation_keeps_every_certificate_valid_until_the_old_root_is_dropped() {
    let dir = temp("rotate");
    let ca = Ca::create(&dir, "cluster.local").unwrap();
    let name = Name::new("cluster.local", "default", "square").unwrap();
    let cert = |ca: &Ca| {
        let (_, csr) = request().unwrap();
        ca.issue(&csr, &name, Duration::from_secs(60)).unwrap()
    };
    let chains = |i: &Issued, ca: &Ca| verify_chain(&i.leaf, &i.intermediates, ca.anchors()).is_ok();
    let old = cert(&ca);
    let g0 = ca.generation();
    assert_eq!(Rotation::of(&dir).unwrap(), Rotation::Idle);
    // Out of order: named, nothing changed.
    let e = Ca::rotate(&dir, "cluster.local", Step::Drop).unwrap_err().to_string();
    assert!(e.contains("cannot drop now") && e.contains("next step: bundle"), "{e}");

    let bundled = Ca::rotate(&dir, "cluster.local", Step::Bundle).unwrap();
    assert_eq!(Rotation::of(&dir).unwrap(), Rotation::Bundled);
    assert_eq!(bundled.anchors().len(), 2);
    assert_ne!(bundled.generation(), g0);
    let during = cert(&bundled);
    assert!(chains(&old, &bundled) && chains(&during, &bundled));
    assert_eq!(during.intermediates, old.intermediates, "still the old issuer");

    let reissued = Ca::rotate(&dir, "cluster.local", Step::Reissue).unwrap();
    assert_eq!(Rotation::of(&dir).unwrap(), Rotation::Reissued);
    let new = cert(&reissued);
    assert_ne!(new.intermediates, old.intermediates, "a new issuer");
    assert!(chains(&old, &reissued) && chains(&new, &reissued));
    assert_eq!(
        Ca::load(&dir, "cluster.local").unwrap().generation(),
        reissued.generation()
    );

    let done = Ca::rotate(&dir, "cluster.local", Step::Drop).unwrap();
    assert_eq!(Rotation::of(&dir).unwrap(), Rotation::Idle);
    assert_eq!(done.anchors().len(), 1);
    assert!(chains(&new, &done), "the new certificate chains to the new root");
    assert!(!chains(&old, &done), "the old root is gone");
    assert!(!dir.join(files::NEXT).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reissue_cut_short_by_a_crash_is_finished_when_the_ca_loads_again() {
    let dir = temp("resume");
    Ca::create(&dir, "cluster.local").unwrap();
    Ca::rotate(&dir, "cluster.local", Step::Bundle).unwrap();
    // The crash: the new issuer's key written, its certificate not yet.
    std::fs::copy(
        dir.join(files::NEXT).join(files::ISSUER_KEY),
        dir.join(files::ISSUER_KEY),
    )
    .unwrap();
    assert!(
        Ca::load(&dir, "cluster.local").is_err(),
        "a key that is not the issuer's"
    );
    let (ca, created) = Ca::load_or_create(&dir, "cluster.local").unwrap();
    assert!(!created);
    assert_eq!(Rotation::of(&dir).unwrap(), Rotation::Reissued);
    let (_, csr) = request().unwrap();
    let name = Name::new("cluster.local", "default", "square").unwrap();
    let issued = ca.issue(&csr, &name, Duration::from_secs(60)).unwrap();
    assert!(verify_chain(&issued.leaf, &issued.intermediates, ca.anchors()).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}
