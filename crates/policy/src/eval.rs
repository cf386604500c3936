//! A workload's policy compiled for the request path: each server's
//! authorizations indexed by the identity they name (exact names in a
//! hash map, suffixes by each of the caller's label boundaries), so a
//! decision looks at the few authorizations that could apply, not all of
//! them. `benches/authorize.rs` measures it with 1,000 authorizations.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;

use crate::{
    jwt::{Caller, TokenCache, TokenError, Verifier},
    spec::{DefaultPolicy, IdentityMatch, Mode, PortRange, Resolved, ServerProtocol},
};

/// What the proxy knows of a request (or, with no `route`, of an opaque
/// connection) when it asks.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The server port, as the workload's policy names it.
    pub port: u16,
    pub client: IpAddr,
    /// The client's mesh identity (DNS form), proven by mutual TLS.
    pub identity: Option<&'a str>,
    /// The request's path and method; `None` for an opaque connection.
    pub route: Option<(&'a str, &'a str)>,
    /// The token of an `authorization: Bearer <token>` header.
    pub bearer: Option<&'a str>,
}

/// Allowed, denied, or allowed under audit (it would have been denied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    Audit,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Audit => "audit",
        }
    }
}

/// Why: a bounded set, for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// An authorization allows it.
    Authorized,
    /// No server covers the port: the default policy decided.
    Default,
    /// The server's authorizations need an identity and the client proved none.
    Unauthenticated,
    /// The client is authenticated, but no authorization names it.
    Unauthorized,
    /// An authorization names the client, but not for this route.
    Route,
    /// The client sent a bearer token that is not valid.
    InvalidToken,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Authorized => "authorized",
            Reason::Default => "default",
            Reason::Unauthenticated => "unauthenticated",
            Reason::Unauthorized => "unauthorized",
            Reason::Route => "route",
            Reason::InvalidToken => "invalid_token",
        }
    }
}

/// A decision, with the names of what made it (for metrics and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'p> {
    pub verdict: Verdict,
    pub reason: Reason,
    /// The server's name; `default` when no server covers the port.
    pub server: &'p str,
    /// The authorization that allowed it (empty otherwise).
    pub authorization: &'p str,
    /// The caller a valid JWT named, with its provider.
    pub jwt: Option<(&'p str, Caller)>,
    /// Why the token was refused, when one was.
    pub token_error: Option<TokenError>,
}

impl Decision<'_> {
    pub fn allowed(&self) -> bool {
        self.verdict != Verdict::Deny
    }
}

/// A compiled workload policy.
pub struct Authorizer {
    workload: String,
    default: DefaultPolicy,
    cluster: Vec<IpNet>,
    servers: Vec<Server>,
    providers: Vec<(String, Verifier)>,
    tokens: std::sync::Mutex<TokenCache>,
}

struct Server {
    name: String,
    ports: PortRange,
    mode: Mode,
    opaque: bool,
    auths: Vec<Auth>,
    exact: HashMap<Box<str>, Vec<u32>>,
    suffix: HashMap<Box<str>, Vec<u32>>,
    any_identity: Vec<u32>,
    /// Unauthenticated (or by network only).
    open: Vec<u32>,
    with_jwt: Vec<u32>,
    /// The providers (indices) this server's authorizations name.
    providers: Vec<usize>,
}

struct Auth {
    name: String,
    /// Whom it admits, for the proxy's log (never told to a client).
    clients: String,
    networks: Vec<IpNet>,
    jwt: Vec<JwtRule>,
    routes: Vec<Route>,
}

struct JwtRule {
    provider: usize,
    subjects: HashSet<String>,
    groups: HashSet<String>,
}

struct Route {
    path: String,
    prefix: bool,
    method: Option<String>,
}

impl Route {
    fn matches(&self, path: &str, method: &str) -> bool {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let hit = if self.prefix {
            path.starts_with(&self.path)
        } else {
            path == self.path
        };
        hit && self.method.as_deref().is_none_or(|m| m == method)
    }
}

