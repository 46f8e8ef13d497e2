//! The local platform's token signing key: made on first use (`cargo xtask up`,
//! `cargo xtask token`) in `.dockyard/dev-keys/` at the repository root, which git ignores.
//! `signing-key.pk8` is the private key (ES256, mode 0600); `jwks.json` its public half, which
//! the gateway verifies tokens with (`AUTH_JWKS_FILE`; Compose mounts it as a secret).

use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use dockyard_testkit::{Grant, TokenIssuer};

/// The `iss` and `aud` of local tokens, and what the local gateway expects.
pub const ISSUER: &str = "dockyard-dev";
pub const AUDIENCE: &str = "dockyard";
/// The gateway's rules on the local platform (and in Compose and Kubernetes): catalog reads
/// are public, catalog writes need `catalog:write`, every order call needs a customer.
pub const POLICIES: &str =
    "catalog GET,HEAD public; catalog * scope:catalog:write; orders * customer";
/// The scope that may change the catalog.
pub const CATALOG_WRITE: &str = "catalog:write";

/// Where the keys live: `DOCKYARD_KEYS_DIR`, else `.dockyard/dev-keys` in the repository.
pub fn dir() -> PathBuf {
    std::env::var_os("DOCKYARD_KEYS_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.dockyard/dev-keys"),
        PathBuf::from,
    )
}

/// The local signing key and the path of its JWKS, both created when missing. Processes
/// racing to create them agree on one key: it is linked into place only if none is there.
pub fn ensure() -> anyhow::Result<(TokenIssuer, PathBuf)> {
    let dir = dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key_path = dir.join("signing-key.pk8");
    if !key_path.exists() {
        let fresh = TokenIssuer::generate();
        let temp = dir.join(format!(".signing-key-{}", uuid::Uuid::new_v4().simple()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?
            .write_all(fresh.pkcs8())?;
        let linked = std::fs::hard_link(&temp, &key_path);
        std::fs::remove_file(&temp)?;
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).context("storing the signing key"),
        }
    }
    let issuer = TokenIssuer::from_pkcs8(&std::fs::read(&key_path)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key_path.display()))?;
    let jwks_path = dir.join("jwks.json");
    let jwks = issuer.jwks().to_string();
    if std::fs::read_to_string(&jwks_path).ok().as_deref() != Some(jwks.as_str()) {
        let temp = dir.join(format!(".jwks-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&temp, &jwks)?;
        // Public, and read by the gateway's container user when Compose mounts it.
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&temp, &jwks_path)?;
    }
    Ok((issuer, jwks_path))
}

/// A local token for `subject` with `scopes`, valid for `ttl`.
pub fn token(issuer: &TokenIssuer, subject: &str, scopes: &[&str], ttl: Duration) -> String {
    issuer.token(&Grant {
        issuer: ISSUER,
        audience: AUDIENCE,
        subject,
        scopes,
        ttl,
    })
}

/// `request` with `token` as its bearer token, when there is one (a platform without auth
/// gives none).
pub fn with_token(
    request: reqwest::RequestBuilder,
    token: Option<&str>,
) -> reqwest::RequestBuilder {
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}
