use super::*;

fn parse(text: &str) -> Result<MeshFile, MeshError> {
    MeshFile::parse(Path::new("mesh.yaml"), text)
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn both_endpoint_forms_workloads_and_vips_parse() {
    let m = parse(
        "entry: 127.0.0.1:4140\nworkloads:\n  square:\n    command: square\n    args: [--listen, \"127.0.0.1:${WEFT_PORT}\"]\n    replicas: 3\n    ports: [{port: 50051}]\nservices:\n  DB.demo:5432:\n    addresses: [10.96.0.10:5432]\n    endpoints:\n      - 127.0.0.1:7001\n      - address: 127.0.0.1:7002\n        name: db-1\n        identity: db.default.serviceaccount.identity.cluster.local\n        protocol: opaque\n        weight: 3\n",
    )
    .unwrap();
    assert_eq!(m.entry, Some("127.0.0.1:4140".parse().unwrap()));
    let w = &m.workloads[&WorkloadName::parse("square").unwrap()];
    assert_eq!(
        (w.replicas, w.ports[0].port, w.ports[0].protocol),
        (3, 50051, Protocol::Grpc)
    );
    let db = &m.services[&ServiceName::parse("db.demo:5432").unwrap()];
    assert_eq!(db.endpoints[0], Endpoint::at("127.0.0.1:7001".parse().unwrap()));
    assert_eq!(db.endpoints[1].name.as_deref(), Some("db-1"));
    assert_eq!(db.endpoints[1].protocol, Protocol::Opaque);
    assert_eq!(db.endpoints[1].weight, 3);
    let all = m.services_with(|_, _, _| vec![Endpoint::at("127.0.0.1:9".parse().unwrap())]);
    assert_eq!(all.len(), 2);
    assert_eq!(all[&ServiceName::parse("square:50051").unwrap()].endpoints.len(), 1);
}

#[test]
fn a_typo_names_the_line_and_the_field() {
    let e = err("workloads:\n  square:\n    command: square\n    replicsa: 3\n");
    assert!(
        e.starts_with("mesh.yaml: line 4 column 5: workloads.square: unknown field `replicsa`"),
        "{e}"
    );
    let e = err("services:\n  a:1:\n    endpoints: [127.0.0.1:1, not-an-address]\n");
    assert!(
        e.contains("line 3") && e.contains("`not-an-address` is not an address"),
        "{e}"
    );
    let e = err("services:\n  square.demo:\n    endpoints: []\n");
    assert!(e.contains("line 2") && e.contains("has no port"), "{e}");
    let e = err("workloads:\n  square:\n    command: square\n    replicas: 1000\n");
    assert!(e.contains("line 4") && e.contains("more than 64"), "{e}");
    let e = err("workloads:\n  Square:\n    command: square\n");
    assert!(e.contains("line 2") && e.contains("lower case"), "{e}");
    let e = err("workloads:\n  s:\n    command: s\n    ports: [{port: 1, protocol: grcp}]\n");
    assert!(e.contains("line 4") && e.contains("grcp"), "{e}");
    let e = err("services: [oops");
    assert!(e.contains("mesh.yaml: "), "{e}");
}

#[test]
fn what_types_cannot_say_is_checked_with_the_line() {
    let e = err("services:\n  a:1:\n    addresses: [10.0.0.1:1]\n  b:1:\n    addresses: [10.0.0.1:1]\n");
    assert!(
        e.contains("line 5") && e.contains("claimed by both `a:1` and `b:1`"),
        "{e}"
    );
    let e = err("workloads:\n  s:\n    command: s\n    ports: [{port: 1}]\nservices:\n  s:1: {}\n");
    assert!(e.contains("line 6") && e.contains("already serves"), "{e}");
}

#[test]
fn an_empty_file_is_an_empty_mesh() {
    assert_eq!(parse("").unwrap(), MeshFile::default());
    assert_eq!(parse("# nothing yet\n").unwrap(), MeshFile::default());
}

#[test]
fn what_weft_up_writes_reads_back_the_same() {
    let dir = std::env::temp_dir().join(format!("weft-mesh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("endpoints.yaml");
    let mut services = BTreeMap::new();
    services.insert(
        ServiceName::parse("square:50051").unwrap(),
        Service {
            addresses: vec!["10.0.0.1:1".parse().unwrap()],
            endpoints: vec![Endpoint {
                address: "127.0.0.1:7001".parse().unwrap(),
                name: Some("square-0: \"odd\" name".into()),
                identity: Some("square.default.serviceaccount.identity.cluster.local".into()),
                protocol: Protocol::Grpc,
                weight: 2,
            }],
            routes: vec![
                Route {
                    path: Some(RoutePath("/square.Square/Square".into())),
                    retry_codes: Some(vec![RetryCode(14), RetryCode(13)]),
                    timeout: Some(Timeout(std::time::Duration::from_millis(250))),
                },
                Route {
                    path: None,
                    retry_codes: Some(vec![]),
                    timeout: None,
                },
            ],
        },
    );
    services.insert(ServiceName::parse("empty:1").unwrap(), Service::default());
    write_services(&path, &services).unwrap();
    let back = MeshFile::read(&path).unwrap();
    assert_eq!(back.services, services);
    write_services(&path, &BTreeMap::new()).unwrap();
    assert!(MeshFile::read(&path).unwrap().services.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn routes_parse_match_and_say_what_is_wrong() {
    let file = parse(
        "services:\n  square:50051:\n    routes:\n      - path: /square.Square/Square\n        timeout: 1.5s\n      - path: /square.Square/\n        retry_codes: [14, 2]\n      - retry_codes: []\n",
    )
    .unwrap();
    let routes = &file.services[&ServiceName::parse("square:50051").unwrap()].routes;
    assert_eq!(routes.len(), 3);
    assert_eq!(routes[0].timeout, Some(Timeout(std::time::Duration::from_millis(1500))));
    assert!(routes[0].matches("/square.Square/Square") && !routes[0].matches("/square.Square/Other"));
    assert!(routes[1].matches("/square.Square/Other") && !routes[1].matches("/other.Svc/M"));
    assert!(routes[2].matches("/anything"));
    assert_eq!(routes[2].retry_codes, Some(vec![]));

    let e = err("services:\n  s:1:\n    routes:\n      - path: square.Square/Square\n");
    assert!(e.contains("line 4") && e.contains("not a route path"), "{e}");
    let e = err("services:\n  s:1:\n    routes:\n      - retry_codes: [17]\n");
    assert!(e.contains("17 is not a gRPC status code"), "{e}");
    let e = err("services:\n  s:1:\n    routes:\n      - timeout: 10\n");
    assert!(e.contains("needs a unit"), "{e}");
    let e = err("services:\n  s:1:\n    routes:\n      - timout: 1s\n");
    assert!(e.contains("unknown field `timout`"), "{e}");
    assert!(parse_timeout("0s").is_err() && parse_timeout("2h").is_err());
    assert_eq!(parse_timeout("250ms").unwrap(), std::time::Duration::from_millis(250));
}

#[test]
fn a_port_may_require_mtls_and_a_wrong_word_is_named() {
    let m = parse("workloads:\n  square:\n    command: square\n    ports: [{port: 50051, mtls: required}]\n").unwrap();
    let w = &m.workloads[&WorkloadName::parse("square").unwrap()];
    assert_eq!(w.ports[0].mtls, Mtls::Required);
    let m = parse("workloads:\n  square:\n    command: square\n    ports: [{port: 50051}]\n").unwrap();
    assert_eq!(
        m.workloads[&WorkloadName::parse("square").unwrap()].ports[0].mtls,
        Mtls::Optional
    );
    let e = err("workloads:\n  square:\n    command: square\n    ports: [{port: 50051, mtls: strict}]\n");
    assert!(e.contains("unknown variant `strict`") && e.contains("line 4"), "{e}");
}

const POLICY: &str = r#"
policy:
  default: all-authenticated
  jwt:
    corp: {issuer: "https://id.example.com", audiences: [square], jwks_file: jwks.json}
workloads:
  square:
    command: square
    ports: [{port: 50051}]
    policy:
      default: deny
      servers:
        grpc:
          port: 50051
          mode: audit
          authorizations:
            clients:
              identities: [client.default.serviceaccount.identity.cluster.local]
              routes: [{grpc: square.Square/Square}]
            people: {jwt: [{provider: corp, subjects: [alice]}]}
policies:
  billing:
    servers: {http: {port: 8080, protocol: http, authorizations: {all: {unauthenticated: true, routes: [{path_prefix: /api, method: GET}]}}}}
"#;

#[test]
fn policies_parse_check_and_read_back_the_same_from_what_weft_up_writes() {
    let file = parse(POLICY).unwrap();
    let policies = file.workload_policies();
    assert_eq!(policies.len(), 2);
    let square = &policies[&WorkloadName::parse("square").unwrap()];
    assert_eq!(square.default, Some(weft_policy::DefaultPolicy::Deny));
    let dir = std::env::temp_dir().join(format!("weft-mesh-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("endpoints.yaml");
    write_control_file(&path, &BTreeMap::new(), file.policy.as_ref(), &policies).unwrap();
    let back = MeshFile::read(&path).unwrap();
    assert_eq!(back.policy, file.policy);
    assert_eq!(back.workload_policies(), policies);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_policy_mistake_is_refused_naming_its_field() {
    let e = err(&POLICY.replace("provider: corp", "provider: okta"));
    assert!(
        e.contains(
            "workloads.square.policy.servers.grpc.authorizations.people.jwt[0].provider: `okta` is not a provider"
        ),
        "{e}"
    );
    let e = err(&POLICY.replace("mode: audit", "mode: loud"));
    assert!(e.contains("unknown variant `loud`") && e.contains("line "), "{e}");
    let e = err(&format!("{POLICY}  square: {{}}\n"));
    assert!(
        e.contains("policies.square: workload `square` has a policy of its own already"),
        "{e}"
    );
    let e = err(&POLICY.replace("audiences: [square]", "audiences: []"));
    assert!(e.contains("policy.jwt.corp.audiences"), "{e}");
}
