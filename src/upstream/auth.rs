//! The distribution token flow: parse an origin's `WWW-Authenticate` challenge, fetch a bearer token
//! from its realm, and keep tokens per (registry, scope, credential) until shortly before they expire.
//! Concurrent requests needing the same token wait for one token request instead of each sending one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::policy::{EvictionPolicy, Expiry};

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

/// Token slots kept at most. A key is (registry, endpoint, repository, credential), and repository
/// names are the client's to invent: Docker Hub challenges for any name, so without a bound every
/// invented name would keep a slot. 4,096 (a few MiB) is more than the repositories a fleet pulls
/// within a token's lifetime; a slot evicted early costs one token request.
const MAX_SLOTS: u64 = 4_096;

/// How long a slot with no token yet is kept: longer than a token request can take (connect timeout
/// plus read timeout), so waiters share one request. Once a token is in it, the slot lives as long as
/// the token does.
const SLOT_WITHOUT_TOKEN: Duration = Duration::from_secs(120);

/// One key's token behind an async lock: the caller that fetches holds the lock and everyone else
/// asking for the key waits for its answer instead of sending a request of their own. Waiters hold
/// the `Arc`, so a slot evicted from the table while a request runs still coalesces those waiters;
/// only a caller arriving after the eviction would send a second request.
#[derive(Default)]
struct Slot {
    token: tokio::sync::Mutex<Option<Token>>,
    /// Seconds the slot's token lives (0 until one was fetched): how long the table keeps the slot.
    lifetime_secs: AtomicU64,
}

/// Slots expire with their token: a slot is worth nothing after it.
struct SlotExpiry;

impl Expiry<TokenKey, Arc<Slot>> for SlotExpiry {
    fn expire_after_create(&self, _: &TokenKey, _: &Arc<Slot>, _: std::time::Instant) -> Option<Duration> {
        Some(SLOT_WITHOUT_TOKEN)
    }

    fn expire_after_update(
        &self,
        _: &TokenKey,
        slot: &Arc<Slot>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_secs(slot.lifetime_secs.load(Ordering::Relaxed)).max(SLOT_WITHOUT_TOKEN))
    }
}

pub struct TokenCache {
    /// LRU (see `crate::bounded`): a flood of invented names must not keep a real client's slot out.
    slots: moka::sync::Cache<TokenKey, Arc<Slot>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        let slots = moka::sync::Cache::builder()
            .max_capacity(MAX_SLOTS)
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(SlotExpiry)
            .build();
        TokenCache { slots }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl TokenCache {
    fn slot(&self, key: &TokenKey) -> Arc<Slot> {
        self.slots.get_with_by_ref(key, Arc::default)
    }

    /// A token still valid for `key`, waiting for a request in progress rather than racing it.
    /// Looking does not make a slot: most requests go to origins that never ask for a token.
    pub async fn cached(&self, key: &TokenKey) -> Option<String> {
        let slot = self.slots.get(key)?;
        let guard = slot.token.lock().await;
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
        let mut guard = slot.token.lock().await;
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
            Some(Credential::IdentityToken(token)) => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token");
                form.append_pair("refresh_token", token);
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
            Some(Credential::Password { username, password }) => http.get(url).basic_auth(username, Some(password)),
            None => http.get(url),
        };
        let resp = req.send().await.map_err(|e| failed(crate::upstream::describe(&e)))?;
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
        // Written again so the table keeps the slot for the token's life (and holds this slot even
        // if the key was evicted while the request ran).
        slot.lifetime_secs.store(lifetime.as_secs(), Ordering::Relaxed);
        self.slots.insert(key.clone(), slot.clone());
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn key(repo: &str) -> TokenKey {
        TokenKey {
            registry: "r.test".into(),
            endpoint: "https://r.test/".into(),
            scope: format!("repository:{repo}:pull"),
            credential: String::new(),
        }
    }

    #[tokio::test]
    async fn looking_for_tokens_of_invented_repositories_keeps_nothing() {
        let cache = TokenCache::default();
        for i in 0..100_000 {
            assert!(cache.cached(&key(&format!("invented/{i}"))).await.is_none());
        }
        cache.slots.run_pending_tasks();
        assert_eq!(cache.slots.entry_count(), 0);
    }

    #[test]
    fn slots_stay_within_their_bound() {
        let cache = TokenCache::default();
        for i in 0..100_000 {
            cache.slot(&key(&format!("invented/{i}")));
        }
        cache.slots.run_pending_tasks();
        assert!(cache.slots.entry_count() <= MAX_SLOTS, "{} slots", cache.slots.entry_count());
    }

    /// A token realm that answers only when released, counting requests. An in-process stand-in: no
    /// token server is packaged here, and the test needs to hold an answer back on demand.
    async fn held_realm(requests: Arc<AtomicUsize>, release: Arc<tokio::sync::Notify>) -> String {
        test_realm(r#"{"token":"t1","expires_in":300}"#, move |_| {
            let (requests, release) = (requests.clone(), release.clone());
            Box::pin(async move {
                requests.fetch_add(1, Ordering::SeqCst);
                release.notified().await;
            })
        })
        .await
    }

