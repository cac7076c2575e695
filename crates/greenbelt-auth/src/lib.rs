//! Who may do what: bearer tokens with a name and a role, compared in
//! constant time, and the one policy that says which endpoint needs which
//! role. Every router the server mounts (V2, registry, rollouts, feature
//! store, admin) sits behind [`middleware`]; gRPC handlers call
//! [`Auth::authenticate`] and [`Auth::require`] themselves.
//!
//! - Roles: `admin` (everything), `deployer` (registry and rollout writes,
//!   model control, forcing a release track, reading shadow samples),
//!   `feature-writer` (`/features/push`), `viewer` (reading request data:
//!   shadow samples).
//! - No tokens configured: the single-machine default. Every caller is
//!   `anonymous` with every role — which is why a server bound to a
//!   non-loopback address refuses to start without tokens unless told
//!   `insecure` (see [`check_exposure`]).
//! - The audit actor is the token's name, never a header.
//! - Tokens come from a file (`[auth] tokens_file`, TOML `[[tokens]]`) or the
//!   `GREENBELT_TOKENS` environment variable, so they stay out of project
//!   files; a file may hold a token's SHA-256 instead of the token.

mod config;
mod layer;

use sha2::{Digest, Sha256};

pub use config::{AuthConfig, ModelControl, TokenSpec, TokensFile};
pub use layer::{AuthLayer, AuthService, Caller, middleware, policy};

