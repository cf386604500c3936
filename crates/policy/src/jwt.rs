//! JWT bearer tokens from an external identity provider, checked with the
//! `jsonwebtoken` crate against the provider's JWKS: the algorithm must be
//! on the provider's allow-list (asymmetric only; `none` never parses),
//! the key is chosen by `kid` (and must be of the algorithm's family, so a
//! public key can never serve as an HMAC secret), and `exp`, `iss` and
//! `aud` are required and checked.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};

use crate::spec::{JwtAlgorithm, ResolvedProvider};

/// The most keys one JWKS may bring.
pub const MAX_KEYS: usize = 64;

/// How far a token's `exp`/`nbf` may be off (clock skew), in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// A provider's keys, parsed.
pub struct Keys {
    keys: Vec<(Option<String>, DecodingKey, Option<Algorithm>)>,
}

impl Keys {
    /// Parses a JWKS document; keys weft cannot use (symmetric ones) are
    /// refused with the rest, so a mistake shows at once.
    pub fn parse(doc: &str) -> Result<Keys, String> {
        let set: JwkSet = serde_json::from_str(doc).map_err(|e| format!("not a JWKS document: {e}"))?;
        if set.keys.is_empty() {
            return Err("the JWKS has no keys".into());
        }
        if set.keys.len() > MAX_KEYS {
            return Err(format!("the JWKS has {} keys, more than {MAX_KEYS}", set.keys.len()));
        }
        let mut keys = Vec::with_capacity(set.keys.len());
        for (i, jwk) in set.keys.iter().enumerate() {
            if matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)) {
                return Err(format!("key {i}: a symmetric (oct) key; only public keys are accepted"));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {i}: {e}"))?;
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            keys.push((jwk.common.key_id.clone(), key, alg));
        }
        Ok(Keys { keys })
    }
}

/// What a valid token says of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub groups: Vec<String>,
    /// The token's `exp` (Unix seconds).
    pub expires: u64,
}

/// How many verified tokens a compiled policy remembers.
pub const CACHE_TOKENS: usize = 4_096;

/// Tokens whose signature checked out, so that a caller who sends the same
/// token on every request pays for the signature once (an ES256 check
/// costs about 0.2 ms, a decision without one 40 ns: bench/AUTHZ.md). Only
/// valid tokens are kept, each until its `exp` (plus the skew allowance),
/// the oldest first out when full; the cache belongs to one compiled
/// policy, so new keys (a new policy) start it afresh.
#[derive(Default)]
pub struct TokenCache {
    map: std::collections::HashMap<Box<str>, (usize, Caller)>,
    order: std::collections::VecDeque<Box<str>>,
}

impl TokenCache {
    /// The caller `provider` verified `token` as, if it has not expired.
    pub fn get(&self, provider: usize, token: &str, now: u64) -> Option<&Caller> {
        match self.map.get(token) {
            Some((p, c)) if *p == provider && now <= c.expires.saturating_add(LEEWAY_SECS) => Some(c),
            _ => None,
        }
    }

    pub fn insert(&mut self, provider: usize, token: &str, caller: Caller) {
        if self.map.len() >= CACHE_TOKENS
            && let Some(old) = self.order.pop_front()
        {
            self.map.remove(&old);
        }
        let key: Box<str> = token.into();
        if self.map.insert(key.clone(), (provider, caller)).is_none() {
            self.order.push_back(key);
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a token was not accepted (a metric label's worth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    Algorithm,
    UnknownKey,
    Signature,
    Expired,
    Issuer,
    Audience,
    Claims,
}

impl TokenError {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Algorithm => "algorithm",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Signature => "signature",
            TokenError::Expired => "expired",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
            TokenError::Claims => "claims",
        }
    }
}

/// Checks tokens of one provider.
pub struct Verifier {
    keys: Keys,
    algorithms: Vec<Algorithm>,
    validation: Vec<(Algorithm, Validation)>,
    groups_claim: String,
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Rs384 => Algorithm::RS384,
        JwtAlgorithm::Rs512 => Algorithm::RS512,
        JwtAlgorithm::Ps256 => Algorithm::PS256,
        JwtAlgorithm::Ps384 => Algorithm::PS384,
        JwtAlgorithm::Ps512 => Algorithm::PS512,
        JwtAlgorithm::Es256 => Algorithm::ES256,
        JwtAlgorithm::Es384 => Algorithm::ES384,
        JwtAlgorithm::EdDsa => Algorithm::EdDSA,
    }
}