    /// What a test realm does with each whole request (head and body, as text) before it answers.
    type OnRequest = dyn Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync;

    /// A token realm on 127.0.0.1 that reads each request whole, lets `on_request` see it (and hold the
    /// answer), then answers 200 with `body`.
    async fn test_realm(
        body: &'static str,
        on_request: impl Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
            + Send
            + Sync
            + 'static,
    ) -> String {
        let on_request: Arc<OnRequest> = Arc::new(on_request);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let on_request = on_request.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut req = Vec::new();
                    let text = loop {
                        let Ok(n) = sock.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        req.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&req).to_string();
                        let Some((head, rest)) = text.split_once("\r\n\r\n") else { continue };
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if rest.len() >= len {
                            break text;
                        }
                    };
                    on_request(text).await;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/token")
    }

    #[tokio::test]
    async fn waiters_share_one_token_request_even_when_a_flood_evicts_their_slot() {
        let requests = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let realm = held_realm(requests.clone(), release.clone()).await;
        let cache = Arc::new(TokenCache::default());
        let http = reqwest::Client::new();
        let k = key("real/app");
        let mut waiters = Vec::new();
        for _ in 0..8 {
            let (cache, http, k, realm) = (cache.clone(), http.clone(), k.clone(), realm.clone());
            waiters.push(tokio::spawn(async move {
                let r =
                    TokenRequest { realm: &realm, service: None, scope: &k.scope, credential: None, rejected: None };
                cache.fetch(&http, &k, &r).await
            }));
        }
        // Bounded poll: the first request has reached the realm, the other seven wait on its slot.
        for _ in 0..2_000 {
            if requests.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        for i in 0..(2 * MAX_SLOTS) {
            cache.slot(&key(&format!("flood/{i}")));
        }
        cache.slots.run_pending_tasks();
        assert!(!cache.slots.contains_key(&k), "the flood evicted the waiting slot");
        release.notify_one();
        for w in waiters {
            assert_eq!(w.await.unwrap().unwrap(), "t1");
        }
        assert_eq!(requests.load(Ordering::SeqCst), 1, "one token request for all eight");
        assert_eq!(cache.cached(&k).await.as_deref(), Some("t1"), "the token is kept after the flood");
    }

    /// A realm that records each request (head and body): an in-process stand-in, to see exactly what
    /// a credential is turned into on the wire.
    async fn recording_realm(seen: Arc<std::sync::Mutex<Vec<String>>>) -> String {
        test_realm(r#"{"access_token":"t2","expires_in":300}"#, move |text| {
            seen.lock().unwrap().push(text);
            Box::pin(async {})
        })
        .await
    }

    #[tokio::test]
    async fn an_identity_token_is_exchanged_with_the_refresh_grant_and_a_password_goes_as_basic() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let realm = recording_realm(seen.clone()).await;
        let http = reqwest::Client::new();
        let cache = TokenCache::default();
        let token = Credential::from_user("<token>".into(), "refresh-secret".into());
        assert_eq!(token, Credential::IdentityToken("refresh-secret".into()));
        assert!(token.basic().is_none(), "an identity token is never Basic");
        let k = key("a/b");
        let r = TokenRequest {
            realm: &realm,
            service: Some("reg"),
            scope: &k.scope,
            credential: Some(&token),
            rejected: None,
        };
        assert_eq!(cache.fetch(&http, &k, &r).await.unwrap(), "t2");
        let password = Credential::from_user("alice".into(), "pw".into());
        let k2 = TokenKey { credential: password.id(), ..key("a/b") };
        let r = TokenRequest { credential: Some(&password), ..r };
        assert_eq!(cache.fetch(&http, &k2, &r).await.unwrap(), "t2");

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        let (post, get) = (&seen[0], &seen[1]);
        assert!(post.starts_with("POST /token "), "{post}");
        assert!(post.contains("grant_type=refresh_token") && post.contains("refresh_token=refresh-secret"), "{post}");
        assert!(!post.to_ascii_lowercase().contains("authorization:"), "{post}");
        assert!(get.starts_with("GET /token?"), "{get}");
        // base64("alice:pw")
        assert!(get.contains("YWxpY2U6cHc="), "{get}");
        assert_ne!(token.id(), password.id());
    }
}
