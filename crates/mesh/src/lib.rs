//! The mesh file, one YAML format for three readers:
//!
//! - `services`: each service (the `host:port` clients name) with its
//!   endpoints and optional virtual addresses. weft-control serves these;
//!   weft-proxy's standalone `--discovery-file` reads the same.
//! - `workloads`: what `weft up` runs: a command, its replicas, its port and
//!   protocol, environment and identity. `weft up` turns each ready replica
//!   into an endpoint of the service `<workload>:<port>`.
//! - `entry`: where `weft up`'s entry proxy listens for callers outside the mesh.
//!
//! ```yaml
//! workloads:
//!   square:
//!     command: square
//!     args: [--listen, "127.0.0.1:${WEFT_PORT}"]
//!     replicas: 3
//!     ports: [{port: 50051, protocol: grpc}]   # mtls: required refuses plaintext
//! services:
//!   legacy.db:5432:                    # the authority clients use
//!     addresses: [10.96.0.10:5432]     # optional virtual IPs (transparent mode)
//!     endpoints:
//!       - 127.0.0.1:7001               # an address ...
//!       - address: 127.0.0.1:7002      # ... or an address with details
//!         name: db-1
//!         protocol: opaque
//! ```
//!
//! Every error names the file, and where the YAML allows it the line, column
//! and field (`workloads.square.replicas`).

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer, de};

/// The most replicas one workload may ask for (each is two processes).
pub const MAX_REPLICAS: u32 = 64;

/// A whole mesh file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    /// Where `weft up`'s entry proxy listens (an outbound proxy for callers
    /// outside the mesh).
    #[serde(default)]
    pub entry: Option<SocketAddr>,
    #[serde(default)]
    pub workloads: BTreeMap<WorkloadName, Workload>,
    #[serde(default)]
    pub services: BTreeMap<ServiceName, Service>,
    /// Mesh-wide authorization policy: the default for workloads that set
    /// none, the cluster's networks, external (JWT) identity providers.
    #[serde(default)]
    pub policy: Option<weft_policy::MeshPolicy>,
    /// Workloads' policies by workload name, for workloads this file does
    /// not run (what `weft up` gives weft-control; a workload `weft up`
    /// runs says its own in `workloads.<name>.policy`).
    #[serde(default)]
    pub policies: BTreeMap<WorkloadName, weft_policy::WorkloadPolicy>,
}

/// A service: its endpoints and the virtual addresses that mean it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    #[serde(default)]
    pub addresses: Vec<SocketAddr>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Per-route retries and timeouts (the first route that matches a
    /// request applies).
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// Which requests of a service get which retries and timeout.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `/pkg.Service/Method` (that method), `/pkg.Service/` (every method of
    /// a gRPC service: a prefix ending in `/`), or absent: every request.
    #[serde(default)]
    pub path: Option<RoutePath>,
    /// The gRPC status codes retried (UNAVAILABLE is 14); `[]`: none.
    /// Absent: the proxy's `--retry-codes`.
    #[serde(default)]
    pub retry_codes: Option<Vec<RetryCode>>,
    /// After this (`500ms`, `2s`, `1m`) the caller's proxy answers
    /// DEADLINE_EXCEEDED and cancels the request upstream (a shorter
    /// `grpc-timeout` wins).
    #[serde(default)]
    pub timeout: Option<Timeout>,
}

impl Route {
    /// Whether the route applies to a request for `path`.
    pub fn matches(&self, path: &str) -> bool {
        match &self.path {
            None => true,
            Some(p) if p.0.ends_with('/') => path.starts_with(&p.0),
            Some(p) => path == p.0,
        }
    }
}

/// A route's path: starts with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePath(pub String);

impl<'de> Deserialize<'de> for RoutePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if !s.starts_with('/') || s.len() > 1024 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(de::Error::custom(format!(
                "`{s}` is not a route path (write /pkg.Service/Method, or /pkg.Service/ for every method)"
            )));
        }
        Ok(RoutePath(s))
    }
}

/// A gRPC status code, 0–16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryCode(pub u8);

impl<'de> Deserialize<'de> for RetryCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)
            .map_err(|_| de::Error::custom("a gRPC status code is a number 0-16 (UNAVAILABLE is 14)"))?;
        u8::try_from(n)
            .ok()
            .filter(|c| *c <= 16)
            .map(RetryCode)
            .ok_or_else(|| de::Error::custom(format!("{n} is not a gRPC status code (0-16)")))
    }
}

/// A route's timeout: more than 0, at most an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub std::time::Duration);

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_timeout(&s).map(Timeout).map_err(de::Error::custom)
    }
}

