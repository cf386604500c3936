//! The cost of one authorization decision for a server with 1,000
//! authorizations (the bound: well under a microsecond).
//!
//! `cargo bench -p weft-policy --bench authorize`
//!
//! The policy: 1,000 authorizations, each naming one client identity and
//! one gRPC method; 10 naming a namespace suffix; 5 by network. Cases: an
//! allowed call by exact identity (found through the index), one allowed
//! by suffix, one denied (an identity no authorization names: every list
//! that could apply is looked at), and an unauthenticated caller from a
//! network.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use weft_policy::{Authorizer, MeshPolicy, Request, Resolved, Verdict, WorkloadPolicy, spec::*};

fn policy(n: usize) -> Resolved {
    let mut auths = std::collections::BTreeMap::new();
    for i in 0..n {
        auths.insert(
            Name::parse(&format!("client-{i}")).unwrap(),
            Authorization {
                identities: vec![
                    IdentityMatch::parse(&format!("client-{i}.default.serviceaccount.identity.cluster.local")).unwrap(),
                ],
                routes: vec![RouteMatch {
                    grpc: Some(format!("pkg.Service{}/Method", i % 50)),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
    }
    for i in 0..10 {
        auths.insert(
            Name::parse(&format!("ns-{i}")).unwrap(),
            Authorization {
                identities: vec![
                    IdentityMatch::parse(&format!("*.ns{i}.serviceaccount.identity.cluster.local")).unwrap(),
                ],
                ..Default::default()
            },
        );
    }
    for i in 0..5 {
        auths.insert(
            Name::parse(&format!("net-{i}")).unwrap(),
            Authorization {
                networks: vec![format!("10.{i}.0.0/16").parse().unwrap()],
                unauthenticated: true,
                ..Default::default()
            },
        );
    }
    let mut servers = std::collections::BTreeMap::new();
    servers.insert(
        Name::parse("grpc").unwrap(),
        Server {
            port: serde_json::from_str("50051").unwrap(),
            protocol: ServerProtocol::Grpc,
            mode: Mode::Enforce,
            authorizations: auths,
        },
    );
    Resolved {
        workload: "bench".into(),
        default: DefaultPolicy::Deny,
        cluster_networks: default_cluster_networks(),
        servers,
        jwt: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let authz = Authorizer::compile(&policy(1_000)).unwrap();
    let client = "192.168.1.7".parse().unwrap();
    let exact = Request {
        port: 50051,
        client,
        identity: Some("client-777.default.serviceaccount.identity.cluster.local"),
        route: Some(("/pkg.Service27/Method", "POST")),
        bearer: None,
    };
    assert_eq!(authz.check(&exact).verdict, Verdict::Allow);
    let suffix = Request {
        identity: Some("billing.ns7.serviceaccount.identity.cluster.local"),
        ..exact
    };
    assert_eq!(authz.check(&suffix).verdict, Verdict::Allow);
    let denied = Request {
        identity: Some("stranger.other.serviceaccount.identity.cluster.local"),
        ..exact
    };
    assert_eq!(authz.check(&denied).verdict, Verdict::Deny);
    let network = Request {
        identity: None,
        client: "10.3.2.1".parse().unwrap(),
        ..exact
    };
    assert_eq!(authz.check(&network).verdict, Verdict::Allow);
    let mut g = c.benchmark_group("authorize_1000");
    g.bench_function("exact_identity_allowed", |b| {
        b.iter(|| black_box(authz.check(black_box(&exact))).verdict)
    });
    g.bench_function("suffix_identity_allowed", |b| {
        b.iter(|| black_box(authz.check(black_box(&suffix))).verdict)
    });
    g.bench_function("unknown_identity_denied", |b| {
        b.iter(|| black_box(authz.check(black_box(&denied))).verdict)
    });
    g.bench_function("network_allowed", |b| {
        b.iter(|| black_box(authz.check(black_box(&network))).verdict)
    });
    g.finish();

    // A bearer token from an external provider (ES256): the signature check.
    let issuer = weft_policy::jwt::testing::TestIssuer::new("k1");
    let mesh: MeshPolicy = serde_json::from_value(serde_json::json!({
        "jwt": {"corp": {"issuer": "https://id.example.com", "audiences": ["square"], "jwks_file": "jwks.json"}}
    }))
    .unwrap();
    let workload: WorkloadPolicy = serde_json::from_value(serde_json::json!({
        "servers": {"grpc": {"port": 50051, "authorizations": {"people": {"jwt": [{"provider": "corp"}]}}}}
    }))
    .unwrap();
    let resolved = Resolved::resolve("bench", Some(&workload), &mesh, |_, _| Ok(issuer.jwks.clone())).unwrap();
    let authz = Authorizer::compile(&resolved).unwrap();
    let token = issuer.token(&weft_policy::jwt::testing::TestIssuer::claims(
        "https://id.example.com",
        "square",
        "alice",
    ));
    let jwt = Request {
        identity: None,
        bearer: Some(&token),
        ..exact
    };
    assert_eq!(authz.check(&jwt).verdict, Verdict::Allow);
    c.bench_function("jwt_es256_allowed", |b| {
        b.iter(|| black_box(authz.check(black_box(&jwt))).verdict)
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
