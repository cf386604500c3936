//! Workload identities.
//!
//! - [`Name`]: who a workload is, as a SPIFFE id
//!   (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`) and as
//!   the DNS name Linkerd users know
//!   (`<sa>.<ns>.serviceaccount.identity.<trust-domain>`).
//! - [`Ca`]: the trust anchor (root) and issuer (intermediate) weft-control
//!   signs certificates with; kept in a directory, keys readable by the
//!   owner only.
//! - [`request`]: what a proxy sends: a fresh key stays with it, only a
//!   certificate signing request (CSR) goes out.
//! - [`inspect`] and [`verify_chain`]: reading certificates back.
//! - [`Tokens`]: which token proves which identity (the file `weft up`
//!   writes for weft-control).
//!
//! No hand-written crypto: keys, CSRs and certificates are rcgen's (ring),
//! parsing is x509-parser's.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};

/// The trust domain when none is given.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A workload's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// A DNS-label-like part: lower-case letters, digits, `-` (and `.` in a
/// trust domain), 1–63 characters per label.
fn check_part(what: &str, s: &str, dots: bool) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        && (dots || !s.contains('.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a valid {what} (lower-case letters, digits and `-`{})",
            if dots { ", labels separated by `.`" } else { "" }
        ))
    }
}

impl Name {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, String> {
        check_part("trust domain", trust_domain, true)?;
        check_part("namespace", namespace, false)?;
        check_part("service account", service_account, false)?;
        Ok(Name {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        })
    }

    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub fn spiffe(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// `<sa>.<ns>.serviceaccount.identity.<trust-domain>`.
    pub fn dns(&self) -> String {
        format!(
            "{}.{}.serviceaccount.identity.{}",
            self.service_account, self.namespace, self.trust_domain
        )
    }

    /// The name a SPIFFE id means, if it is one of ours.
    pub fn from_spiffe(id: &str) -> Option<Name> {
        let rest = id.strip_prefix("spiffe://")?;
        let (td, path) = rest.split_once('/')?;
        let mut parts = path.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Name::new(td, ns, sa).ok(),
            _ => None,
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spiffe())
    }
}

/// A certificate the CA issued, and the chain to send with it.
#[derive(Clone, Debug)]
pub struct Issued {
    pub leaf: Vec<u8>,
    pub intermediates: Vec<Vec<u8>>,
    pub not_after: SystemTime,
}

/// The CA: trust anchors (the first is the current root) and the issuer
/// that signs workload certificates.
pub struct Ca {
    trust_domain: String,
    anchors: Vec<Vec<u8>>,
    issuer_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("anchors", &self.anchors.len())
            .finish_non_exhaustive()
    }
}

/// The files of a CA directory.
pub mod files {
    /// The trust bundle: every anchor peers' certificates may chain to (PEM).
    pub const ANCHORS: &str = "anchors.pem";
    /// The current root's key (PEM, 0600): signs new issuers.
    pub const ANCHOR_KEY: &str = "anchor.key";
    /// The issuer's certificate and key (PEM; the key 0600).
    pub const ISSUER: &str = "issuer.pem";
    pub const ISSUER_KEY: &str = "issuer.key";
    /// During a trust-anchor rotation: the new root and issuer (a CA
    /// directory of their own) ...
    pub const NEXT: &str = "next";
    /// ... and the step reached (`bundled` or `reissued`).
    pub const ROTATION: &str = "rotation";
}

/// A line on stderr (this crate logs nothing otherwise).
fn tracing_free_note(line: &str) {
    eprintln!("weft-identity: {line}");
}

/// Where a trust-anchor rotation stands. The sequence, each step applied
/// to the CA directory and served to the proxies before the next:
/// [`Rotation::Idle`] → `bundle` (a new root beside the old in the bundle,
/// certificates still from the old issuer) → [`Rotation::Bundled`] →
/// `reissue` (certificates from the new root's issuer) →
/// [`Rotation::Reissued`] → `drop` (the old root leaves the bundle) →
/// [`Rotation::Idle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    Idle,
    Bundled,
    Reissued,
}

impl Rotation {
    pub fn as_str(self) -> &'static str {
        match self {
            Rotation::Idle => "idle",
            Rotation::Bundled => "bundled",
            Rotation::Reissued => "reissued",
        }
    }

    /// From [`Rotation::as_str`]'s words (anything else: idle).
    pub fn of_str(s: &str) -> Rotation {
        match s {
            "bundled" => Rotation::Bundled,
            "reissued" => Rotation::Reissued,
            _ => Rotation::Idle,
        }
    }

    /// The step a CA directory has reached.
    pub fn of(dir: &Path) -> Result<Rotation, IdentityError> {
        let p = dir.join(files::ROTATION);
        match std::fs::read_to_string(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Rotation::Idle),
            Err(e) => Err(io(&p)(e)),
            Ok(t) => match t.trim() {
                "bundled" => Ok(Rotation::Bundled),
                "reissued" => Ok(Rotation::Reissued),
                other => Err(IdentityError::Invalid(format!(
                    "{}: `{other}` is not a rotation step (bundled, reissued)",
                    p.display()
                ))),
            },
        }
    }
}