/// `250ms`, `1.5s`, `2m` as a duration (more than 0, at most an hour).
pub fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a timeout (write 500ms, 2s or 1m)"))?;
    let secs = match unit {
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "" => return Err(format!("`{s}` needs a unit (ms, s or m)")),
        _ => return Err(format!("`{s}`: `{unit}` is not a unit (ms, s or m)")),
    };
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("`{s}`: a timeout is more than 0 and at most an hour"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// A human name (workload replica, pod); defaults to the address.
    pub name: Option<String>,
    /// The mesh identity the endpoint must prove; empty when unknown.
    pub identity: Option<String>,
    pub protocol: Protocol,
    /// Relative weight, at least 1.
    pub weight: u32,
}

impl Endpoint {
    /// An endpoint with nothing but its address.
    pub fn at(address: SocketAddr) -> Self {
        Endpoint {
            address,
            name: None,
            identity: None,
            protocol: Protocol::Detect,
            weight: 1,
        }
    }

    /// The name, or the address when it has none.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.address.to_string())
    }
}

/// What an endpoint or a workload's port speaks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Detect from the first bytes.
    #[default]
    Detect,
    /// gRPC (HTTP/2).
    Grpc,
    /// HTTP/1.1 or HTTP/2.
    Http,
    /// Opaque TCP.
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Detect => "detect",
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
            Protocol::Opaque => "opaque",
        }
    }
}

/// A workload `weft up` runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// The program: a path, a name beside the `weft` binary, or on `PATH`.
    pub command: String,
    /// Its arguments. `${WEFT_PORT}` (the port the replica must listen on)
    /// and `${WEFT_OUTBOUND}` (its outbound proxy) are replaced.
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default = "one")]
    pub replicas: u32,
    /// The port clients call it on (at most one for now).
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The service-account-like name its identity is made of; defaults to
    /// the workload's name.
    #[serde(default)]
    pub identity: Option<String>,
    /// Per-route retries and timeouts of the service its port makes.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Who may call it: servers (its ports) and their authorizations, and
    /// the default for the rest (see weft-policy).
    #[serde(default)]
    pub policy: Option<weft_policy::WorkloadPolicy>,
}

/// A port a workload serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub port: u16,
    #[serde(default = "grpc")]
    pub protocol: Protocol,
    /// `required`: the replicas' inbound proxies take mutual TLS from
    /// other proxies only (plaintext from outside the mesh is refused);
    /// `optional` (the default) takes both.
    #[serde(default)]
    pub mtls: Mtls,
}

/// Whether a port takes plaintext beside mutual TLS.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mtls {
    #[default]
    Optional,
    Required,
}

fn one() -> u32 {
    1
}

fn grpc() -> Protocol {
    Protocol::Grpc
}

/// A service's name as clients use it: `host:port`, host in lower case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName(String);

