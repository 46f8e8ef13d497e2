//! Bearer tokens signed like an identity provider's: an ES256 (P-256) key pair, the JWKS that
//! publishes its public half, and JWTs signed with the private half. Tests use a fresh key;
//! `cargo xtask` keeps one on disk for local development.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use serde_json::{Value, json};

/// An ES256 signing key and its key id.
pub struct TokenIssuer {
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    key: EncodingKey,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// What a token says about its holder.
#[derive(Debug, Clone)]
pub struct Grant<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub subject: &'a str,
    pub scopes: &'a [&'a str],
    pub ttl: Duration,
}

impl TokenIssuer {
    /// A new random key.
    pub fn generate() -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("the system's random generator works");
        Self::from_pkcs8(pkcs8.as_ref()).expect("a generated key reads back")
    }

    /// The key of a PKCS#8 document (as [`TokenIssuer::pkcs8`] gives it).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, String> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))?;
        let public = pair.public_key().as_ref().to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &public);
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);
        Ok(Self {
            kid,
            pkcs8: pkcs8.to_vec(),
            public,
            key: EncodingKey::from_ec_der(pkcs8),
        })
    }

    /// The private key, PKCS#8 DER: keep it secret.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWKS publishing the public key.
    pub fn jwks(&self) -> Value {
        // An uncompressed P-256 point: 0x04, then x and y, 32 bytes each.
        let (x, y) = self.public[1..].split_at(32);
        json!({"keys": [{
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        }]})
    }

    /// Any claims, signed (ES256, with this key's `kid`).
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("claims serialise and sign")
    }

    /// A token for `grant`, valid from now for its `ttl`.
    pub fn token(&self, grant: &Grant<'_>) -> String {
        let now = now();
        self.sign(&json!({
            "iss": grant.issuer,
            "aud": grant.audience,
            "sub": grant.subject,
            "scope": grant.scopes.join(" "),
            "iat": now,
            "nbf": now,
            "exp": now + grant.ttl.as_secs(),
        }))
    }
}

/// Seconds since the Unix epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}