impl Authorizer {
    /// Compiles a resolved policy (its JWKS documents parsed once, here).
    pub fn compile(policy: &Resolved) -> Result<Authorizer, String> {
        let mut providers = Vec::new();
        let mut provider_index = HashMap::new();
        for (name, p) in &policy.jwt {
            let v = Verifier::new(p).map_err(|e| format!("JWT provider `{name}`: {e}"))?;
            provider_index.insert(name.as_str().to_string(), providers.len());
            providers.push((name.as_str().to_string(), v));
        }
        let mut servers = Vec::new();
        for (name, s) in &policy.servers {
            let mut server = Server {
                name: name.as_str().to_string(),
                ports: s.port,
                mode: s.mode,
                opaque: s.protocol == ServerProtocol::Opaque,
                auths: Vec::new(),
                exact: HashMap::new(),
                suffix: HashMap::new(),
                any_identity: Vec::new(),
                open: Vec::new(),
                with_jwt: Vec::new(),
                providers: Vec::new(),
            };
            for (aname, a) in &s.authorizations {
                let i = server.auths.len() as u32;
                for id in &a.identities {
                    match id {
                        IdentityMatch::Any => server.any_identity.push(i),
                        IdentityMatch::Exact(n) => server.exact.entry(n.as_str().into()).or_default().push(i),
                        IdentityMatch::Suffix(n) => server.suffix.entry(n.as_str().into()).or_default().push(i),
                    }
                }
                let mut jwt = Vec::new();
                for j in &a.jwt {
                    let provider = *provider_index
                        .get(j.provider.as_str())
                        .ok_or_else(|| format!("authorization `{aname}`: JWT provider `{}` has no keys", j.provider))?;
                    if !server.providers.contains(&provider) {
                        server.providers.push(provider);
                    }
                    jwt.push(JwtRule {
                        provider,
                        subjects: j.subjects.iter().cloned().collect(),
                        groups: j.groups.iter().cloned().collect(),
                    });
                }
                if !jwt.is_empty() {
                    server.with_jwt.push(i);
                }
                if a.identities.is_empty() && a.jwt.is_empty() {
                    server.open.push(i);
                }
                let routes = a
                    .routes
                    .iter()
                    .map(|r| match (&r.grpc, &r.path, &r.path_prefix) {
                        (Some(g), _, _) if g.contains('/') => Route {
                            path: format!("/{g}"),
                            prefix: false,
                            method: None,
                        },
                        (Some(g), _, _) => Route {
                            path: format!("/{g}/"),
                            prefix: true,
                            method: None,
                        },
                        (None, Some(p), _) => Route {
                            path: p.clone(),
                            prefix: false,
                            method: r.method.clone(),
                        },
                        (None, None, p) => Route {
                            path: p.clone().unwrap_or_else(|| "/".into()),
                            prefix: true,
                            method: r.method.clone(),
                        },
                    })
                    .collect();
                let mut clients: Vec<String> = a.identities.iter().map(|i| i.to_string()).collect();
                clients.extend(a.jwt.iter().map(|j| format!("jwt {}", j.provider)));
                clients.extend(a.networks.iter().map(|n| n.to_string()));
                if a.unauthenticated {
                    clients.push("unauthenticated".into());
                }
                server.auths.push(Auth {
                    name: aname.as_str().to_string(),
                    clients: clients.join(" "),
                    networks: a.networks.clone(),
                    jwt,
                    routes,
                });
            }
            servers.push(server);
        }
        Ok(Authorizer {
            workload: policy.workload.clone(),
            default: policy.default,
            cluster: policy.cluster_networks.clone(),
            servers,
            providers,
            tokens: Default::default(),
        })
    }

    /// The policy a proxy applies before it has heard from the control
    /// plane: `default` everywhere.
    pub fn fallback(default: DefaultPolicy) -> Authorizer {
        Authorizer {
            workload: String::new(),
            default,
            cluster: crate::spec::default_cluster_networks(),
            servers: Vec::new(),
            providers: Vec::new(),
            tokens: Default::default(),
        }
    }

    pub fn workload(&self) -> &str {
        &self.workload
    }

    pub fn default_policy(&self) -> DefaultPolicy {
        self.default
    }

    /// The server names (bounded by the policy, for metric labels).
    pub fn server_names(&self) -> impl Iterator<Item = &str> {
        self.servers.iter().map(|s| s.name.as_str())
    }

    /// Who `server`'s authorizations admit (at most `max` of them), for a
    /// log line: `name: clients; ...`.
    pub fn admits(&self, server: &str, max: usize) -> String {
        let Some(s) = self.servers.iter().find(|s| s.name == server) else {
            return format!("default {}", self.default);
        };
        let mut out: Vec<String> = s
            .auths
            .iter()
            .take(max)
            .map(|a| format!("{}: {}", a.name, a.clients))
            .collect();
        if s.auths.len() > max {
            out.push(format!("+{} more", s.auths.len() - max));
        }
        if out.is_empty() {
            return "nobody (no authorization)".into();
        }
        out.join("; ")
    }

