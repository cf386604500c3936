use std::net::IpAddr;

use crate::{
    Authorizer, Decision, DefaultPolicy, MeshPolicy, Reason, Request, Resolved, Verdict, WorkloadPolicy,
    jwt::testing::TestIssuer,
};

const CLIENT: &str = "client.default.serviceaccount.identity.cluster.local";
const PAYMENTS: &str = "billing.payments.serviceaccount.identity.cluster.local";
const OTHER: &str = "other.default.serviceaccount.identity.cluster.local";

fn compile(mesh: &str, workload: &str, jwks: &str) -> Authorizer {
    let mesh: MeshPolicy = serde_yaml::from_str(mesh).unwrap();
    mesh.check().unwrap();
    let w: WorkloadPolicy = serde_yaml::from_str(workload).unwrap();
    w.check("workloads.square.policy", &mesh).unwrap();
    let resolved = Resolved::resolve("square", Some(&w), &mesh, |_, _| Ok(jwks.to_string())).unwrap();
    // What weft-control sends is JSON; the proxy compiles what it reads back.
    let json = serde_json::to_string(&resolved).unwrap();
    let back: Resolved = serde_json::from_str(&json).unwrap();
    assert_eq!(back, resolved);
    Authorizer::compile(&back).unwrap()
}

fn req<'a>(identity: Option<&'a str>, path: &'a str) -> Request<'a> {
    Request {
        port: 50051,
        client: "192.0.2.7".parse().unwrap(),
        identity,
        route: Some((path, "POST")),
        bearer: None,
    }
}

fn verdict(d: Decision<'_>) -> (Verdict, Reason) {
    (d.verdict, d.reason)
}

