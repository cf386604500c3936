//! The policy as users write it (the mesh file's `policy:`, `policies:` and
//! `workloads.<name>.policy`; Kubernetes resources later map onto the same
//! types), and as weft-control sends it to a proxy ([`Resolved`], JSON).
//! Everything is checked here, so that a proxy only ever receives a
//! policy that compiles.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, de};

/// The most authorizations one server may have (each is checked per
/// request through an index, so this bounds memory, not time).
pub const MAX_AUTHORIZATIONS: usize = 10_000;

/// What applies to a request no server of its workload covers (and, in a
/// proxy that has no policy yet, to every request: see the proxy's
/// `--inbound-default-policy`). The names Linkerd users know.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// Every client, authenticated or not.
    #[default]
    AllUnauthenticated,
    /// Clients with a mesh identity (mTLS) or a valid JWT.
    AllAuthenticated,
    /// Authenticated clients, and clients from the cluster's networks.
    ClusterAuthenticated,
    /// Nobody.
    Deny,
    /// Everybody, but each request counted and logged as `audit`: what a
    /// policy would see, before it is enforced.
    Audit,
}

impl DefaultPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::AllUnauthenticated => "all-unauthenticated",
            DefaultPolicy::AllAuthenticated => "all-authenticated",
            DefaultPolicy::ClusterAuthenticated => "cluster-authenticated",
            DefaultPolicy::Deny => "deny",
            DefaultPolicy::Audit => "audit",
        }
    }
}

impl std::str::FromStr for DefaultPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            format!("`{s}` is not a default policy (all-unauthenticated, all-authenticated, cluster-authenticated, deny, audit)")
        })
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The mesh-wide part: `policy:` at the top of the mesh file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshPolicy {
    /// For workloads that set none (default: all-unauthenticated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DefaultPolicy>,
    /// What `cluster-authenticated` counts as the cluster (default: the
    /// private and loopback ranges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_networks: Option<Vec<IpNet>>,
    /// External identity providers whose JWT bearer tokens servers accept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub jwt: BTreeMap<Name, JwtProvider>,
}

/// The networks `cluster-authenticated` trusts when none are given.
pub fn default_cluster_networks() -> Vec<IpNet> {
    [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "fd00::/8",
        "::1/128",
    ]
    .iter()
    .map(|s| s.parse().expect("a literal network"))
    .collect()
}

/// An OIDC provider (or any JWT issuer) whose tokens identify callers from
/// outside the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    /// The `iss` a token must carry.
    pub issuer: String,
    /// One of these must be in the token's `aud`.
    pub audiences: Vec<String>,
    /// The provider's keys (a JWKS document), from a file (relative to the
    /// mesh file) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// ... or fetched by weft-control from an `https://` (or `http://`)
    /// URL, again every `--jwks-refresh`; never by a proxy, never per
    /// request. https is verified against the public web roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// A CA (PEM, relative to the mesh file) trusted for `jwks_url`
    /// beside the public roots: a provider with a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_ca_file: Option<PathBuf>,
    /// The signature algorithms accepted (default RS256 and ES256).
    /// Asymmetric only: `none` and the HS* family are refused, so a public
    /// key can never be used as an HMAC secret.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<JwtAlgorithm>,
    /// The claim that lists the caller's groups (default `groups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_claim: Option<String>,
}

fn default_algorithms() -> Vec<JwtAlgorithm> {
    vec![JwtAlgorithm::Rs256, JwtAlgorithm::Es256]
}

/// A JWT signature algorithm weft accepts (asymmetric ones only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum JwtAlgorithm {
    #[serde(rename = "RS256")]
    Rs256,
    #[serde(rename = "RS384")]
    Rs384,
    #[serde(rename = "RS512")]
    Rs512,
    #[serde(rename = "PS256")]
    Ps256,
    #[serde(rename = "PS384")]
    Ps384,
    #[serde(rename = "PS512")]
    Ps512,
    #[serde(rename = "ES256")]
    Es256,
    #[serde(rename = "ES384")]
    Es384,
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl<'de> Deserialize<'de> for JwtAlgorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "RS256" => JwtAlgorithm::Rs256,
            "RS384" => JwtAlgorithm::Rs384,
            "RS512" => JwtAlgorithm::Rs512,
            "PS256" => JwtAlgorithm::Ps256,
            "PS384" => JwtAlgorithm::Ps384,
            "PS512" => JwtAlgorithm::Ps512,
            "ES256" => JwtAlgorithm::Es256,
            "ES384" => JwtAlgorithm::Es384,
            "EdDSA" => JwtAlgorithm::EdDsa,
            "none" | "HS256" | "HS384" | "HS512" => {
                return Err(de::Error::custom(format!(
                    "the JWT algorithm `{s}` is refused: only signatures checked with the provider's public keys are (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
                )));
            }
            _ => {
                return Err(de::Error::custom(format!(
                    "`{s}` is not a JWT algorithm (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
                )));
            }
        })
    }
}