/// What a token may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Registry and rollout writes, model control, forcing a release
    /// track, reading shadow samples.
    Deployer,
    /// `/features/push`.
    FeatureWriter,
    /// Reading request data (shadow samples).
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deployer => "deployer",
            Role::FeatureWriter => "feature-writer",
            Role::Viewer => "viewer",
        }
    }

    /// Whether a holder of `self` may do what needs `needed`.
    pub fn grants(self, needed: Role) -> bool {
        match self {
            Role::Admin => true,
            Role::Deployer => matches!(needed, Role::Deployer | Role::Viewer),
            Role::FeatureWriter => needed == Role::FeatureWriter,
            Role::Viewer => needed == Role::Viewer,
        }
    }

    pub fn parse(text: &str) -> Result<Role, AuthError> {
        match text {
            "admin" => Ok(Role::Admin),
            "deployer" => Ok(Role::Deployer),
            "feature-writer" => Ok(Role::FeatureWriter),
            "viewer" => Ok(Role::Viewer),
            other => Err(AuthError::Config(format!(
                "role \"{other}\" is unknown; use admin, deployer, feature-writer or viewer"
            ))),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name: the actor in audit records.
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// The caller of a server with no tokens configured.
    pub fn anonymous() -> Principal {
        Principal {
            name: "anonymous".into(),
            role: Role::Admin,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, or one that matches nothing (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token whose role does not allow this (403), or a capability
    /// that is switched off.
    #[error("{0}")]
    Forbidden(String),
    /// A token file or variable that cannot be used.
    #[error("{0}")]
    Config(String),
}

struct Entry {
    name: String,
    role: Role,
    digest: [u8; 32],
}

/// The configured tokens and switches.
pub struct Auth {
    tokens: Vec<Entry>,
    model_control: ModelControl,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Equal without an early exit, so timing does not reveal a prefix.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// No tokens: every caller is [`Principal::anonymous`].
    pub fn open() -> Auth {
        Auth {
            tokens: Vec::new(),
            model_control: ModelControl::None,
        }
    }

    /// Build from token specs (names unique, tokens non-empty).
    pub fn new(specs: &[TokenSpec], model_control: ModelControl) -> Result<Auth, AuthError> {
        let mut tokens: Vec<Entry> = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            if s.name.is_empty() || s.name.len() > 100 {
                return Err(AuthError::Config(format!(
                    "token {i}: name must be 1 to 100 characters"
                )));
            }
            if tokens.iter().any(|t| t.name == s.name) {
                return Err(AuthError::Config(format!(
                    "token name \"{}\" is given twice; names are the audit actor and must be unique",
                    s.name
                )));
            }
            let digest = s
                .digest()
                .map_err(|e| AuthError::Config(format!("token \"{}\": {e}", s.name)))?;
            tokens.push(Entry {
                name: s.name.clone(),
                role: s.role,
                digest,
            });
        }
        Ok(Auth {
            tokens,
            model_control,
        })
    }

    /// Whether any token is configured (else the server is open).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    pub fn model_control(&self) -> ModelControl {
        self.model_control
    }

    /// The caller named by an `Authorization` header value. `Ok(None)`: no
    /// header (anonymous; on an open server, see [`Auth::require`]).
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<Option<Principal>, AuthError> {
        let Some(value) = authorization else {
            return Ok(None);
        };
        let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        else {
            return Err(AuthError::Unauthenticated(
                "the Authorization header must be `Bearer <token>`".into(),
            ));
        };
        if !self.enabled() {
            // An open server has nothing to check a token against; the
            // caller is anonymous like everyone else.
            return Ok(None);
        }
        let presented = digest(token.trim().as_bytes());
        // Compare against every token, so the time does not say which matched.
        let mut found: Option<&Entry> = None;
        for e in &self.tokens {
            if same(&e.digest, &presented) {
                found = Some(e);
            }
        }
        match found {
            Some(e) => Ok(Some(Principal {
                name: e.name.clone(),
                role: e.role,
            })),
            None => Err(AuthError::Unauthenticated(
                "the bearer token matches no configured token".into(),
            )),
        }
    }

    /// The caller, if it may do what needs `role`: 401 without a token,
    /// 403 with one whose role does not grant it. An open server grants
    /// everything to [`Principal::anonymous`].
    pub fn require(&self, who: Option<&Principal>, role: Role) -> Result<Principal, AuthError> {
        if !self.enabled() {
            return Ok(who.cloned().unwrap_or_else(Principal::anonymous));
        }
        match who {
            None => Err(AuthError::Unauthenticated(format!(
                "this needs `Authorization: Bearer <token>` with a token of role {} (or admin)",
                role.as_str()
            ))),
            Some(p) if p.role.grants(role) => Ok(p.clone()),
            Some(p) => Err(AuthError::Forbidden(format!(
                "token \"{}\" has role {}; this needs role {}",
                p.name,
                p.role.as_str(),
                role.as_str()
            ))),
        }
    }

    /// Forcing a deployment's release track (`x-greenbelt-track`) steers
    /// what release analysis sees, so it needs the deployer role.
    pub fn may_force_track(&self, who: Option<&Principal>) -> Result<(), AuthError> {
        self.require(who, Role::Deployer).map(|_| ()).map_err(|e| match e {
            AuthError::Unauthenticated(_) => AuthError::Unauthenticated(
                "x-greenbelt-track forces a release track and needs `Authorization: Bearer <token>` with role deployer; leave the header out to be routed like any client".into(),
            ),
            other => other,
        })
    }

    /// Loading and unloading models over the repository API: off unless
    /// `[auth] model_control = "explicit"`, then the deployer role.
    pub fn may_control_models(&self, who: Option<&Principal>) -> Result<Principal, AuthError> {
        if self.model_control == ModelControl::None {
            return Err(AuthError::Forbidden(
                "model control is off: models load from the repository at start-up; set [auth] model_control = \"explicit\" to allow load/unload calls (they then need a deployer token)".into(),
            ));
        }
        self.require(who, Role::Deployer)
    }
}

/// `url` with its password (and a lone user-info secret) replaced by
/// `***`, for logs and error messages: `postgres://app:pw@db/x` becomes
/// `postgres://app:***@db/x`. Text that is not a URL with user info comes
/// back unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        // `redis://secret@host`: a lone user-info part is the password.
        None => "***".to_string(),
    };
    format!("{}://{shown}{}", &url[..scheme_end], &rest[at..])
}

/// Whether `addr` (host:port) listens only on this machine.
pub fn is_loopback(addr: &str) -> bool {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => addr.starts_with("localhost:"),
    }
}

