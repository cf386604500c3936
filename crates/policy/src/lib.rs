//! Authorization policy for weft: who may call a workload's ports, by
//! mesh identity (mutual TLS), network, or an external identity
//! provider's JWT, down to the gRPC method.
//!
//! - [`spec`]: the policy as the mesh file writes it, checked with clear
//!   messages; [`spec::Resolved`] is one workload's policy with the JWKS
//!   documents it needs, what weft-control sends each proxy (as JSON).
//! - [`eval`]: a resolved policy compiled into an index ([`Authorizer`])
//!   and checked per request (or per opaque connection).
//! - [`jwt`]: bearer tokens checked against a provider's keys.
//!
//! The semantics in short: a request to a port that a *server* covers is
//! allowed when one of the server's *authorizations* names the client
//! (and the route, if it names routes); a server with no authorization
//! admits nobody. A port no server covers gets the workload's *default*
//! (`all-unauthenticated`, `all-authenticated`, `cluster-authenticated`,
//! `deny`, `audit`). A server in `mode: audit` lets what it would deny
//! through, and says so.

pub mod eval;
pub mod jwt;
pub mod spec;

pub use eval::{Authorizer, Decision, Reason, Request, Verdict};
pub use spec::{DefaultPolicy, MeshPolicy, PolicyError, Resolved, WorkloadPolicy};

#[cfg(test)]
mod tests;
