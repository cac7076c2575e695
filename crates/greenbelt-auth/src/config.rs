//! Where tokens come from: `[auth]` in `greenbelt.toml` names a tokens file;
//! `GREENBELT_TOKENS` adds tokens from the environment. The project file
//! never holds a token.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Auth, AuthError, Role};

/// `[auth]` in `greenbelt.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A TOML file of `[[tokens]]` (name, role, token or sha256). Keep it
    /// out of the repository (e.g. a Kubernetes Secret mounted as a file).
    pub tokens_file: Option<PathBuf>,
    /// Serve on a non-loopback address with no tokens (something in front
    /// authenticates). Off by default: such a server refuses to start.
    pub insecure: bool,
    /// `none` (default, like Triton's `--model-control-mode=none`): the
    /// repository's load/unload calls are refused. `explicit`: allowed with
    /// a deployer token.
    pub model_control: ModelControl,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ModelControl {
    /// The repository's load/unload calls are refused.
    #[default]
    None,
    /// Load/unload calls are allowed with a deployer token.
    Explicit,
}

/// One token: its name (the audit actor), its role, and the token itself
/// or its SHA-256 (hex), so a file need not hold the secret.
#[derive(Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// The token's name: the actor in audit records.
    pub name: String,
    /// What the token may do: `admin`, `deployer`, `feature-writer` or
    /// `viewer`.
    pub role: Role,
    /// The token itself; or give `sha256`.
    #[serde(default)]
    pub token: Option<String>,
    /// The token's SHA-256, 64 hex digits (`printf %s "$TOKEN" | sha256sum`),
    /// so the file need not hold the secret.
    #[serde(default)]
    pub sha256: Option<String>,
}

impl std::fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSpec")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl TokenSpec {
    pub fn plain(name: &str, role: Role, token: &str) -> TokenSpec {
        TokenSpec {
            name: name.into(),
            role,
            token: Some(token.into()),
            sha256: None,
        }
    }

    pub(crate) fn digest(&self) -> Result<[u8; 32], String> {
        match (&self.token, &self.sha256) {
            (Some(t), None) if !t.trim().is_empty() => Ok(crate::digest(t.trim().as_bytes())),
            (Some(_), None) => Err("token is empty".into()),
            (None, Some(hex)) => parse_hex(hex.trim()),
            _ => Err("give exactly one of token or sha256".into()),
        }
    }
}

fn parse_hex(hex: &str) -> Result<[u8; 32], String> {
    let bad =
        || "sha256 must be 64 hex digits (e.g. `printf %s \"$TOKEN\" | sha256sum`)".to_string();
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
        *b = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The tokens file: `[[tokens]]` entries.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// One entry per token.
    #[serde(default)]
    pub tokens: Vec<TokenSpec>,
}

impl TokensFile {
    pub fn read(path: &Path) -> Result<TokensFile, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            AuthError::Config(format!(
                "[auth] tokens_file {}: cannot read it: {e}",
                path.display()
            ))
        })?;
        toml::from_str(&text)
            .map_err(|e| AuthError::Config(format!("[auth] tokens_file {}: {e}", path.display())))
    }
}

/// `GREENBELT_TOKENS`: `name:role:token` entries separated by commas.
pub fn parse_env_tokens(value: &str) -> Result<Vec<TokenSpec>, AuthError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, entry)| {
            let mut parts = entry.splitn(3, ':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(name), Some(role), Some(token)) => Ok(TokenSpec::plain(
                    name,
                    Role::parse(role).map_err(|e| {
                        AuthError::Config(format!("GREENBELT_TOKENS entry {i}: {e}"))
                    })?,
                    token,
                )),
                _ => Err(AuthError::Config(format!(
                    "GREENBELT_TOKENS entry {i} is not name:role:token"
                ))),
            }
        })
        .collect()
}

impl AuthConfig {
    /// Every configured token: the file's, then `env_tokens`
    /// (`GREENBELT_TOKENS`), then `legacy_admin` (`[registry] admin_tokens`,
    /// name = token, each an admin).
    pub fn build(
        &self,
        env_tokens: Option<&str>,
        legacy_admin: &BTreeMap<String, String>,
    ) -> Result<Auth, AuthError> {
        let mut specs = Vec::new();
        if let Some(path) = &self.tokens_file {
            specs.extend(TokensFile::read(path)?.tokens);
        }
        if let Some(v) = env_tokens {
            specs.extend(parse_env_tokens(v)?);
        }
        for (name, token) in legacy_admin {
            specs.push(TokenSpec::plain(name, Role::Admin, token));
        }
        Auth::new(&specs, self.model_control)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_a_file_the_environment_and_legacy_admin_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.toml");
        let hash = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"; // "password"
        std::fs::write(
            &file,
            format!(
                "[[tokens]]\nname = \"ci\"\nrole = \"deployer\"\ntoken = \"tok-ci\"\n\n[[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{hash}\"\n"
            ),
        )
        .unwrap();
        let cfg = AuthConfig {
            tokens_file: Some(file),
            ..Default::default()
        };
        let legacy = BTreeMap::from([("old".to_string(), "tok-old".to_string())]);
        let auth = cfg
            .build(
                Some("etl:feature-writer:tok-etl, viewer1:viewer:tok:with:colons"),
                &legacy,
            )
            .unwrap();
        let who = |t: &str| {
            auth.authenticate(Some(&format!("Bearer {t}")))
                .unwrap()
                .map(|p| (p.name, p.role))
        };
        assert_eq!(who("tok-ci"), Some(("ci".into(), Role::Deployer)));
        assert_eq!(who("password"), Some(("ops".into(), Role::Admin)));
        assert_eq!(who("tok-etl"), Some(("etl".into(), Role::FeatureWriter)));
        assert_eq!(
            who("tok:with:colons"),
            Some(("viewer1".into(), Role::Viewer))
        );
        assert_eq!(who("tok-old"), Some(("old".into(), Role::Admin)));
    }

    #[test]
    fn bad_token_sources_name_the_entry_and_the_fix() {
        let e = parse_env_tokens("a:admin").unwrap_err();
        assert!(e.to_string().contains("name:role:token"), "{e}");
        let e = parse_env_tokens("a:root:x").unwrap_err();
        assert!(e.to_string().contains("role \"root\""), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(
            &file,
            "[[tokens]]\nname = \"a\"\nrole = \"admin\"\ntokn = \"x\"\n",
        )
        .unwrap();
        let e = TokensFile::read(&file).unwrap_err();
        assert!(e.to_string().contains("tokn"), "{e}");
        std::fs::write(
            &file,
            "[[tokens]]\nname = \"a\"\nrole = \"admin\"\nsha256 = \"abc\"\n",
        )
        .unwrap();
        let cfg = AuthConfig {
            tokens_file: Some(file),
            ..Default::default()
        };
        let e = cfg.build(None, &BTreeMap::new()).err().unwrap();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
    }

    #[test]
    fn a_token_never_shows_in_debug_output() {
        let s = format!("{:?}", TokenSpec::plain("a", Role::Admin, "hunter2-secret"));
        assert!(!s.contains("hunter2"), "{s}");
    }
}