/// A server that other machines can reach must have tokens, unless the
/// operator says `insecure` on purpose.
pub fn check_exposure(auth: &Auth, addrs: &[&str], insecure: bool) -> Result<(), AuthError> {
    if auth.enabled() || insecure {
        return Ok(());
    }
    match addrs.iter().find(|a| !a.is_empty() && !is_loopback(a)) {
        None => Ok(()),
        Some(a) => Err(AuthError::Config(format!(
            "refusing to listen on {a} with no tokens: anyone who can reach it could load models, change aliases and push features. Configure tokens ([auth] tokens_file = \"tokens.toml\" or GREENBELT_TOKENS=name:role:token), listen on 127.0.0.1, or pass --insecure (or [auth] insecure = true) if something in front of it authenticates"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(
            &[
                TokenSpec::plain("root", Role::Admin, "s3cret-admin"),
                TokenSpec::plain("ci", Role::Deployer, "s3cret-deploy"),
                TokenSpec::plain("etl", Role::FeatureWriter, "s3cret-etl"),
            ],
            ModelControl::Explicit,
        )
        .unwrap()
    }

    #[test]
    fn tokens_name_the_caller_and_roles_gate() {
        let a = auth();
        let ci = a
            .authenticate(Some("Bearer s3cret-deploy"))
            .unwrap()
            .unwrap();
        assert_eq!(ci.name, "ci");
        assert!(a.require(Some(&ci), Role::Deployer).is_ok());
        assert!(a.require(Some(&ci), Role::Viewer).is_ok());
        let e = a.require(Some(&ci), Role::Admin).unwrap_err();
        assert!(matches!(e, AuthError::Forbidden(_)), "{e}");
        assert!(e.to_string().contains("role deployer"), "{e}");
        let etl = a.authenticate(Some("Bearer s3cret-etl")).unwrap().unwrap();
        assert!(a.require(Some(&etl), Role::FeatureWriter).is_ok());
        assert!(a.require(Some(&etl), Role::Deployer).is_err());
        let root = a
            .authenticate(Some("Bearer s3cret-admin"))
            .unwrap()
            .unwrap();
        for r in [
            Role::Admin,
            Role::Deployer,
            Role::FeatureWriter,
            Role::Viewer,
        ] {
            assert!(a.require(Some(&root), r).is_ok());
        }
    }

    #[test]
    fn wrong_missing_and_malformed_tokens_are_401() {
        let a = auth();
        assert!(matches!(
            a.authenticate(Some("Bearer nope")),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            a.authenticate(Some("Basic abc")),
            Err(AuthError::Unauthenticated(_))
        ));
        assert_eq!(a.authenticate(None).unwrap(), None);
        assert!(matches!(
            a.require(None, Role::Viewer),
            Err(AuthError::Unauthenticated(_))
        ));
        // A prefix of a real token is not a token.
        assert!(a.authenticate(Some("Bearer s3cret")).is_err());
    }

    #[test]
    fn an_open_server_grants_everything_but_model_control() {
        let a = Auth::open();
        assert!(!a.enabled());
        assert_eq!(a.require(None, Role::Admin).unwrap().name, "anonymous");
        assert!(a.may_force_track(None).is_ok());
        let e = a.may_control_models(None).unwrap_err();
        assert!(e.to_string().contains("model_control"), "{e}");
        assert!(auth().may_control_models(None).is_err());
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/reg?sslmode=require"),
            "postgres://app:***@db:5432/reg?sslmode=require"
        );
        assert_eq!(
            redact_url("redis://:hunter2@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(redact_url("redis://hunter2@cache"), "redis://***@cache");
        assert_eq!(redact_url("redis://a:b:c@h/x@y"), "redis://a:***@h/x@y");
        for plain in [
            "sqlite://.greenbelt/registry.db",
            "redis://127.0.0.1:6379",
            "not a url",
            "",
        ] {
            assert_eq!(redact_url(plain), plain);
        }
    }

    #[test]
    fn exposure_needs_tokens_or_insecure() {
        let open = Auth::open();
        assert!(check_exposure(&open, &["127.0.0.1:8000", "[::1]:8001"], false).is_ok());
        let e = check_exposure(&open, &["0.0.0.0:8000"], false).unwrap_err();
        assert!(e.to_string().contains("--insecure"), "{e}");
        assert!(e.to_string().contains("tokens_file"), "{e}");
        assert!(check_exposure(&open, &["0.0.0.0:8000"], true).is_ok());
        assert!(check_exposure(&auth(), &["0.0.0.0:8000"], false).is_ok());
        assert!(check_exposure(&open, &["127.0.0.1:8000", ""], false).is_ok());
    }

    #[test]
    fn duplicate_names_and_empty_tokens_are_config_errors() {
        let e = Auth::new(
            &[
                TokenSpec::plain("a", Role::Admin, "x1"),
                TokenSpec::plain("a", Role::Viewer, "x2"),
            ],
            ModelControl::None,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("given twice"), "{e}");
        let e = Auth::new(
            &[TokenSpec::plain("a", Role::Admin, "")],
            ModelControl::None,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("token \"a\""), "{e}");
    }
}
