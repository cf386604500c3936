//! Workload identities for tests: a CA directory, a tokens file, and a
//! token file per service account, for weft-control's Identity service.

use std::time::Duration;

use crate::{DiscoveryFile, TestProxy, eventually, process::ControlPlane};

/// The service accounts every [`MeshIds`] has a token for.
pub const ACCOUNTS: [&str; 4] = ["square", "client", "other", "admin"];

/// The DNS form of `sa`'s identity in namespace `default`.
pub fn identity(sa: &str) -> String {
    format!("{sa}.default.serviceaccount.identity.cluster.local")
}

/// A CA directory, tokens for [`ACCOUNTS`], their token files.
pub struct MeshIds {
    pub dir: tempfile::TempDir,
}

impl MeshIds {
    pub fn new() -> MeshIds {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut tokens = weft_identity::Tokens::default();
        for sa in ACCOUNTS {
            let token = weft_identity::new_token();
            tokens.0.insert(
                token.clone(),
                weft_identity::TokenIdentity {
                    namespace: "default".into(),
                    service_account: sa.into(),
                },
            );
            std::fs::write(dir.path().join(format!("{sa}.token")), &token).expect("a token file");
        }
        tokens.write(&dir.path().join("tokens.yaml")).expect("the tokens file");
        MeshIds { dir }
    }

    /// A file in the directory (`ca`, `tokens.yaml`, `<sa>.token`).
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// weft-control on `disc`, with the Identity service.
    pub async fn control_plane(&self, disc: &DiscoveryFile) -> ControlPlane {
        self.control_plane_with(disc, &[]).await
    }

    /// The same, with more flags.
    pub async fn control_plane_with(&self, disc: &DiscoveryFile, extra: &[&str]) -> ControlPlane {
        let (ca, tokens) = (self.path("ca"), self.path("tokens.yaml"));
        let mut args = vec!["--identity-dir", ca.as_str(), "--identity-tokens", tokens.as_str()];
        args.extend_from_slice(extra);
        ControlPlane::start_with(&disc.path, &args).await
    }

    /// A proxy with `sa`'s identity, asking `cp`; returns once certified.
    pub async fn proxy(&self, cp: &ControlPlane, sa: &str, extra: &[&str]) -> TestProxy {
        let token = self.path(&format!("{sa}.token"));
        let cp = cp.addr.to_string();
        let mut args = vec!["--control-plane", cp.as_str(), "--identity-token-file", token.as_str()];
        args.extend_from_slice(extra);
        let p = TestProxy::start(&args).await;
        eventually("a certificate", Duration::from_secs(10), || async {
            let page = crate::http_get(p.admin, "/identity").await.ok()?.1;
            page.contains("identity: spiffe://").then_some(())
        })
        .await;
        p
    }
}

impl Default for MeshIds {
    fn default() -> Self {
        Self::new()
    }
}