/// A step of a trust-anchor rotation (see [`Rotation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Bundle,
    Reissue,
    Drop,
}

impl Step {
    pub fn parse(s: &str) -> Option<Step> {
        match s {
            "bundle" => Some(Step::Bundle),
            "reissue" => Some(Step::Reissue),
            "drop" => Some(Step::Drop),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Bundle => "bundle",
            Step::Reissue => "reissue",
            Step::Drop => "drop",
        }
    }

    /// Where the rotation must stand for this step.
    pub fn from(self) -> Rotation {
        match self {
            Step::Bundle => Rotation::Idle,
            Step::Reissue => Rotation::Bundled,
            Step::Drop => Rotation::Reissued,
        }
    }

    /// The step after `r`.
    pub fn after(r: Rotation) -> Step {
        match r {
            Rotation::Idle => Step::Bundle,
            Rotation::Bundled => Step::Reissue,
            Rotation::Reissued => Step::Drop,
        }
    }
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// A serial number: 16 random bytes, positive.
fn serial() -> SerialNumber {
    let mut b = random::<16>();
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

/// `N` bytes from the system's secure random source.
fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source works");
    b
}

fn ca_params(cn: &str, lifetime: Duration, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now() - time::Duration::minutes(5);
    p.not_after = now() + time::Duration::try_from(lifetime).unwrap_or(time::Duration::days(365));
    p.serial_number = Some(serial());
    p.use_authority_key_identifier_extension = true;
    p
}

pub fn pem(tag: &str, der: &[u8]) -> String {
    ::pem::encode(&::pem::Pem::new(tag, der.to_vec()))
}

/// The DER blocks of every `CERTIFICATE` in a PEM text.
pub fn certs_from_pem(text: &str) -> Result<Vec<Vec<u8>>, IdentityError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(text.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| IdentityError::Invalid(format!("PEM: {e}")))
}