impl ServiceName {
    /// Checks and normalizes `host:port`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("service `{s}` has no port (write it as host:port)"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("service `{s}`: `{port}` is not a port number"))?;
        if port == 0 {
            return Err(format!("service `{s}`: port 0"));
        }
        let bracketed = host.starts_with('[') && host.ends_with(']');
        let ok = !host.is_empty()
            && (bracketed
                || host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_'));
        if !ok {
            return Err(format!("service `{s}`: `{host}` is not a host name or address"));
        }
        Ok(ServiceName(format!("{}:{port}", host.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ServiceName::parse(&s).map_err(de::Error::custom)
    }
}

/// A workload's name: a DNS label (lower case letters, digits, `-`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadName(String);

impl WorkloadName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(WorkloadName(s.to_string()))
        } else {
            Err(format!(
                "workload name `{s}`: use lower case letters, digits and `-` (at most 63), like a Kubernetes name"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WorkloadName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        WorkloadName::parse(&s).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Endpoint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address `ip:port`, or a map with `address` and optional `name`, `identity`, `protocol`, `weight`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Endpoint, E> {
                let address = s
                    .parse()
                    .map_err(|_| E::custom(format!("`{s}` is not an address (write ip:port)")))?;
                Ok(Endpoint::at(address))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Endpoint, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Full {
                    address: SocketAddr,
                    #[serde(default)]
                    name: Option<String>,
                    #[serde(default)]
                    identity: Option<String>,
                    #[serde(default)]
                    protocol: Protocol,
                    #[serde(default = "one")]
                    weight: u32,
                }
                let f = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Endpoint {
                    address: f.address,
                    name: f.name,
                    identity: f.identity.filter(|i| !i.is_empty()),
                    protocol: f.protocol,
                    weight: f.weight.max(1),
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Why a mesh file was refused.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The YAML does not parse, or a field is wrong; the message names the
    /// line, column and field.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl MeshError {
    fn invalid(path: &Path, message: impl Into<String>) -> Self {
        MeshError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl MeshFile {
    /// Reads and checks the mesh file at `path`.
    pub fn read(path: &Path) -> Result<Self, MeshError> {
        let text = std::fs::read_to_string(path).map_err(|source| MeshError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks mesh file text (`path` is only for messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, MeshError> {
        if text.trim().is_empty() {
            return Ok(MeshFile::default());
        }
        let file: MeshFile = serde_yaml::from_str(text).map_err(|e| MeshError::invalid(path, yaml_message(&e)))?;
        file.check(path, text)?;
        Ok(file)
    }

    /// What the YAML's types cannot say: no address claimed twice, no
    /// workload beside a service of the same name.
    fn check(&self, path: &Path, text: &str) -> Result<(), MeshError> {
        let mut vips: BTreeMap<SocketAddr, &ServiceName> = BTreeMap::new();
        for (name, svc) in &self.services {
            for addr in &svc.addresses {
                if let Some(first) = vips.insert(*addr, name) {
                    return Err(MeshError::invalid(
                        path,
                        format!(
                            "{}services.{name}.addresses: {addr} is claimed by both `{first}` and `{name}`",
                            at_line(text, &addr.to_string(), 2)
                        ),
                    ));
                }
            }
        }
        let mesh_policy = self.policy.clone().unwrap_or_default();
        mesh_policy
            .check()
            .map_err(|e| MeshError::invalid(path, format!("{}{e}", at_line(text, "policy:", 1))))?;
        for (name, p) in &self.policies {
            if self.workloads.get(name).is_some_and(|w| w.policy.is_some()) {
                return Err(MeshError::invalid(
                    path,
                    format!("policies.{name}: workload `{name}` has a policy of its own already"),
                ));
            }
            p.check(&format!("policies.{name}"), &mesh_policy)
                .map_err(|e| MeshError::invalid(path, e.to_string()))?;
        }
        for (name, w) in &self.workloads {
            if let Some(p) = &w.policy {
                p.check(&format!("workloads.{name}.policy"), &mesh_policy)
                    .map_err(|e| MeshError::invalid(path, e.to_string()))?;
            }
            if w.replicas > MAX_REPLICAS {
                return Err(MeshError::invalid(
                    path,
                    format!(
                        "{}workloads.{name}.replicas: {} is more than {MAX_REPLICAS}, the most one workload may run",
                        field_line(text, name.as_str(), "replicas"),
                        w.replicas
                    ),
                ));
            }
            if w.command.trim().is_empty() {
                return Err(MeshError::invalid(
                    path,
                    format!(
                        "{}workloads.{name}.command: empty",
                        field_line(text, name.as_str(), "command")
                    ),
                ));
            }
            if w.ports.len() > 1 {
                return Err(MeshError::invalid(
                    path,
                    format!(
                        "{}workloads.{name}.ports: {} ports; weft up fronts one port per workload for now",
                        at_line(text, &format!("{name}:"), 1),
                        w.ports.len()
                    ),
                ));
            }
            for port in &w.ports {
                let service = ServiceName(format!("{name}:{}", port.port));
                if self.services.contains_key(&service) {
                    return Err(MeshError::invalid(
                        path,
                        format!(
                            "{}services.{service}: workload `{name}` already serves `{service}`",
                            at_line(text, &format!("{service}:"), 1)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every workload's policy the file gives: `policies`, and each
    /// workload's own.
    pub fn workload_policies(&self) -> BTreeMap<WorkloadName, weft_policy::WorkloadPolicy> {
        let mut out = self.policies.clone();
        for (name, w) in &self.workloads {
            if let Some(p) = &w.policy {
                out.insert(name.clone(), p.clone());
            }
        }
        out
    }

    /// Every service the file names: its `services`, and for each workload
    /// port, `<workload>:<port>` with the endpoints `ready` gives for it.
    pub fn services_with(
        &self,
        mut ready: impl FnMut(&WorkloadName, &Workload, &Port) -> Vec<Endpoint>,
    ) -> BTreeMap<ServiceName, Service> {
        let mut out = self.services.clone();
        for (name, w) in &self.workloads {
            for port in &w.ports {
                out.insert(
                    ServiceName(format!("{name}:{}", port.port)),
                    Service {
                        addresses: Vec::new(),
                        endpoints: ready(name, w, port),
                        routes: w.routes.clone(),
                    },
                );
            }
        }
        out
    }
}

/// `line N: ` for the `nth` line that contains `needle`, or nothing.
fn at_line(text: &str, needle: &str, nth: usize) -> String {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth.saturating_sub(1))
        .map(|(i, _)| format!("line {}: ", i + 1))
        .unwrap_or_default()
}

/// `line N: ` for the first `field:` line after the line that opens `key:`.
fn field_line(text: &str, key: &str, field: &str) -> String {
    let open = format!("{key}:");
    let want = format!("{field}:");
    let mut lines = text
        .lines()
        .enumerate()
        .skip_while(|(_, l)| l.trim_start() != open && !l.trim_start().starts_with(&format!("{open} ")));
    lines
        .find(|(_, l)| l.trim_start().starts_with(&want))
        .map(|(i, _)| format!("line {}: ", i + 1))
        .unwrap_or_default()
}

/// serde_yaml's message, put as `line L column C: field: what`.
fn yaml_message(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(loc) => {
            // serde_yaml appends " at line L column C"; put it first.
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            let body = msg.strip_suffix(&suffix).unwrap_or(&msg);
            format!("line {} column {}: {body}", loc.line(), loc.column())
        }
        None => msg,
    }
}

/// Writes a services-only mesh file (what `weft up` gives weft-control):
/// atomically, through a temporary file and a rename, so a reader never
/// sees half of it.
pub fn write_services(path: &Path, services: &BTreeMap<ServiceName, Service>) -> std::io::Result<()> {
    write_control_file(path, services, None, &BTreeMap::new())
}

/// Writes what weft-control serves: the services, and the authorization
/// policy (mesh-wide, and each workload's under `policies`), atomically.
pub fn write_control_file(
    path: &Path,
    services: &BTreeMap<ServiceName, Service>,
    policy: Option<&weft_policy::MeshPolicy>,
    policies: &BTreeMap<WorkloadName, weft_policy::WorkloadPolicy>,
) -> std::io::Result<()> {
    let mut out = String::from("# Written by `weft up`; do not edit (your mesh file is the source).\nservices:\n");
    if services.is_empty() {
        out = out.replace("services:\n", "services: {}\n");
    }
    for (name, svc) in services {
        out.push_str(&format!("  {name}:\n"));
        if !svc.addresses.is_empty() {
            let list: Vec<String> = svc.addresses.iter().map(|a| a.to_string()).collect();
            out.push_str(&format!("    addresses: [{}]\n", list.join(", ")));
        }
        for (i, r) in svc.routes.iter().enumerate() {
            if i == 0 {
                out.push_str("    routes:\n");
            }
            out.push_str("      - {");
            let mut parts = Vec::new();
            if let Some(p) = &r.path {
                parts.push(format!("path: {}", quote(&p.0)));
            }
            if let Some(codes) = &r.retry_codes {
                let list: Vec<String> = codes.iter().map(|c| c.0.to_string()).collect();
                parts.push(format!("retry_codes: [{}]", list.join(", ")));
            }
            if let Some(t) = &r.timeout {
                parts.push(format!("timeout: {}ms", t.0.as_secs_f64() * 1e3));
            }
            out.push_str(&parts.join(", "));
            out.push_str("}\n");
        }
        if svc.endpoints.is_empty() {
            out.push_str("    endpoints: []\n");
            continue;
        }
        out.push_str("    endpoints:\n");
        for e in &svc.endpoints {
            out.push_str(&format!("      - address: {}\n", e.address));
            if let Some(n) = &e.name {
                out.push_str(&format!("        name: {}\n", quote(n)));
            }
            if let Some(i) = &e.identity {
                out.push_str(&format!("        identity: {}\n", quote(i)));
            }
            if e.protocol != Protocol::Detect {
                out.push_str(&format!("        protocol: {}\n", e.protocol.as_str()));
            }
            if e.weight != 1 {
                out.push_str(&format!("        weight: {}\n", e.weight));
            }
        }
    }
    #[derive(serde::Serialize)]
    struct PolicyPart<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        policy: Option<&'a weft_policy::MeshPolicy>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        policies: BTreeMap<&'a str, &'a weft_policy::WorkloadPolicy>,
    }
    let part = PolicyPart {
        policy,
        policies: policies.iter().map(|(k, v)| (k.as_str(), v)).collect(),
    };
    if part.policy.is_some() || !part.policies.is_empty() {
        let yaml = serde_yaml::to_string(&part).map_err(std::io::Error::other)?;
        out.push_str(&yaml);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, out)?;
    std::fs::rename(&tmp, path)
}

fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests;
