//! `OriginClient`: one request to an origin registry, with endpoint failover, operator credentials or
//! the client's own, and the token flow. Redirects (blob GETs often answer 307 to a CDN) are followed
//! by reqwest, which drops `Authorization` when the host changes.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, RANGE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, StatusCode};
use url::Url;

use super::auth::{realm_trusted, Challenge, TokenCache, TokenError, TokenKey, TokenRequest};
use super::creds::{Credential, Credentials};
use super::registries::Registries;
use crate::error::{Error, Resource, UpstreamStatus};
use crate::oci::Target;

/// One request for an origin. `client_auth` is set only for a private fetch, made with the
/// credentials the pulling client sent (so such a response must never be cached for others).
pub struct OriginRequest<'a> {
    pub target: &'a Target,
    pub method: Method,
    pub resource: Resource,
    /// Path below `/v2/<repository>/`, e.g. `manifests/1.0` or `blobs/sha256:...`.
    pub path: String,
    pub accept: Option<String>,
    pub range: Option<String>,
    pub client_auth: Option<HeaderValue>,
}

pub struct OriginClient {
    http: reqwest::Client,
    registries: Registries,
    creds: Credentials,
    tokens: TokenCache,
    /// Endpoints that answered with a Basic challenge: later requests send Basic credentials at once.
    basic_endpoints: Mutex<HashSet<String>>,
}

/// How long to wait for a TCP (and TLS) connection to an origin.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read may stall before the transfer counts as failed (and a blob fill resumes).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

impl OriginClient {
    pub fn new(registries: Registries, creds: Credentials) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("ocicache/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))?;
        Ok(OriginClient {
            http,
            registries,
            creds,
            tokens: TokenCache::default(),
            basic_endpoints: Mutex::default(),
        })
    }

    pub fn registries(&self) -> &Registries {
        &self.registries
    }

