//! Workload identities under `weft up`: a token per workload (a file only
//! this user can read, given to that workload's proxies) and the tokens
//! file weft-control checks them against. The CA itself lives in
//! `<dir>/identity` and outlives a run (weft-control makes it on first use).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context;
use weft_identity::{TokenIdentity, Tokens};

/// The namespace of `weft up`'s identities.
pub const NAMESPACE: &str = "default";
/// The entry proxy's service account.
pub const ENTRY_ACCOUNT: &str = "weft-entry";

pub struct Identities {
    dir: PathBuf,
    tokens: Tokens,
    files: BTreeMap<String, PathBuf>,
}

impl Identities {
    /// Fresh tokens for this run in `<run>/identity` (0700).
    pub fn new(run: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = run.join("identity");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let ids = Identities {
            dir,
            tokens: Tokens::default(),
            files: BTreeMap::new(),
        };
        ids.tokens.write(&ids.tokens_file())?;
        Ok(ids)
    }

    /// The file weft-control reads (`--identity-tokens`).
    pub fn tokens_file(&self) -> PathBuf {
        self.dir.join("tokens.yaml")
    }

    /// The token file of `who` (a workload, or the entry), proving the
    /// service account `account`; made on first use.
    pub fn token_file(&mut self, who: &str, account: &str) -> anyhow::Result<PathBuf> {
        if let Some(p) = self.files.get(who) {
            return Ok(p.clone());
        }
        weft_identity::Name::new(weft_identity::DEFAULT_TRUST_DOMAIN, NAMESPACE, account)
            .map_err(|e| anyhow::anyhow!("the identity of `{who}`: {e}"))?;
        let token = weft_identity::new_token();
        let path = self.dir.join(format!("{who}.token"));
        weft_identity::write_secret(&path, &format!("{token}\n"))?;
        self.tokens.0.insert(
            token,
            TokenIdentity {
                namespace: NAMESPACE.into(),
                service_account: account.into(),
            },
        );
        self.tokens.write(&self.tokens_file())?;
        self.files.insert(who.into(), path.clone());
        Ok(path)
    }

    /// A token file made before, if any.
    pub fn get(&self, who: &str) -> Option<&Path> {
        self.files.get(who).map(PathBuf::as_path)
    }
}