/// One workload's policy: `workloads.<name>.policy`, or `policies.<name>`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadPolicy {
    /// For requests to ports no server covers (default: the mesh's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DefaultPolicy>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub servers: BTreeMap<Name, Server>,
}

/// A workload's port (or ports) and who may reach it. A server with no
/// authorization admits nobody.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// `50051` or a range `8000-8100`.
    pub port: PortRange,
    /// What the port speaks; `opaque` servers are authorized once per
    /// connection and take no routes.
    #[serde(default)]
    pub protocol: ServerProtocol,
    /// `audit`: requests no authorization allows go through anyway,
    /// counted and logged as `audit` (roll a policy out safely, then
    /// switch to `enforce`).
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub authorizations: BTreeMap<Name, Authorization>,
}

/// What a server's port speaks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerProtocol {
    #[default]
    Grpc,
    Http,
    Opaque,
}

/// Whether a server's denials are enforced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// Who may reach a server, and optionally which of its routes.
///
/// The client must be authenticated by one of `identities` (mTLS) or
/// `jwt` (a bearer token), or the authorization says `unauthenticated:
/// true`; and when `networks` are given, the client's address must be in
/// one of them as well. With `routes`, only those requests are allowed.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// Mesh identities: a SPIFFE id (`spiffe://cluster.local/ns/default/sa/client`),
    /// its DNS form (`client.default.serviceaccount.identity.cluster.local`),
    /// a suffix (`*.payments.serviceaccount.identity.cluster.local`), or `*`
    /// for any mesh identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<IdentityMatch>,
    /// Callers with a valid token from one of these providers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt: Vec<JwtClients>,
    /// The client's address must be in one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<IpNet>,
    /// No authentication needed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unauthenticated: bool,
    /// Only these requests (empty: all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteMatch>,
}

/// Callers a JWT provider vouches for: any of `subjects` (the `sub`
/// claim), or any member of `groups`; neither: any valid token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtClients {
    pub provider: Name,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// Which requests an authorization covers. gRPC: `grpc: pkg.Service` (all
/// its methods) or `grpc: pkg.Service/Method`. HTTP: `path` (exact) or
/// `path_prefix`, and optionally `method` (GET, POST, ...).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A name in a policy: a DNS label's characters, at most 63.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Name(pub String);

impl Name {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-');
        if ok {
            Ok(Name(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a policy name: use lower case letters, digits and `-` (at most 63)"
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Name::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// Ports `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
    fn overlaps(&self, o: &PortRange) -> bool {
        self.first <= o.last && o.first <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            s.serialize_u16(self.first)
        } else {
            s.serialize_str(&self.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        let bad = |s: &str| de::Error::custom(format!("`{s}` is not a port or a range (50051, 8000-8100)"));
        let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0);
        match Raw::deserialize(d)? {
            Raw::N(n) => u16::try_from(n)
                .ok()
                .filter(|p| *p > 0)
                .map(|p| PortRange { first: p, last: p })
                .ok_or_else(|| bad(&n.to_string())),
            Raw::S(s) => {
                let (a, b) = s.split_once('-').unwrap_or((&s, &s));
                match (port(a), port(b)) {
                    (Some(first), Some(last)) if first <= last => Ok(PortRange { first, last }),
                    _ => Err(bad(&s)),
                }
            }
        }
    }
}

/// A mesh identity an authorization names, kept in DNS form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdentityMatch {
    /// Any mesh identity (`*`).
    Any,
    /// Exactly this identity.
    Exact(String),
    /// Any identity ending in `.<suffix>` (written `*.<suffix>`).
    Suffix(String),
}

impl IdentityMatch {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(IdentityMatch::Any);
        }
        if s.starts_with("spiffe://") {
            return weft_identity::Name::from_spiffe(s)
                .map(|n| IdentityMatch::Exact(n.dns()))
                .ok_or_else(|| {
                    format!("`{s}` is not a workload's SPIFFE id (spiffe://<trust domain>/ns/<namespace>/sa/<service account>)")
                });
        }
        let (suffix, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            });
        if !ok {
            return Err(format!(
                "`{s}` is not an identity: write a SPIFFE id, a name like client.default.serviceaccount.identity.cluster.local, a suffix like *.payments.serviceaccount.identity.cluster.local, or *"
            ));
        }
        Ok(if suffix {
            IdentityMatch::Suffix(name.to_string())
        } else {
            IdentityMatch::Exact(name.to_string())
        })
    }
}