/// Writes `text` to `path` readable by the owner only (0600), through a
/// temporary file and a rename.
fn write_private(path: &Path, text: &str) -> Result<(), IdentityError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl Ca {
    /// A new root (10 years) and issuer (1 year) for `trust_domain`,
    /// written to `dir` (created 0700). Returns the CA.
    pub fn create(dir: &Path, trust_domain: &str) -> Result<Ca, IdentityError> {
        check_part("trust domain", trust_domain, true).map_err(IdentityError::Invalid)?;
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        }
        let root_key = KeyPair::generate()?;
        let root_params = ca_params(
            &format!("root.{trust_domain}"),
            Duration::from_secs(10 * 365 * 86_400),
            None,
        );
        let root = root_params.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root_params, &root_key);
        let issuer_key = KeyPair::generate()?;
        let issuer_params = ca_params(
            &format!("identity.{trust_domain}"),
            Duration::from_secs(365 * 86_400),
            Some(0),
        );
        let issuer = issuer_params.signed_by(&issuer_key, &root_issuer)?;
        write_private(&dir.join(files::ANCHOR_KEY), &root_key.serialize_pem())?;
        write_private(&dir.join(files::ISSUER_KEY), &issuer_key.serialize_pem())?;
        write_private(&dir.join(files::ISSUER), &pem("CERTIFICATE", issuer.der()))?;
        write_private(&dir.join(files::ANCHORS), &pem("CERTIFICATE", root.der()))?;
        Ca::load(dir, trust_domain)
    }

    /// The CA in `dir` (see [`files`]).
    pub fn load(dir: &Path, trust_domain: &str) -> Result<Ca, IdentityError> {
        check_part("trust domain", trust_domain, true).map_err(IdentityError::Invalid)?;
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(io(&p))
        };
        let anchors = certs_from_pem(&read(files::ANCHORS)?)?;
        if anchors.is_empty() {
            return Err(IdentityError::Invalid(format!(
                "{}: no certificate",
                dir.join(files::ANCHORS).display()
            )));
        }
        let issuer_der = certs_from_pem(&read(files::ISSUER)?)?
            .into_iter()
            .next()
            .ok_or_else(|| IdentityError::Invalid(format!("{}: no certificate", dir.join(files::ISSUER).display())))?;
        let key = KeyPair::from_pem(&read(files::ISSUER_KEY)?)?;
        if inspect(&issuer_der)?.public_key != key.public_key_raw() {
            return Err(IdentityError::Invalid(format!(
                "{} is not the key of {}",
                dir.join(files::ISSUER_KEY).display(),
                dir.join(files::ISSUER).display()
            )));
        }
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(issuer_der.clone()), key)?;
        let ca = Ca {
            trust_domain: trust_domain.into(),
            anchors,
            issuer_der,
            issuer,
        };
        ca.verify_issuer()?;
        Ok(ca)
    }

    /// The CA in `dir`, created there first if the directory has none.
    /// A `reissue` step cut short (its files are written one by one) is
    /// finished here, so the CA loads.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<(Ca, bool), IdentityError> {
        if !dir.join(files::ISSUER).exists() {
            return Ok((Ca::create(dir, trust_domain)?, true));
        }
        match Ca::load(dir, trust_domain) {
            Err(e) if Rotation::of(dir)? == Rotation::Bundled && dir.join(files::NEXT).join(files::ISSUER).exists() => {
                tracing_free_note(&format!(
                    "the CA in {} does not load ({e}) during a rotation: finishing its `reissue` step",
                    dir.display()
                ));
                Ok((Ca::rotate(dir, trust_domain, Step::Reissue)?, false))
            }
            other => Ok((other?, false)),
        }
    }

    /// Applies one step of a trust-anchor rotation to the CA in `dir` and
    /// returns the CA it leaves. Each file is replaced atomically and the
    /// step is recorded last, so a step cut short by a crash is done
    /// again by running it again.
    pub fn rotate(dir: &Path, trust_domain: &str, step: Step) -> Result<Ca, IdentityError> {
        let at = Rotation::of(dir)?;
        if at != step.from() {
            return Err(IdentityError::Invalid(format!(
                "cannot {} now: the rotation is at `{}` (next step: {})",
                step.as_str(),
                at.as_str(),
                Step::after(at).as_str()
            )));
        }
        let next = dir.join(files::NEXT);
        let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(io(&p));
        match step {
            Step::Bundle => {
                let _ = std::fs::remove_dir_all(&next);
                let new = Ca::create(&next, trust_domain)?;
                let old = Ca::load(dir, trust_domain)?;
                let bundle: String = old
                    .anchors
                    .iter()
                    .chain(&new.anchors)
                    .map(|d| pem("CERTIFICATE", d))
                    .collect();
                write_private(&dir.join(files::ANCHORS), &bundle)?;
                write_private(&dir.join(files::ROTATION), "bundled\n")?;
            }
            Step::Reissue => {
                let new = Ca::load(&next, trust_domain)?;
                // (Read, not loaded: a reissue cut short leaves the issuer's
                // files from two CAs; this step puts them right.)
                let old = certs_from_pem(&read(dir.join(files::ANCHORS))?)?;
                // The new root first (the current one), the old still trusted.
                let mut anchors = new.anchors.clone();
                anchors.extend(old.into_iter().filter(|a| !new.anchors.contains(a)));
                let bundle: String = anchors.iter().map(|d| pem("CERTIFICATE", d)).collect();
                write_private(&dir.join(files::ANCHORS), &bundle)?;
                write_private(&dir.join(files::ANCHOR_KEY), &read(next.join(files::ANCHOR_KEY))?)?;
                write_private(&dir.join(files::ISSUER_KEY), &read(next.join(files::ISSUER_KEY))?)?;
                write_private(&dir.join(files::ISSUER), &read(next.join(files::ISSUER))?)?;
                write_private(&dir.join(files::ROTATION), "reissued\n")?;
            }
            Step::Drop => {
                write_private(&dir.join(files::ANCHORS), &read(next.join(files::ANCHORS))?)?;
                let p = dir.join(files::ROTATION);
                std::fs::remove_file(&p).map_err(io(&p))?;
                let _ = std::fs::remove_dir_all(&next);
            }
        }
        Ca::load(dir, trust_domain)
    }

    /// A number that changes with the anchors and the issuer (each
    /// rotation step), the same across restarts: proxies re-certify when
    /// the one they hold differs from the control plane's.
    pub fn generation(&self) -> u64 {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        for a in &self.anchors {
            h.update(&(a.len() as u64).to_be_bytes());
            h.update(a);
        }
        h.update(&self.issuer_der);
        let d = h.finish();
        u64::from_be_bytes(d.as_ref()[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
    }

    /// The issuer must chain to one of the anchors.
    fn verify_issuer(&self) -> Result<(), IdentityError> {
        verify_chain(&self.issuer_der, &[], &self.anchors)
            .map_err(|e| IdentityError::Invalid(format!("the issuer does not chain to an anchor: {e}")))
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trust anchors (DER).
    pub fn anchors(&self) -> &[Vec<u8>] {
        &self.anchors
    }

    /// A certificate for the key in `csr` (whose signature is checked),
    /// naming `name` and nothing the CSR asks for, valid for `lifetime`.
    pub fn issue(&self, csr: &[u8], name: &Name, lifetime: Duration) -> Result<Issued, IdentityError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
            .map_err(|e| IdentityError::Invalid(format!("the CSR: {e}")))?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.dns());
        p.distinguished_name = dn;
        p.subject_alt_names = vec![
            SanType::URI(name.spiffe().try_into()?),
            SanType::DnsName(name.dns().try_into()?),
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        // A minute of slack for peers whose clocks run a little behind.
        p.not_before = now() - time::Duration::minutes(1);
        let not_after = SystemTime::now() + lifetime;
        p.not_after = now() + time::Duration::try_from(lifetime).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Issued {
            leaf: cert.der().to_vec(),
            intermediates: vec![self.issuer_der.clone()],
            not_after,
        })
    }
}