    /// Sends `req` to the origin's endpoints in order until one answers. A 2xx response is returned;
    /// any other status becomes `Error::Upstream` carrying what the client needs (challenge, Retry-After).
    pub async fn send(&self, req: &OriginRequest<'_>) -> Result<reqwest::Response, Error> {
        let registry = &req.target.registry;
        let endpoints = self
            .registries
            .endpoints(registry)
            .ok_or_else(|| Error::RegistryDenied(registry.clone()))?;
        let mut last = None;
        for endpoint in endpoints {
            match self.attempt(&endpoint, req).await {
                Ok(resp) => return Ok(resp),
                Err(e) if fails_over(&e) => {
                    tracing::warn!(%registry, endpoint = %endpoint, error = %e, "origin endpoint failed");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Unreachable {
            registry: registry.clone(),
            reason: "no endpoints".into(),
        }))
    }

    async fn attempt(&self, endpoint: &Url, req: &OriginRequest<'_>) -> Result<reqwest::Response, Error> {
        let url = format!(
            "{}/v2/{}/{}",
            endpoint.as_str().trim_end_matches('/'),
            req.target.repository,
            req.path
        );
        let url = Url::parse(&url).map_err(|e| self.unreachable(req, format!("bad URL {url}: {e}")))?;

        if let Some(client_auth) = &req.client_auth {
            let resp = self.send_once(req, &url, Some(client_auth.clone())).await?;
            return self.classify(req, resp);
        }

        let credential = self.creds.lookup(&req.target.registry, &req.target.repository);
        let key = TokenKey {
            registry: req.target.registry.to_string(),
            endpoint: endpoint.to_string(),
            scope: format!("repository:{}:pull", req.target.repository),
            credential: credential.map(Credential::id).unwrap_or_default(),
        };
        let basic_known = self
            .basic_endpoints
            .lock()
            .map(|s| s.contains(endpoint.as_str()))
            .unwrap_or(false);
        let first_auth = match (basic_known, credential) {
            (true, Some(c)) => Some(basic(c)),
            _ => self.tokens.cached(&key).await.map(|t| bearer(&t)),
        };
        let sent_token = first_auth.clone();
        let resp = self.send_once(req, &url, first_auth).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return self.classify(req, resp);
        }

        let challenge_header = resp.headers().get(WWW_AUTHENTICATE).cloned();
        let challenge = challenge_header
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(Challenge::parse);
        let rejected = |detail: String| Error::CredentialsRejected {
            registry: req.target.registry.clone(),
            detail,
            challenge: challenge_header.clone(),
        };
        match challenge {
            Some(Challenge::Bearer { realm, service, scope }) => {
                let realm_url = Url::parse(&realm).ok();
                let trusted = realm_url.as_ref().is_some_and(|r| realm_trusted(r, endpoint));
                let use_cred = credential.filter(|_| trusted);
                if credential.is_some() && !trusted {
                    tracing::warn!(registry = %req.target.registry, %realm, "token realm is not on the registry's domain; not sending credentials");
                }
                let scope = scope.unwrap_or_else(|| key.scope.clone());
                let stale = sent_token
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.strip_prefix("Bearer "));
                let token_req = TokenRequest {
                    realm: &realm,
                    service: service.as_deref(),
                    scope: &scope,
                    credential: use_cred,
                    rejected: stale,
                };
                let token = self.tokens.fetch(&self.http, &key, &token_req).await;
                match token {
                    Ok(token) => {
                        let resp = self.send_once(req, &url, Some(bearer(&token))).await?;
                        if resp.status() == StatusCode::UNAUTHORIZED && use_cred.is_some() {
                            return Err(rejected("the registry refused the token issued for them".into()));
                        }
                        self.classify(req, resp)
                    }
                    Err(TokenError::Denied { status, .. }) if use_cred.is_some() => {
                        Err(rejected(format!("token service answered {status}")))
                    }
                    Err(e @ TokenError::Failed { .. }) => Err(self.unreachable(req, e.to_string())),
                    // Anonymous token refused: the client must authenticate itself.
                    Err(TokenError::Denied { .. }) => self.classify(req, resp),
                }
            }
            Some(Challenge::Basic) => match credential {
                Some(c) => {
                    if let Ok(mut s) = self.basic_endpoints.lock() {
                        s.insert(endpoint.to_string());
                    }
                    let resp = self.send_once(req, &url, Some(basic(c))).await?;
                    if resp.status() == StatusCode::UNAUTHORIZED {
                        return Err(rejected("basic authentication failed".into()));
                    }
                    self.classify(req, resp)
                }
                None => self.classify(req, resp),
            },
            _ => self.classify(req, resp),
        }
    }

    async fn send_once(
        &self,
        req: &OriginRequest<'_>,
        url: &Url,
        auth: Option<HeaderValue>,
    ) -> Result<reqwest::Response, Error> {
        let mut builder = self.http.request(req.method.clone(), url.clone());
        if let Some(a) = &req.accept {
            builder = builder.header(ACCEPT, a);
        }
        if let Some(r) = &req.range {
            builder = builder.header(RANGE, r);
        }
        if let Some(a) = auth {
            builder = builder.header(AUTHORIZATION, a);
        }
        builder.send().await.map_err(|e| self.unreachable(req, describe(&e)))
    }

    fn classify(&self, req: &OriginRequest<'_>, resp: reqwest::Response) -> Result<reqwest::Response, Error> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        Err(Error::Upstream(Box::new(UpstreamStatus {
            registry: req.target.registry.clone(),
            resource: req.resource,
            what: format!("{}/{}", req.target.repository, req.path),
            status,
            challenge: resp.headers().get(WWW_AUTHENTICATE).cloned(),
            retry_after: resp.headers().get(RETRY_AFTER).cloned(),
        })))
    }

    fn unreachable(&self, req: &OriginRequest<'_>, reason: String) -> Error {
        Error::Unreachable {
            registry: req.target.registry.clone(),
            reason,
        }
    }
}

/// Failures worth trying the next endpoint for: the endpoint is down or overloaded, not "no such thing".
fn fails_over(e: &Error) -> bool {
    match e {
        Error::Unreachable { .. } => true,
        Error::Upstream(u) => u.status.is_server_error() || u.status == StatusCode::TOO_MANY_REQUESTS,
        _ => false,
    }
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

fn basic(c: &Credential) -> HeaderValue {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
    let mut v =
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

/// A reqwest error with its causes, since the top-level message alone ("error sending request")
/// does not tell an operator what went wrong.
pub fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