impl fmt::Display for IdentityMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityMatch::Any => f.write_str("*"),
            IdentityMatch::Exact(s) => f.write_str(s),
            IdentityMatch::Suffix(s) => write!(f, "*.{s}"),
        }
    }
}

impl Serialize for IdentityMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for IdentityMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IdentityMatch::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// Why a policy was refused: the field it is about and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        message: message.into(),
    }
}

impl MeshPolicy {
    /// What serde cannot say: each provider has one JWKS source and an
    /// audience.
    pub fn check(&self) -> Result<(), PolicyError> {
        for (name, p) in &self.jwt {
            let field = format!("policy.jwt.{name}");
            if p.issuer.trim().is_empty() {
                return Err(err(format!("{field}.issuer"), "empty"));
            }
            if p.audiences.is_empty() {
                return Err(err(
                    format!("{field}.audiences"),
                    "name at least one audience (a token for another service must not pass)",
                ));
            }
            if p.algorithms.is_empty() {
                return Err(err(format!("{field}.algorithms"), "empty: no token could pass"));
            }
            match (&p.jwks_file, &p.jwks_url) {
                (Some(_), None) => {}
                (None, Some(u)) if u.starts_with("https://") || u.starts_with("http://") => {}
                (None, Some(u)) => {
                    return Err(err(
                        format!("{field}.jwks_url"),
                        format!("`{u}` is not an https:// (or http://) URL"),
                    ));
                }
                _ => return Err(err(field, "give exactly one of jwks_file and jwks_url")),
            }
            if p.jwks_ca_file.is_some() && p.jwks_url.is_none() {
                return Err(err(format!("{field}.jwks_ca_file"), "only with jwks_url"));
            }
        }
        Ok(())
    }
}

impl WorkloadPolicy {
    /// Checks the workload's servers against the mesh's providers: no two
    /// servers share a port, every authorization names clients, every JWT
    /// provider exists, routes fit the protocol.
    pub fn check(&self, field: &str, mesh: &MeshPolicy) -> Result<(), PolicyError> {
        let servers: Vec<(&Name, &Server)> = self.servers.iter().collect();
        for (i, (name, s)) in servers.iter().enumerate() {
            let field = format!("{field}.servers.{name}");
            if let Some((other, _)) = servers[..i].iter().find(|(_, o)| o.port.overlaps(&s.port)) {
                return Err(err(
                    format!("{field}.port"),
                    format!("{} overlaps server `{other}`'s ports", s.port),
                ));
            }
            if s.authorizations.len() > MAX_AUTHORIZATIONS {
                return Err(err(
                    format!("{field}.authorizations"),
                    format!("{} is more than {MAX_AUTHORIZATIONS}", s.authorizations.len()),
                ));
            }
            for (aname, a) in &s.authorizations {
                a.check(&format!("{field}.authorizations.{aname}"), s.protocol, mesh)?;
            }
        }
        Ok(())
    }
}

impl Authorization {
    fn check(&self, field: &str, protocol: ServerProtocol, mesh: &MeshPolicy) -> Result<(), PolicyError> {
        let authenticated = !self.identities.is_empty() || !self.jwt.is_empty();
        if self.unauthenticated && authenticated {
            return Err(err(
                field,
                "`unauthenticated: true` with identities or jwt: choose (unauthenticated admits everyone)",
            ));
        }
        if !authenticated && !self.unauthenticated && self.networks.is_empty() {
            return Err(err(
                field,
                "names no clients: give identities, jwt, networks or `unauthenticated: true`",
            ));
        }
        for (i, j) in self.jwt.iter().enumerate() {
            if !mesh.jwt.contains_key(&j.provider) {
                return Err(err(
                    format!("{field}.jwt[{i}].provider"),
                    format!("`{}` is not a provider in policy.jwt", j.provider),
                ));
            }
        }
        if protocol == ServerProtocol::Opaque && !self.routes.is_empty() {
            return Err(err(
                format!("{field}.routes"),
                "an opaque server has no routes (it is authorized per connection)",
            ));
        }
        for (i, r) in self.routes.iter().enumerate() {
            r.check(&format!("{field}.routes[{i}]"))?;
        }
        Ok(())
    }
}