const SQUARE: &str = r#"
default: deny
servers:
  grpc:
    port: 50051
    authorizations:
      clients:
        identities: [client.default.serviceaccount.identity.cluster.local]
        routes: [{grpc: square.Square/Square}]
      payments:
        identities: ["*.payments.serviceaccount.identity.cluster.local"]
      spiffe:
        identities: [spiffe://cluster.local/ns/ops/sa/admin]
        routes: [{grpc: square.SquareControl}]
"#;

#[test]
fn an_identity_is_allowed_by_exact_name_suffix_or_spiffe_id_and_others_are_denied() {
    let a = compile("", SQUARE, "");
    assert_eq!(
        verdict(a.check(&req(Some(CLIENT), "/square.Square/Square"))),
        (Verdict::Allow, Reason::Authorized)
    );
    assert_eq!(
        a.check(&req(Some(CLIENT), "/square.Square/Square")).authorization,
        "clients"
    );
    assert_eq!(
        verdict(a.check(&req(Some(PAYMENTS), "/any.Thing/Else"))),
        (Verdict::Allow, Reason::Authorized)
    );
    // A suffix matches at a label boundary only.
    let lookalike = "billing.notpayments.serviceaccount.identity.cluster.local";
    assert_eq!(
        verdict(a.check(&req(Some(lookalike), "/square.Square/Square"))),
        (Verdict::Deny, Reason::Unauthorized)
    );
    assert_eq!(
        verdict(a.check(&req(Some(OTHER), "/square.Square/Square"))),
        (Verdict::Deny, Reason::Unauthorized)
    );
    let admin = "admin.ops.serviceaccount.identity.cluster.local";
    assert_eq!(
        verdict(a.check(&req(Some(admin), "/square.SquareControl/SetDelay"))),
        (Verdict::Allow, Reason::Authorized)
    );
    // No identity at all.
    assert_eq!(
        verdict(a.check(&req(None, "/square.Square/Square"))),
        (Verdict::Deny, Reason::Unauthenticated)
    );
    // Who would have been allowed: for the proxy's log only.
    let admits = a.admits("grpc", 5);
    assert!(
        admits.contains("clients: client.default.serviceaccount.identity.cluster.local"),
        "{admits}"
    );
    assert!(
        admits.contains("spiffe: admin.ops.serviceaccount.identity.cluster.local"),
        "{admits}"
    );
    assert_eq!(a.admits("grpc", 1).matches("; ").count(), 1, "one, then how many more");
}

#[test]
fn one_method_of_a_service_is_allowed_while_another_is_denied() {
    let a = compile("", SQUARE, "");
    assert!(a.check(&req(Some(CLIENT), "/square.Square/Square")).allowed());
    let d = a.check(&req(Some(CLIENT), "/square.Square/Stream"));
    assert_eq!(verdict(d.clone()), (Verdict::Deny, Reason::Route));
    assert_eq!(d.server, "grpc");
    // A whole service: every method, and nothing beside it.
    let admin = "admin.ops.serviceaccount.identity.cluster.local";
    assert!(a.check(&req(Some(admin), "/square.SquareControl/Reset")).allowed());
    assert!(!a.check(&req(Some(admin), "/square.SquareControlX/Reset")).allowed());
    assert!(!a.check(&req(Some(admin), "/square.Square/Square")).allowed());
}

#[test]
fn the_defaults_decide_ports_no_server_covers() {
    let other_port = |id, ip: &str| Request {
        port: 9000,
        client: ip.parse().unwrap(),
        identity: id,
        route: Some(("/x", "GET")),
        bearer: None,
    };
    let with = |default: &str| compile("", &format!("default: {default}\n"), "");
    let a = with("all-authenticated");
    assert_eq!(
        verdict(a.check(&other_port(None, "10.0.0.1"))),
        (Verdict::Deny, Reason::Unauthenticated)
    );
    assert_eq!(
        verdict(a.check(&other_port(Some(CLIENT), "10.0.0.1"))),
        (Verdict::Allow, Reason::Default)
    );
    let a = with("cluster-authenticated");
    assert!(a.check(&other_port(None, "10.1.2.3")).allowed());
    assert!(!a.check(&other_port(None, "203.0.113.9")).allowed());
    assert!(a.check(&other_port(Some(CLIENT), "203.0.113.9")).allowed());
    assert!(!with("deny").check(&other_port(Some(CLIENT), "10.0.0.1")).allowed());
    assert!(
        with("all-unauthenticated")
            .check(&other_port(None, "203.0.113.9"))
            .allowed()
    );
    assert_eq!(
        with("audit").check(&other_port(None, "203.0.113.9")).verdict,
        Verdict::Audit
    );
    // The mesh's default when the workload names none; the workload's wins.
    let a = compile("default: deny\n", "{}", "");
    assert!(!a.check(&other_port(Some(CLIENT), "10.0.0.1")).allowed());
    let a = compile("default: deny\n", "default: all-unauthenticated\n", "");
    assert!(a.check(&other_port(None, "203.0.113.9")).allowed());
    // A server with no authorization admits nobody.
    let a = compile("", "servers: {grpc: {port: 50051}}\n", "");
    assert!(!a.check(&req(Some(CLIENT), "/square.Square/Square")).allowed());
}

#[test]
fn networks_match_by_cidr_alone_or_beside_an_identity() {
    let a = compile(
        "",
        r#"
servers:
  grpc:
    port: 50000-50100
    authorizations:
      office: {networks: [10.20.0.0/16, "2001:db8::/32"], unauthenticated: true}
      jobs: {networks: [192.0.2.0/24], identities: ["*"]}
"#,
        "",
    );
    let at = |ip: &str, id| Request {
        port: 50077,
        client: ip.parse::<IpAddr>().unwrap(),
        identity: id,
        route: Some(("/a.B/C", "POST")),
        bearer: None,
    };
    assert!(a.check(&at("10.20.3.4", None)).allowed());
    assert!(a.check(&at("2001:db8::1", None)).allowed());
    assert!(!a.check(&at("10.21.3.4", None)).allowed());
    // `jobs`: any mesh identity, from its network only.
    assert!(a.check(&at("192.0.2.9", Some(OTHER))).allowed());
    assert!(!a.check(&at("192.0.2.9", None)).allowed());
    assert!(!a.check(&at("198.51.100.1", Some(OTHER))).allowed());
    // The range is the server's; outside it the default applies.
    assert_eq!(
        a.check(&Request {
            port: 50101,
            ..at("198.51.100.1", None)
        })
        .server,
        "default"
    );
}

#[test]
fn a_server_in_audit_mode_lets_through_what_it_would_deny_and_says_so() {
    let a = compile(
        "",
        r#"
servers:
  grpc:
    port: 50051
    mode: audit
    authorizations:
      clients: {identities: [client.default.serviceaccount.identity.cluster.local]}
"#,
        "",
    );
    assert_eq!(
        verdict(a.check(&req(Some(CLIENT), "/a.B/C"))),
        (Verdict::Allow, Reason::Authorized)
    );
    let d = a.check(&req(Some(OTHER), "/a.B/C"));
    assert_eq!(verdict(d.clone()), (Verdict::Audit, Reason::Unauthorized));
    assert!(d.allowed());
}

fn jwt_policy() -> (TestIssuer, Authorizer) {
    let issuer = TestIssuer::new("k1");
    let a = compile(
        r#"
jwt:
  corp:
    issuer: https://id.example.com
    audiences: [square]
    jwks_file: jwks.json
"#,
        r#"
servers:
  grpc:
    port: 50051
    authorizations:
      people:
        jwt: [{provider: corp, subjects: [alice]}]
      admins:
        jwt: [{provider: corp, groups: [square-admins]}]
        routes: [{grpc: square.SquareControl}]
"#,
        &issuer.jwks,
    );
    (issuer, a)
}

fn with_token<'a>(token: &'a str, path: &'a str) -> Request<'a> {
    Request {
        bearer: Some(token),
        ..req(None, path)
    }
}

#[test]
fn a_valid_jwt_names_a_caller_that_authorizations_allow() {
    let (issuer, a) = jwt_policy();
    let alice = issuer.token(&TestIssuer::claims("https://id.example.com", "square", "alice"));
    let d = a.check(&with_token(&alice, "/square.Square/Square"));
    assert_eq!(verdict(d.clone()), (Verdict::Allow, Reason::Authorized));
    assert_eq!(
        d.jwt.as_ref().map(|(p, c)| (*p, c.subject.as_str())),
        Some(("corp", "alice"))
    );
    // Bob is not named, unless by a group, and then for that route only.
    let bob = issuer.token(&TestIssuer::claims("https://id.example.com", "square", "bob"));
    assert_eq!(
        verdict(a.check(&with_token(&bob, "/square.Square/Square"))),
        (Verdict::Deny, Reason::Unauthorized)
    );
    let mut claims = TestIssuer::claims("https://id.example.com", "square", "bob");
    claims["groups"] = serde_json::json!(["square-admins"]);
    let bob_admin = issuer.token(&claims);
    assert!(
        a.check(&with_token(&bob_admin, "/square.SquareControl/Reset"))
            .allowed()
    );
    assert_eq!(
        verdict(a.check(&with_token(&bob_admin, "/square.Square/Square"))),
        (Verdict::Deny, Reason::Route)
    );
    // An audience list in the token: one of them is enough.
    let mut claims = TestIssuer::claims("https://id.example.com", "square", "alice");
    claims["aud"] = serde_json::json!(["other", "square"]);
    assert!(
        a.check(&with_token(&issuer.token(&claims), "/square.Square/Square"))
            .allowed()
    );
}

#[test]
fn expired_misissued_misaddressed_forged_and_unsigned_tokens_are_refused() {
    use crate::jwt::TokenError;
    let (issuer, a) = jwt_policy();
    let refused = |token: &str| {
        let d = a.check(&with_token(token, "/square.Square/Square"));
        assert_eq!(verdict(d.clone()), (Verdict::Deny, Reason::InvalidToken), "{token}");
        d.token_error.unwrap()
    };
    let mut expired = TestIssuer::claims("https://id.example.com", "square", "alice");
    expired["exp"] = serde_json::json!(1_000_000);
    assert_eq!(refused(&issuer.token(&expired)), TokenError::Expired);
    let wrong_issuer = TestIssuer::claims("https://evil.example.com", "square", "alice");
    assert_eq!(refused(&issuer.token(&wrong_issuer)), TokenError::Issuer);
    let wrong_audience = TestIssuer::claims("https://id.example.com", "billing", "alice");
    assert_eq!(refused(&issuer.token(&wrong_audience)), TokenError::Audience);
    // Signed by another key with the same kid.
    let forger = TestIssuer::new("k1");
    let good = TestIssuer::claims("https://id.example.com", "square", "alice");
    assert_eq!(refused(&forger.token(&good)), TokenError::Signature);
    // A valid token with one byte of its signature changed.
    let mut t = issuer.token(&good).into_bytes();
    let last = t.len() - 5;
    t[last] = if t[last] == b'A' { b'B' } else { b'A' };
    assert_eq!(refused(std::str::from_utf8(&t).unwrap()), TokenError::Signature);
    // `alg: none` is no algorithm at all to jsonwebtoken: its header does not parse.
    assert_eq!(refused(&TestIssuer::unsigned(&good)), TokenError::Malformed);
    assert_eq!(refused(&issuer.hmac_with_public_key(&good)), TokenError::Algorithm);
    // `exp` as a string (CVE-2026-25537's type confusion) is no free pass.
    let mut stringly = good.clone();
    stringly["exp"] = serde_json::json!("99999999999");
    assert!(
        !a.check(&with_token(&issuer.token(&stringly), "/square.Square/Square"))
            .allowed()
    );
    assert_eq!(refused("not.a.token"), TokenError::Malformed);
    // And a token that names no subject.
    let mut nobody = good;
    nobody.as_object_mut().unwrap().remove("sub");
    assert_eq!(refused(&issuer.token(&nobody)), TokenError::Claims);
}

#[test]
fn a_policy_that_does_not_hold_together_is_refused_with_its_field() {
    let mesh: MeshPolicy = serde_yaml::from_str("jwt: {corp: {issuer: x, audiences: [a], jwks_file: j}}").unwrap();
    let bad = |workload: &str| -> String {
        match serde_yaml::from_str::<WorkloadPolicy>(workload) {
            Err(e) => e.to_string(),
            Ok(w) => w.check("workloads.square.policy", &mesh).unwrap_err().to_string(),
        }
    };
    assert!(
        bad("servers: {a: {port: 1-10}, b: {port: 5}}")
            .contains("workloads.square.policy.servers.b.port: 5 overlaps server `a`"),
    );
    assert!(bad("servers: {a: {port: 1, authorizations: {x: {}}}}").contains("names no clients"));
    assert!(
        bad("servers: {a: {port: 1, authorizations: {x: {jwt: [{provider: okta}]}}}}")
            .contains("`okta` is not a provider")
    );
    assert!(
        bad("servers: {a: {port: 1, authorizations: {x: {identities: [\"Not An Id\"]}}}}")
            .contains("is not an identity")
    );
    assert!(
        bad("servers: {a: {port: 1, authorizations: {x: {unauthenticated: true, routes: [{grpc: \"a b\"}]}}}}")
            .contains("is not a gRPC service")
    );
    assert!(bad("servers: {a: {port: 1, protocol: opaque, authorizations: {x: {unauthenticated: true, routes: [{path: /}]}}}}").contains("opaque server has no routes"));
    assert!(bad("servers: {a: {port: 70000}}").contains("is not a port"));
    assert!(bad("default: allow-all").contains("unknown variant"));
    assert!(
        bad("servers: {a: {port: 1, authorizations: {x: {unauthenticated: true, identities: [\"*\"]}}}}")
            .contains("choose")
    );
    let m = serde_yaml::from_str::<MeshPolicy>(
        "jwt: {corp: {issuer: x, audiences: [a], jwks_file: j, algorithms: [HS256]}}",
    )
    .unwrap_err()
    .to_string();
    assert!(m.contains("`HS256` is refused"), "{m}");
    let m = serde_yaml::from_str::<MeshPolicy>(
        "jwt: {corp: {issuer: x, audiences: [a], jwks_file: j, algorithms: [none]}}",
    )
    .unwrap_err()
    .to_string();
    assert!(m.contains("`none` is refused"), "{m}");
    let m: MeshPolicy = serde_yaml::from_str("jwt: {corp: {issuer: x, audiences: [], jwks_file: j}}").unwrap();
    assert!(m.check().unwrap_err().to_string().contains("at least one audience"));
    // A JWKS that does not parse, or holds a symmetric key, is refused when resolved.
    let w: WorkloadPolicy =
        serde_yaml::from_str("servers: {a: {port: 1, authorizations: {x: {jwt: [{provider: corp}]}}}}").unwrap();
    let e = Resolved::resolve("square", Some(&w), &mesh, |_, _| Ok("{}".into())).unwrap_err();
    assert!(e.to_string().starts_with("policy.jwt.corp.jwks:"), "{e}");
    let oct = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#;
    let e = Resolved::resolve("square", Some(&w), &mesh, |_, _| Ok(oct.into())).unwrap_err();
    assert!(e.to_string().contains("symmetric"), "{e}");
}

#[test]
fn before_any_policy_a_proxy_applies_its_default() {
    let a = Authorizer::fallback(DefaultPolicy::AllAuthenticated);
    assert!(!a.check(&req(None, "/a.B/C")).allowed());
    assert!(a.check(&req(Some(CLIENT), "/a.B/C")).allowed());
}

#[test]
fn verified_tokens_are_remembered_until_they_expire_and_the_cache_is_bounded() {
    use crate::jwt::{CACHE_TOKENS, Caller, LEEWAY_SECS, TokenCache};
    let caller = |expires| Caller {
        subject: "alice".into(),
        groups: vec![],
        expires,
    };
    let mut cache = TokenCache::default();
    cache.insert(0, "t1", caller(1_000));
    assert!(cache.get(0, "t1", 1_000 + LEEWAY_SECS).is_some());
    assert!(cache.get(0, "t1", 1_001 + LEEWAY_SECS).is_none(), "expired");
    assert!(cache.get(1, "t1", 900).is_none(), "another provider");
    assert!(cache.get(0, "t1x", 900).is_none());
    for i in 0..CACHE_TOKENS {
        cache.insert(0, &format!("k{i}"), caller(5_000));
    }
    assert!(cache.get(0, "t1", 900).is_none(), "the oldest went first");
    assert!(cache.get(0, &format!("k{}", CACHE_TOKENS - 1), 900).is_some());

    // Through a policy: the second check of a token is a cache hit, and a
    // token changed by one byte is checked (and refused) afresh.
    let (issuer, a) = jwt_policy();
    let alice = issuer.token(&TestIssuer::claims("https://id.example.com", "square", "alice"));
    assert!(a.check(&with_token(&alice, "/square.Square/Square")).allowed());
    assert!(a.check(&with_token(&alice, "/square.Square/Square")).allowed());
    let mut forged = alice.clone().into_bytes();
    let i = forged.len() - 3;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert!(!a.check(&with_token(&forged, "/square.Square/Square")).allowed());
}
