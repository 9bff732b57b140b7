//! The distribution token flow: parse an origin's `WWW-Authenticate` challenge, fetch a bearer token
//! from its realm, and keep tokens per (registry, scope, credential) until shortly before they expire.
//! Concurrent requests needing the same token wait for one token request instead of each sending one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use super::creds::Credential;

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
    Basic,
    Other,
}

impl Challenge {
    pub fn parse(header: &str) -> Challenge {
        let header = header.trim();
        let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Challenge::Basic;
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Challenge::Other;
        }
        let params = parse_params(rest);
        match params.get("realm") {
            Some(realm) => Challenge::Bearer {
                realm: realm.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            },
            None => Challenge::Other,
        }
    }
}

/// `key="value", key=value` pairs; quoted values may contain commas and escaped quotes.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
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
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n)
                            }
                        }
                        '"' => break,
                        c => value.push(c),
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
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    out
}

/// Credentials go only to a token realm on the registry's own domain (same host, or the same last two
/// DNS labels, as `auth.docker.io` for `registry-1.docker.io`); elsewhere the token is asked anonymously.
pub fn realm_trusted(realm: &Url, endpoint: &Url) -> bool {
    let (Some(r), Some(e)) = (realm.host_str(), endpoint.host_str()) else {
        return false;
    };
    if r.eq_ignore_ascii_case(e) {
        return true;
    }
    let is_ip = |h: &str| h.parse::<std::net::IpAddr>().is_ok() || h.starts_with('[');
    if is_ip(r) || is_ip(e) {
        return false;
    }
    let tail = |h: &str| {
        let labels: Vec<&str> = h.rsplit('.').take(2).collect();
        (labels.len() == 2).then(|| labels.join(".").to_ascii_lowercase())
    };
    matches!((tail(r), tail(e)), (Some(a), Some(b)) if a == b)
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token service {realm} refused the request with {status}")]
    Denied { realm: String, status: u16 },
    #[error("token request to {realm} failed: {reason}")]
    Failed { realm: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub registry: String,
    pub endpoint: String,
    pub scope: String,
    /// `Credential::id()`, or empty for anonymous tokens.
    pub credential: String,
}

#[derive(Clone)]
struct Token {
    value: String,
    expires: Instant,
}

/// Tokens are reused until this long before their stated expiry.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// What to ask a token realm for, from the origin's challenge.
#[derive(Clone, Copy)]
pub struct TokenRequest<'a> {
    pub realm: &'a str,
    pub service: Option<&'a str>,
    pub scope: &'a str,
    pub credential: Option<&'a Credential>,
    /// A token the origin just refused: never handed out again.
    pub rejected: Option<&'a str>,
}

#[derive(Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<TokenKey, Arc<tokio::sync::Mutex<Option<Token>>>>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl TokenCache {
    fn slot(&self, key: &TokenKey) -> Arc<tokio::sync::Mutex<Option<Token>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key.clone()).or_default().clone()
    }

    /// A token still valid for `key`, waiting for a request in progress rather than racing it.
    pub async fn cached(&self, key: &TokenKey) -> Option<String> {
        let slot = self.slot(key);
        let guard = slot.lock().await;
        guard.as_ref().filter(|t| t.expires > Instant::now()).map(|t| t.value.clone())
    }

    /// A fresh token for `key` from `realm`. `rejected` is a token the origin just refused: it is not
    /// handed out again. Concurrent callers share one request.
    pub async fn fetch(
        &self,
        http: &reqwest::Client,
        key: &TokenKey,
        r: &TokenRequest<'_>,
    ) -> Result<String, TokenError> {
        let TokenRequest { realm: challenge_realm, service, scope, credential, rejected } = *r;
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        if let Some(t) = guard.as_ref() {
            if t.expires > Instant::now() && Some(t.value.as_str()) != rejected {
                return Ok(t.value.clone());
            }
        }
        let failed = |reason: String| TokenError::Failed { realm: challenge_realm.to_owned(), reason };
        let mut url = Url::parse(challenge_realm).map_err(|e| failed(format!("bad realm URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(failed("realm is not an http(s) URL".into()));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let req = match credential {
            // An OAuth2 refresh token (docker's `identitytoken`): the token endpoint's POST form.
            Some(c) if c.username == super::sources::IDENTITY_TOKEN_USER => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token");
                form.append_pair("refresh_token", &c.password);
                form.append_pair("client_id", "ocicache");
                form.append_pair("scope", scope);
                if let Some(s) = service {
                    form.append_pair("service", s);
                }
                let mut base = url.clone();
                base.set_query(None);
                http.post(base)
                    .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form.finish())
            }
            Some(c) => http.get(url).basic_auth(&c.username, Some(&c.password)),
            None => http.get(url),
        };
        let resp = req.send().await.map_err(|e| failed(crate::upstream::client::describe(&e)))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(TokenError::Denied { realm: challenge_realm.to_owned(), status: status.as_u16() });
        }
        if !status.is_success() {
            return Err(failed(format!("status {status}")));
        }
        let body: TokenResponse = resp.json().await.map_err(|e| failed(format!("bad token response: {e}")))?;
        let value = body
            .token
            .filter(|t| !t.is_empty())
            .or(body.access_token)
            .ok_or_else(|| failed("response has neither token nor access_token".into()))?;
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(60).max(60));
        *guard = Some(Token { value: value.clone(), expires: Instant::now() + lifetime - EXPIRY_MARGIN });
        Ok(value)
    }
}
