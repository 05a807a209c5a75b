//! Registry authentication: the `WWW-Authenticate` challenge (Basic or Bearer), and bearer tokens
//! fetched from the realm the registry names, cached per registry and scope until they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a registry asked for in its `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic {
        realm: Option<String>,
    },
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value (`Bearer realm="…",service="…",scope="…"` or `Basic
/// realm="…"`). Unknown schemes give `None`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.split_once(char::is_whitespace) {
        Some((scheme, rest)) => (scheme, rest),
        None => (header, ""),
    };
    let params = parse_params(rest);
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic {
            realm: get("realm"),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    } else {
        None
    }
}

/// `k="v", k2=v2` pairs; quoted values may hold commas and backslash escapes.
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        if chars.peek() != Some(&'=') {
            continue;
        }
        chars.next();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(escaped) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => break,
                    _ => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.push((key.trim().to_string(), value.trim().to_string()));
    }
    params
}

/// Bearer tokens by (registry, scope), reused while valid.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
}

/// Tokens without `expires_in` live 60 s (the distribution spec's default); we renew a little early.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
const RENEW_MARGIN: Duration = Duration::from_secs(5);

impl TokenCache {
    pub fn get(&self, registry: &str, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        let (token, expires) = tokens.get(&(registry.to_string(), scope.to_string()))?;
        (Instant::now() + RENEW_MARGIN < *expires).then(|| token.clone())
    }

    pub fn put(&self, registry: &str, scope: &str, token: String, lifetime: Option<Duration>) {
        if let Ok(mut tokens) = self.tokens.lock() {
            let expires = Instant::now() + lifetime.unwrap_or(DEFAULT_TOKEN_LIFETIME);
            tokens.insert((registry.to_string(), scope.to_string()), (token, expires));
        }
    }
}

/// The JSON a token endpoint answers with (`token` or the OAuth2 `access_token`).
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub fn into_token(self) -> Option<(String, Option<Duration>)> {
        let lifetime = self.expires_in.map(Duration::from_secs);
        self.token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))
            .map(|t| (t, lifetime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_commas() {
        let challenge = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(
            challenge,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            })
        );
    }

    #[test]
    fn basic_and_unknown_schemes() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic {
                realm: Some("Registry Realm".into())
            })
        );
        assert_eq!(
            parse_challenge("basic"),
            Some(Challenge::Basic { realm: None })
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(
            parse_challenge("Bearer service=x"),
            None,
            "a bearer challenge needs a realm"
        );
    }

    #[test]
    fn token_cache_expires() {
        let cache = TokenCache::default();
        cache.put("r", "s", "t".into(), Some(Duration::from_secs(3600)));
        assert_eq!(cache.get("r", "s").as_deref(), Some("t"));
        assert_eq!(cache.get("r", "other"), None);
        cache.put("r", "s", "old".into(), Some(Duration::from_secs(1)));
        assert_eq!(
            cache.get("r", "s"),
            None,
            "a token about to expire is not reused"
        );
    }

    #[test]
    fn token_response_prefers_token() {
        let response: TokenResponse =
            serde_json::from_str(r#"{"token":"a","access_token":"b","expires_in":300}"#).unwrap();
        assert_eq!(
            response.into_token(),
            Some(("a".into(), Some(Duration::from_secs(300))))
        );
        let response: TokenResponse = serde_json::from_str(r#"{"access_token":"b"}"#).unwrap();
        assert_eq!(response.into_token(), Some(("b".into(), None)));
    }
}