/// A fresh key (ECDSA P-256) and a CSR for it. The key stays with the caller.
pub fn request() -> Result<(KeyPair, Vec<u8>), IdentityError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

/// What a certificate says, for admin pages and checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    /// URI and DNS names, as `uri:...` and `dns:...`.
    pub sans: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The subject public key (SubjectPublicKeyInfo's key bits).
    pub public_key: Vec<u8>,
}

impl CertInfo {
    /// The SPIFFE id among the SANs, if any.
    pub fn spiffe(&self) -> Option<&str> {
        self.sans
            .iter()
            .find_map(|s| s.strip_prefix("uri:"))
            .filter(|u| u.starts_with("spiffe://"))
    }
}

fn system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH
    }
}

/// Reads a DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertInfo, IdentityError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError::Invalid(format!("certificate: {e}")))?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::URI(u) => sans.push(format!("uri:{u}")),
                GeneralName::DNSName(d) => sans.push(format!("dns:{d}")),
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        sans,
        not_before: system_time(cert.validity().not_before),
        not_after: system_time(cert.validity().not_after),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

/// A short fingerprint of a certificate: the first 8 bytes of its
/// SHA-256, in hex (for admin pages: two roots of one trust domain share
/// a subject).
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks that `leaf` chains through `intermediates` to one of `anchors`
/// by signature (validity dates and names are the TLS layer's business).
pub fn verify_chain(leaf: &[u8], intermediates: &[Vec<u8>], anchors: &[Vec<u8>]) -> Result<(), String> {
    use x509_parser::prelude::*;
    fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
        X509Certificate::from_der(der)
            .map(|(_, c)| c)
            .map_err(|e| e.to_string())
    }
    let mut current = parse(leaf)?;
    let mut rest: Vec<X509Certificate<'_>> = intermediates.iter().map(|d| parse(d)).collect::<Result<_, _>>()?;
    let roots: Vec<X509Certificate<'_>> = anchors.iter().map(|d| parse(d)).collect::<Result<_, _>>()?;
    for _ in 0..=intermediates.len() {
        if let Some(root) = roots
            .iter()
            .find(|r| r.subject() == current.issuer() && current.verify_signature(Some(r.public_key())).is_ok())
        {
            let _ = root;
            return Ok(());
        }
        let Some(i) = rest
            .iter()
            .position(|c| c.subject() == current.issuer() && current.verify_signature(Some(c.public_key())).is_ok())
        else {
            return Err(format!(
                "no issuer for `{}` among the chain and anchors",
                current.subject()
            ));
        };
        current = rest.swap_remove(i);
    }
    Err("the chain is longer than the intermediates given".into())
}

/// Which token proves which identity: a YAML map `token: {namespace, service_account}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tokens(pub BTreeMap<String, TokenIdentity>);

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIdentity {
    pub namespace: String,
    pub service_account: String,
}

impl Tokens {
    pub fn read(path: &Path) -> Result<Tokens, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        if text.trim().is_empty() {
            return Ok(Tokens::default());
        }
        serde_yaml::from_str(&text).map_err(|e| IdentityError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Writes the file readable by the owner only.
    pub fn write(&self, path: &Path) -> Result<(), IdentityError> {
        let text = serde_yaml::to_string(self).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        write_private(path, &text)
    }

    /// The identity `token` proves, in `trust_domain`.
    pub fn name(&self, token: &str, trust_domain: &str) -> Option<Name> {
        let t = self.0.get(token)?;
        Name::new(trust_domain, &t.namespace, &t.service_account).ok()
    }
}

/// A new random token (32 hex digits: 128 bits from the system's secure
/// random source).
pub fn new_token() -> String {
    random::<16>().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a secret (a token) readable by the owner only.
pub fn write_secret(path: &Path, text: &str) -> Result<(), IdentityError> {
    write_private(path, text)
}

#[cfg(test)]
mod tests;