impl Verifier {
    pub fn new(p: &ResolvedProvider) -> Result<Verifier, String> {
        let keys = Keys::parse(&p.jwks)?;
        let algorithms: Vec<Algorithm> = p.algorithms.iter().map(|a| algorithm(*a)).collect();
        let validation = algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.set_issuer(&[&p.issuer]);
                v.set_audience(&p.audiences);
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                v.leeway = LEEWAY_SECS;
                v.validate_nbf = true;
                (*alg, v)
            })
            .collect();
        Ok(Verifier {
            keys,
            algorithms,
            validation,
            groups_claim: p.groups_claim.clone(),
        })
    }

    /// The caller a token names, if the token is valid.
    pub fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
            | jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => TokenError::Algorithm,
            _ => TokenError::Malformed,
        })?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm);
        }
        let (_, validation) = self
            .validation
            .iter()
            .find(|(a, _)| *a == header.alg)
            .ok_or(TokenError::Algorithm)?;
        let candidates = self.keys.keys.iter().filter(|(kid, _, alg)| {
            alg.is_none_or(|a| a == header.alg)
                && match (&header.kid, kid) {
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) => false,
                    (None, _) => true,
                }
        });
        let mut last = TokenError::UnknownKey;
        for (_, key, _) in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, validation) {
                Ok(data) => return self.caller(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => {
                            TokenError::Signature
                        }
                        K::ExpiredSignature | K::ImmatureSignature => return Err(TokenError::Expired),
                        K::InvalidIssuer => return Err(TokenError::Issuer),
                        K::InvalidAudience => return Err(TokenError::Audience),
                        K::MissingRequiredClaim(_) | K::InvalidSubject | K::Json(_) => return Err(TokenError::Claims),
                        K::InvalidAlgorithm => return Err(TokenError::Algorithm),
                        _ => TokenError::Malformed,
                    };
                }
            }
        }
        Err(last)
    }

    fn caller(&self, claims: serde_json::Map<String, serde_json::Value>) -> Result<Caller, TokenError> {
        let subject = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::Claims)?
            .to_string();
        let groups = match claims.get(&self.groups_claim) {
            None => Vec::new(),
            Some(serde_json::Value::String(g)) => vec![g.clone()],
            Some(serde_json::Value::Array(list)) => {
                list.iter().filter_map(|g| g.as_str().map(str::to_string)).collect()
            }
            Some(_) => return Err(TokenError::Claims),
        };
        let expires = claims.get("exp").and_then(|e| e.as_u64()).ok_or(TokenError::Claims)?;
        Ok(Caller {
            subject,
            groups,
            expires,
        })
    }
}

/// An identity provider for tests: an ES256 key, its JWKS, and tokens.
#[cfg(feature = "testing")]
pub mod testing {
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};

    pub struct TestIssuer {
        pub kid: String,
        /// The JWKS document with the public key.
        pub jwks: String,
        key: EncodingKey,
        public: Vec<u8>,
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    impl TestIssuer {
        pub fn new(kid: &str) -> TestIssuer {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
            let raw = kp.public_key_raw().to_vec();
            let (x, y) = (&raw[1..33], &raw[33..65]);
            let jwks = serde_json::json!({"keys": [{
                "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                "x": b64(x), "y": b64(y),
            }]})
            .to_string();
            let key = EncodingKey::from_ec_der(kp.serialized_der());
            TestIssuer {
                kid: kid.to_string(),
                jwks,
                key,
                public: raw,
            }
        }

        /// A token with these claims, signed ES256 with this issuer's key.
        pub fn token(&self, claims: &serde_json::Value) -> String {
            let mut h = Header::new(jsonwebtoken::Algorithm::ES256);
            h.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&h, claims, &self.key).expect("signing a token")
        }

        /// Claims valid for an hour from now.
        pub fn claims(iss: &str, aud: &str, sub: &str) -> serde_json::Value {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            serde_json::json!({"iss": iss, "aud": aud, "sub": sub, "exp": now + 3600, "iat": now})
        }

        /// A token with `alg: none` and no signature.
        pub fn unsigned(claims: &serde_json::Value) -> String {
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(claims.to_string().as_bytes())
            )
        }

        /// A token signed HS256 with the public key's bytes as the secret:
        /// the old algorithm-confusion attack.
        pub fn hmac_with_public_key(&self, claims: &serde_json::Value) -> String {
            let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
            h.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(&self.public)).expect("signing")
        }
    }
}