    /// Whether the request may reach the app.
    pub fn check(&self, req: &Request<'_>) -> Decision<'_> {
        let Some(server) = self.servers.iter().find(|s| s.ports.contains(req.port)) else {
            return self.by_default(req);
        };
        let route = if server.opaque { None } else { req.route };
        let mut route_refused = false;
        let mut try_auth = |i: u32| -> Option<&Auth> {
            let a = &server.auths[i as usize];
            if !a.networks.is_empty() && !a.networks.iter().any(|n| n.contains(&req.client)) {
                return None;
            }
            if !a.routes.is_empty() {
                let ok = route.is_some_and(|(p, m)| a.routes.iter().any(|r| r.matches(p, m)));
                if !ok {
                    route_refused = true;
                    return None;
                }
            }
            Some(a)
        };
        fn allowed<'p>(server: &'p Server, a: &'p Auth, jwt: Option<(&'p str, Caller)>) -> Decision<'p> {
            Decision {
                verdict: Verdict::Allow,
                reason: Reason::Authorized,
                server: &server.name,
                authorization: &a.name,
                jwt,
                token_error: None,
            }
        }
        // Mesh identities: exact, then each suffix, then `*`.
        if let Some(id) = req.identity {
            if let Some(list) = server.exact.get(id) {
                for &i in list {
                    if let Some(a) = try_auth(i) {
                        return allowed(server, a, None);
                    }
                }
            }
            if !server.suffix.is_empty() {
                for (pos, _) in id.match_indices('.') {
                    if let Some(list) = server.suffix.get(&id[pos + 1..]) {
                        for &i in list {
                            if let Some(a) = try_auth(i) {
                                return allowed(server, a, None);
                            }
                        }
                    }
                }
            }
            for &i in &server.any_identity {
                if let Some(a) = try_auth(i) {
                    return allowed(server, a, None);
                }
            }
        }
        // A bearer token, checked once per provider the server names.
        let mut token_error = None;
        let mut callers: Vec<(usize, Caller)> = Vec::new();
        if let Some(token) = req.bearer
            && !server.with_jwt.is_empty()
        {
            let now = crate::jwt::unix_now();
            for &p in &server.providers {
                let cached = {
                    let cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
                    cache.get(p, token, now).cloned()
                };
                if let Some(c) = cached {
                    callers.push((p, c));
                    continue;
                }
                match self.providers[p].1.verify(token) {
                    Ok(c) => {
                        self.tokens
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(p, token, c.clone());
                        callers.push((p, c));
                    }
                    Err(e) => token_error = token_error.or(Some(e)),
                }
            }
            if !callers.is_empty() {
                token_error = None;
            }
            for &i in &server.with_jwt {
                let a = &server.auths[i as usize];
                let hit = a.jwt.iter().find_map(|rule| {
                    callers.iter().find(|(p, c)| {
                        *p == rule.provider
                            && ((rule.subjects.is_empty() && rule.groups.is_empty())
                                || rule.subjects.contains(&c.subject)
                                || c.groups.iter().any(|g| rule.groups.contains(g)))
                    })
                });
                if let Some((p, caller)) = hit
                    && let Some(a) = try_auth(i)
                {
                    let provider = self.providers[*p].0.as_str();
                    return allowed(server, a, Some((provider, caller.clone())));
                }
            }
        }
        for &i in &server.open {
            if let Some(a) = try_auth(i) {
                return allowed(server, a, None);
            }
        }
        let reason = if route_refused {
            Reason::Route
        } else if token_error.is_some() {
            Reason::InvalidToken
        } else if req.identity.is_none() && callers.is_empty() {
            Reason::Unauthenticated
        } else {
            Reason::Unauthorized
        };
        Decision {
            verdict: match server.mode {
                Mode::Enforce => Verdict::Deny,
                Mode::Audit => Verdict::Audit,
            },
            reason,
            server: &server.name,
            authorization: "",
            jwt: callers
                .into_iter()
                .next()
                .map(|(p, c)| (self.providers[p].0.as_str(), c)),
            token_error,
        }
    }

    fn by_default(&self, req: &Request<'_>) -> Decision<'_> {
        let authenticated = req.identity.is_some();
        let (verdict, reason) = match self.default {
            DefaultPolicy::AllUnauthenticated => (Verdict::Allow, Reason::Default),
            DefaultPolicy::Audit => (Verdict::Audit, Reason::Default),
            DefaultPolicy::Deny => (Verdict::Deny, Reason::Default),
            DefaultPolicy::AllAuthenticated if authenticated => (Verdict::Allow, Reason::Default),
            DefaultPolicy::AllAuthenticated => (Verdict::Deny, Reason::Unauthenticated),
            DefaultPolicy::ClusterAuthenticated
                if authenticated || self.cluster.iter().any(|n| n.contains(&req.client)) =>
            {
                (Verdict::Allow, Reason::Default)
            }
            DefaultPolicy::ClusterAuthenticated => (Verdict::Deny, Reason::Unauthenticated),
        };
        Decision {
            verdict,
            reason,
            server: "default",
            authorization: "",
            jwt: None,
            token_error: None,
        }
    }
}