impl RouteMatch {
    fn check(&self, field: &str) -> Result<(), PolicyError> {
        let given = [self.grpc.is_some(), self.path.is_some(), self.path_prefix.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given != 1 {
            return Err(err(field, "give exactly one of grpc, path and path_prefix"));
        }
        if let Some(g) = &self.grpc {
            let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_');
            let valid = match g.split_once('/') {
                Some((svc, m)) => ok(svc) && ok(m) && !m.contains('.'),
                None => ok(g),
            };
            if !valid {
                return Err(err(
                    format!("{field}.grpc"),
                    format!("`{g}` is not a gRPC service or method (write pkg.Service or pkg.Service/Method)"),
                ));
            }
            if self.method.is_some() {
                return Err(err(
                    format!("{field}.method"),
                    "gRPC calls are all POST: leave method out",
                ));
            }
        }
        for p in [&self.path, &self.path_prefix].into_iter().flatten() {
            if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(err(field, format!("`{p}` is not a path (it starts with /)")));
            }
        }
        if let Some(m) = &self.method
            && (m.is_empty() || !m.chars().all(|c| c.is_ascii_uppercase()))
        {
            return Err(err(
                format!("{field}.method"),
                format!("`{m}` is not an HTTP method (GET, POST, ...)"),
            ));
        }
        Ok(())
    }
}

/// A workload's policy with everything it refers to, ready for a proxy:
/// what weft-control sends (as JSON) on each change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    pub workload: String,
    pub default: DefaultPolicy,
    pub cluster_networks: Vec<IpNet>,
    pub servers: BTreeMap<Name, Server>,
    /// The providers the servers name, each with its keys.
    pub jwt: BTreeMap<Name, ResolvedProvider>,
}

/// A JWT provider and its JWKS document (JSON text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedProvider {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<JwtAlgorithm>,
    pub groups_claim: String,
    pub jwks: String,
}

impl Resolved {
    /// `workload`'s policy under `mesh`, with the JWKS documents `jwks`
    /// returns for each provider its servers name (by name; an error names
    /// what could not be read). The result compiles: its keys are checked.
    pub fn resolve(
        workload: &str,
        policy: Option<&WorkloadPolicy>,
        mesh: &MeshPolicy,
        mut jwks: impl FnMut(&Name, &JwtProvider) -> Result<String, String>,
    ) -> Result<Resolved, PolicyError> {
        let empty = WorkloadPolicy::default();
        let policy = policy.unwrap_or(&empty);
        let mut providers = BTreeMap::new();
        for s in policy.servers.values() {
            for a in s.authorizations.values() {
                for j in &a.jwt {
                    if providers.contains_key(&j.provider) {
                        continue;
                    }
                    let p = mesh.jwt.get(&j.provider).ok_or_else(|| {
                        err(
                            format!("policies.{workload}"),
                            format!("JWT provider `{}` is not in policy.jwt", j.provider),
                        )
                    })?;
                    let doc = jwks(&j.provider, p).map_err(|m| err(format!("policy.jwt.{}", j.provider), m))?;
                    crate::jwt::Keys::parse(&doc).map_err(|m| err(format!("policy.jwt.{}.jwks", j.provider), m))?;
                    providers.insert(
                        j.provider.clone(),
                        ResolvedProvider {
                            issuer: p.issuer.clone(),
                            audiences: p.audiences.clone(),
                            algorithms: p.algorithms.clone(),
                            groups_claim: p.groups_claim.clone().unwrap_or_else(|| "groups".into()),
                            jwks: doc,
                        },
                    );
                }
            }
        }
        Ok(Resolved {
            workload: workload.to_string(),
            default: policy.default.or(mesh.default).unwrap_or_default(),
            cluster_networks: mesh.cluster_networks.clone().unwrap_or_else(default_cluster_networks),
            servers: policy.servers.clone(),
            jwt: providers,
        })
    }
}

/// Reads a provider's `jwks_file` (relative to `base`, the mesh file's
/// directory).
pub fn read_jwks_file(base: &Path, p: &JwtProvider) -> Result<String, String> {
    let Some(file) = &p.jwks_file else {
        return Err("no jwks_file".into());
    };
    let path = base.join(file);
    std::fs::read_to_string(&path).map_err(|e| format!("cannot read the JWKS {}: {e}", path.display()))
}
