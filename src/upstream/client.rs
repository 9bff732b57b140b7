//! `OriginClient`: one request to an origin registry, with endpoint failover, operator credentials or
//! the client's own, and the token flow. Redirects (blob GETs often answer 307 to a CDN) are followed
//! by reqwest, which drops `Authorization` when the host changes. Where redirects and token realms
//! may lead depends on the registry's [`Trust`]: each trust level has its own HTTP client, because a
//! reqwest redirect policy and resolver cannot see which registry a request serves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, RANGE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, StatusCode};
use url::Url;

use super::auth::{realm_trusted, Challenge, TokenCache, TokenError, TokenKey, TokenRequest};
use super::creds::Credential;
use super::describe;
use super::egress::{EgressPolicy, Trust};
use super::health::{ceil_secs, Admission, OriginHealth, Refusal};
use super::registries::Registries;
use super::sources::{endpoint_name, CredentialSources, Sourced};
use crate::config::OriginTls;
use crate::error::{Error, Resource, UpstreamStatus};
use crate::metrics::Metrics;
use crate::oci::{RegistryName, Target};

/// Whose identity a request to an origin carries.
#[derive(Debug, Clone)]
pub enum Identity {
    /// The cache's own: operator credentials for the registry when configured, else anonymous.
    Cache,
    /// Exactly what the pulling client proved: its `Authorization` forwarded as is, or (None) an
    /// anonymous request — never the operator's credentials. Used to fetch private content and to
    /// check that a client may read cached private content.
    Client(Option<HeaderValue>),
}

/// The one rule for whose identity content is fetched with: the cache's own first; when the origin
/// refuses it (401, 403, or 404 — a private repository looks absent to strangers) and the client sent
/// credentials, `retry` once with exactly the client's. Returns the value and whether the cache's own
/// identity was enough (`public`); content fetched with the client's is private.
pub async fn cache_then_client<T, E, Fut>(
    first: Result<T, E>,
    client_auth: Option<&HeaderValue>,
    retry: impl FnOnce(Identity) -> Fut,
) -> Result<(T, bool), Error>
where
    E: std::borrow::Borrow<Error> + Into<Error>,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    match (first, client_auth) {
        (Ok(v), _) => Ok((v, true)),
        (Err(e), Some(auth)) if e.borrow().wants_client_credentials() => {
            retry(Identity::Client(Some(auth.clone()))).await.map(|v| (v, false))
        }
        (Err(e), _) => Err(e.into()),
    }
}

/// One request for an origin.
pub struct OriginRequest<'a> {
    pub target: &'a Target,
    pub method: Method,
    pub resource: Resource,
    /// Path below `/v2/<repository>/`, e.g. `manifests/1.0` or `blobs/sha256:...`.
    pub path: String,
    pub accept: Option<String>,
    pub range: Option<String>,
    pub identity: Identity,
}

/// How ocicache treats origins that are slow or failing (defaults: `config::Settings::default()`).
#[derive(Debug, Clone)]
pub struct OriginOptions {
    /// Never contact an origin; serve only what is cached.
    pub offline: bool,
    pub connect_timeout: Duration,
    /// Time allowed for the response headers (a stuck origin must not stall a node's pull).
    pub first_byte_timeout: Duration,
    /// How long a failed endpoint is skipped before it is tried again.
    pub endpoint_backoff: Duration,
}

pub struct OriginClient {
    /// For registries the operator named exactly: their redirects and realms may be internal.
    http_named: reqwest::Client,
    /// For registries allowed by the built-in list or a pattern: the egress guard applies in full.
    http_guarded: reqwest::Client,
    egress: EgressPolicy,
    options: OriginOptions,
    health: OriginHealth,
    metrics: Arc<Metrics>,
    registries: Registries,
    creds: Arc<CredentialSources>,
    /// Clients for origins with their own TLS settings (CA, mTLS, insecure); others use `http`.
    tls_clients: BTreeMap<RegistryName, reqwest::Client>,
    tokens: TokenCache,
    /// Endpoints that answered with a Basic challenge: later requests send Basic credentials at once.
    /// Bounded: endpoints of wildcard-allowed registries are client-chosen (forgetting one costs a 401).
    basic_endpoints: moka::sync::Cache<String, ()>,
}

/// The longest one attempt at an endpoint can take before its timeouts end it (a token request and
/// the request itself), after which a probe still marked as running is taken as abandoned.
fn probe_timeout(o: &OriginOptions) -> Duration {
    (o.connect_timeout + o.first_byte_timeout) * 2
}

/// Endpoints remembered as Basic-only, at most; one forgotten costs one extra 401 round trip.
const MAX_BASIC_ENDPOINTS: u64 = 1_000;
const BASIC_ENDPOINT_IDLE: Duration = Duration::from_secs(3600);

/// How long a read may stall before the transfer counts as failed (and a blob fill resumes).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

impl OriginClient {
    pub fn new(
        registries: Registries,
        creds: CredentialSources,
        origin_tls: &BTreeMap<RegistryName, OriginTls>,
        options: OriginOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let egress = registries.egress_policy();
        let builder = |trust: Trust| {
            reqwest::Client::builder()
                .user_agent(concat!("ocicache/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(options.connect_timeout)
                .read_timeout(READ_TIMEOUT)
                .redirect(egress.redirect_policy(trust))
                .dns_resolver(egress.resolver(trust))
        };
        let build = |trust| builder(trust).build().map_err(|e| format!("cannot build HTTP client: {e}"));
        let (http_named, http_guarded) = (build(Trust::Named)?, build(Trust::Guarded)?);
        let mut tls_clients = BTreeMap::new();
        for (registry, tls) in origin_tls {
            let client = with_tls(builder(registries.trust(registry)), tls)
                .and_then(|b| b.build().map_err(|e| e.to_string()))
                .map_err(|e| format!("registries.\"{registry}\" TLS settings: {e}"))?;
            tls_clients.insert(registry.clone(), client);
        }
        Ok(OriginClient {
            http_named,
            http_guarded,
            tls_clients,
            egress,
            health: OriginHealth::new(options.endpoint_backoff, probe_timeout(&options)),
            options,
            metrics,
            registries,
            creds: Arc::new(creds),
            tokens: TokenCache::default(),
            basic_endpoints: crate::bounded::idle_expiring(MAX_BASIC_ENDPOINTS, BASIC_ENDPOINT_IDLE),
        })
    }

    /// The client whose redirect policy and resolver match the registry's trust (token requests to
    /// its realm use it too, so a realm's redirects are held to the same rule).
    fn http_for(&self, registry: &RegistryName) -> &reqwest::Client {
        if let Some(c) = self.tls_clients.get(registry) {
            return c;
        }
        match self.registries.trust(registry) {
            Trust::Named => &self.http_named,
            Trust::Guarded => &self.http_guarded,
        }
    }

    pub fn registries(&self) -> &Registries {
        &self.registries
    }

    /// Sends `req` to the origin's endpoints until one answers. A 2xx response is returned; any other
    /// status becomes `Error::Upstream` carrying what the client needs (challenge, Retry-After).
    ///
    /// Endpoints are tried in order, skipping those whose circuit is open or that are rate-limiting.
    /// If none of those answered, the skipped ones get a last-resort probe (see `health`): a registry
    /// is never left with nothing to try, and a recovered origin is used again within a second.
    pub async fn send(&self, req: &OriginRequest<'_>) -> Result<reqwest::Response, Error> {
        let registry = &req.target.registry;
        let endpoints = self.registries.endpoints(registry).ok_or_else(|| Error::RegistryDenied(registry.clone()))?;
        if self.options.offline {
            return Err(self.unreachable(req, "offline mode (--offline): origins are not contacted".into()));
        }
        let mut outcome = Outcome::default();
        let mut skipped = Vec::new();
        for endpoint in &endpoints {
            match self.health.admit(endpoint.as_str()) {
                Admission::Skip(_) => skipped.push(endpoint),
                admission => {
                    if let Some(answer) = self.try_endpoint(endpoint, req, admission, &mut outcome).await {
                        return answer;
                    }
                }
            }
        }
        for endpoint in skipped {
            match self.health.admit_last_resort(endpoint.as_str()) {
                Admission::Skip(refusal) => outcome.refused(req, endpoint, refusal),
                admission => {
                    if let Some(answer) = self.try_endpoint(endpoint, req, admission, &mut outcome).await {
                        return answer;
                    }
                }
            }
        }
        Err(outcome.into_error(req))
    }

    /// One endpoint under the breaker's admission: `Some(answer)` when it answered (even a 404: the
    /// endpoint is alive), `None` when it failed over or is rate-limiting (recorded in `outcome`).
    async fn try_endpoint(
        &self,
        endpoint: &Url,
        req: &OriginRequest<'_>,
        admission: Admission,
        outcome: &mut Outcome,
    ) -> Option<Result<reqwest::Response, Error>> {
        let (registry, ep) = (&req.target.registry, endpoint.as_str());
        match self.attempt(endpoint, req).await {
            Err(e) if is_rate_limit(&e) => {
                let wait = retry_after(&e);
                if let Some(wait) = wait {
                    self.health.hold(ep, wait);
                }
                // A 429 says the endpoint is up: it closes an open circuit.
                if self.health.succeeded(ep) {
                    self.endpoint_metric(registry, endpoint, false);
                }
                tracing::warn!(%registry, endpoint = ep, retry_after_s = wait.map(|w| w.as_secs()), "origin is rate-limiting");
                outcome.failed(e);
                None
            }
            Err(e) if fails_over(&e) => {
                self.endpoint_metric(registry, endpoint, true);
                let reason = match &e {
                    Error::Unreachable { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                match self.health.failed(ep, &admission, &reason) {
                    Some(open) => {
                        tracing::warn!(%registry, endpoint = ep, error = %e, skip_s = open.as_secs(), "origin endpoint failed; skipping it for a while")
                    }
                    None => tracing::debug!(%registry, endpoint = ep, error = %e, "origin endpoint failed again"),
                }
                outcome.failed(e);
                None
            }
            other => {
                if self.health.succeeded(ep) {
                    self.endpoint_metric(registry, endpoint, false);
                    tracing::info!(%registry, endpoint = ep, "origin endpoint answers again");
                }
                Some(other)
            }
        }
    }

    /// Records an endpoint failing or answering again, labelled so that invented names (under a
    /// `*.domain` pattern) share their pattern's series.
    fn endpoint_metric(&self, registry: &RegistryName, endpoint: &Url, failed: bool) {
        let (label, endpoint) = (self.registries.label(registry), self.registries.endpoint_label(registry, endpoint));
        if failed {
            self.metrics.endpoint_failed(&label, &endpoint);
        } else {
            self.metrics.endpoint_recovered(&label, &endpoint);
        }
    }

    /// One endpoint; when credentials from a helper are rejected, the helper is asked once more.
    async fn attempt(&self, endpoint: &Url, req: &OriginRequest<'_>) -> Result<reqwest::Response, Error> {
        match self.attempt_with(endpoint, req).await {
            Err(Error::CredentialsRejected { helper: Some(helper), .. }) => {
                tracing::info!(registry = %req.target.registry, %helper, "credentials rejected; asking the helper again");
                // Asked for the endpoint's own name or the registry's: forget both answers.
                self.creds.invalidate(&helper, &req.target.registry);
                if let Some(name) = endpoint_name(endpoint) {
                    self.creds.invalidate(&helper, &name);
                }
                self.attempt_with(endpoint, req).await
            }
            other => other,
        }
    }

    async fn attempt_with(&self, endpoint: &Url, req: &OriginRequest<'_>) -> Result<reqwest::Response, Error> {
        let url = format!("{}/v2/{}/{}", endpoint.as_str().trim_end_matches('/'), req.target.repository, req.path);
        let url = Url::parse(&url).map_err(|e| self.unreachable(req, format!("bad URL {url}: {e}")))?;

        let sourced: Option<Sourced> = match &req.identity {
            Identity::Client(Some(client_auth)) => {
                let resp = self.send_once(req, &url, Some(client_auth.clone())).await?;
                return self.classify(req, resp);
            }
            Identity::Client(None) => None,
            Identity::Cache => self.creds.lookup(endpoint, &req.target.registry, &req.target.repository).await.map_err(|e| {
                tracing::warn!(registry = %req.target.registry, error = %e, "no credentials from the configured source");
                Error::CredentialSource { registry: req.target.registry.clone(), reason: e.to_string() }
            })?,
        };
        let credential = sourced.as_ref().map(|s| &s.credential);
        let key = TokenKey {
            registry: req.target.registry.to_string(),
            endpoint: endpoint.to_string(),
            scope: format!("repository:{}:pull", req.target.repository),
            credential: credential.map(Credential::id).unwrap_or_default(),
        };
        let basic_known = self.basic_endpoints.contains_key(endpoint.as_str());
        let first_auth = match (basic_known, credential) {
            (true, Some(c)) => basic(c),
            _ => self.tokens.cached(&key).await.map(|t| bearer(&t)),
        };
        let sent_token = first_auth.clone();
        let resp = self.send_once(req, &url, first_auth).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return self.classify(req, resp);
        }

        let challenge_header = resp.headers().get(WWW_AUTHENTICATE).cloned();
        let challenge = challenge_header.as_ref().and_then(|h| h.to_str().ok()).map(Challenge::parse);
        let rejected = |detail: String| Error::CredentialsRejected {
            registry: req.target.registry.clone(),
            detail: match &sourced {
                Some(s) => format!("{detail}; credentials from {}", s.source),
                None => detail,
            },
            challenge: challenge_header.clone(),
            helper: sourced.as_ref().and_then(|s| s.helper.clone()),
        };
        match challenge {
            Some(Challenge::Bearer { realm, service, scope }) => {
                let realm_url = Url::parse(&realm).ok();
                let trust = self.registries.trust(&req.target.registry);
                if let Some(why) = realm_url.as_ref().and_then(|u| self.egress.allows_url(u, trust).err()) {
                    tracing::warn!(registry = %req.target.registry, %realm, %why, "token realm refused");
                    return Err(Error::EgressRefused {
                        registry: req.target.registry.clone(),
                        reason: format!("token realm refused: {why}"),
                    });
                }
                let trusted = realm_url.as_ref().is_some_and(|r| realm_trusted(r, endpoint));
                let use_cred = credential.filter(|_| trusted);
                if credential.is_some() && !trusted {
                    tracing::warn!(registry = %req.target.registry, %realm, "token realm is not on the registry's domain; not sending credentials");
                }
                let scope = scope.unwrap_or_else(|| key.scope.clone());
                let stale = sent_token.as_ref().and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer "));
                let token_req = TokenRequest {
                    realm: &realm,
                    service: service.as_deref(),
                    scope: &scope,
                    credential: use_cred,
                    rejected: stale,
                };
                let token = self.tokens.fetch(self.http_for(&req.target.registry), &key, &token_req).await;
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
            Some(Challenge::Basic) => match credential.map(|c| (c, basic(c))) {
                Some((_, None)) => Err(rejected("an identity token cannot answer a Basic challenge".into())),
                Some((_, Some(auth))) => {
                    self.basic_endpoints.insert(endpoint.to_string(), ());
                    let resp = self.send_once(req, &url, Some(auth)).await?;
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
        let mut builder = self.http_for(&req.target.registry).request(req.method.clone(), url.clone());
        if let Some(a) = &req.accept {
            builder = builder.header(ACCEPT, a);
        }
        if let Some(r) = &req.range {
            builder = builder.header(RANGE, r);
        }
        if let Some(a) = auth {
            builder = builder.header(AUTHORIZATION, a);
        }
        let started = tokio::time::Instant::now();
        let resp = match tokio::time::timeout(self.options.first_byte_timeout, builder.send()).await {
            Ok(r) => r.map_err(|e| {
                if e.is_redirect() {
                    Error::EgressRefused { registry: req.target.registry.clone(), reason: describe(&e) }
                } else {
                    self.unreachable(req, describe(&e))
                }
            })?,
            Err(_) => {
                let secs = self.options.first_byte_timeout.as_secs_f64();
                return Err(self.unreachable(req, format!("no response within {secs}s")));
            }
        };
        let registry = &self.registries.label(&req.target.registry);
        self.metrics.upstream_latency(registry, resp.status().as_u16(), started.elapsed().as_secs_f64());
        let limit = ratelimit_header(resp.headers().get("ratelimit-limit"));
        let remaining = ratelimit_header(resp.headers().get("ratelimit-remaining"));
        if limit.is_some() || remaining.is_some() {
            self.metrics.ratelimit(registry, limit, remaining);
        }
        Ok(resp)
    }

    fn rate_limited(req: &OriginRequest<'_>, wait: Duration) -> Error {
        let secs = ceil_secs(wait).max(1);
        Error::Upstream(Box::new(UpstreamStatus {
            registry: req.target.registry.clone(),
            resource: req.resource,
            what: format!(
                "{}/{} (not asked: waiting {secs}s more for its Retry-After)",
                req.target.repository, req.path
            ),
            status: StatusCode::TOO_MANY_REQUESTS,
            challenge: None,
            retry_after: HeaderValue::from_str(&secs.to_string()).ok(),
        }))
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
        Error::Unreachable { registry: req.target.registry.clone(), reason }
    }
}

/// What a request learnt from the endpoints that did not answer it, to pick the error the client gets.
#[derive(Default)]
struct Outcome {
    /// The last error an endpoint answered or failed with.
    last: Option<Error>,
    /// A rate limit (answered now, or an endpoint still on hold): the most useful answer, since it
    /// tells the client when to come back.
    rate_limited: Option<Error>,
    /// Why the endpoints that were not tried were skipped (fresh: from the breaker's last failure).
    refusals: Vec<String>,
}

impl Outcome {
    fn failed(&mut self, e: Error) {
        if is_rate_limit(&e) {
            self.rate_limited = Some(e);
        } else {
            self.last = Some(e);
        }
    }

    fn refused(&mut self, req: &OriginRequest<'_>, endpoint: &Url, refusal: Refusal) {
        match refusal {
            Refusal::Held(wait) => {
                let shorter = match &self.rate_limited {
                    Some(Error::Upstream(u)) => retry_after_secs(u).is_none_or(|s| ceil_secs(wait) < s),
                    _ => true,
                };
                if shorter {
                    self.rate_limited = Some(OriginClient::rate_limited(req, wait));
                }
            }
            open => self.refusals.push(open.describe(endpoint.as_str())),
        }
    }

    fn into_error(self, req: &OriginRequest<'_>) -> Error {
        let registry = req.target.registry.clone();
        if let Some(e) = self.rate_limited {
            return e;
        }
        match (self.last, self.refusals.is_empty()) {
            (Some(e), _) => e,
            (None, false) => Error::Unreachable { registry, reason: self.refusals.join("; ") },
            (None, true) => Error::Unreachable { registry, reason: "no endpoints".into() },
        }
    }
}

fn retry_after_secs(u: &UpstreamStatus) -> Option<u64> {
    u.retry_after.as_ref()?.to_str().ok()?.trim().parse().ok()
}

/// Failures that say the endpoint is down, worth trying the next endpoint for (and opening its circuit).
fn fails_over(e: &Error) -> bool {
    match e {
        Error::Unreachable { .. } => true,
        Error::Upstream(u) => u.status.is_server_error(),
        _ => false,
    }
}

fn is_rate_limit(e: &Error) -> bool {
    matches!(e, Error::Upstream(u) if u.status == StatusCode::TOO_MANY_REQUESTS)
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(e: &Error) -> Option<Duration> {
    let Error::Upstream(u) = e else { return None };
    let v = u.retry_after.as_ref()?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

/// Docker Hub sends `ratelimit-remaining: 76;w=21600`: the count before the `;`.
fn ratelimit_header(v: Option<&HeaderValue>) -> Option<i64> {
    v?.to_str().ok()?.split(';').next()?.trim().parse().ok()
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// The Basic header for a username and password; an identity token has none.
fn basic(c: &Credential) -> Option<HeaderValue> {
    use base64::Engine as _;
    let (username, password) = c.basic()?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut v =
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    Some(v)
}

/// Adds an origin's own TLS settings: an extra CA, a client certificate, or (explicitly) no checks.
fn with_tls(mut b: reqwest::ClientBuilder, tls: &OriginTls) -> Result<reqwest::ClientBuilder, String> {
    if let Some(ca) = &tls.ca {
        let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("{}: {e}", ca.display()))? {
            b = b.add_root_certificate(cert);
        }
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        let mut pem = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
        pem.push(b'\n');
        pem.extend(std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?);
        b = b.identity(reqwest::Identity::from_pem(&pem).map_err(|e| format!("client certificate: {e}"))?);
    }
    if tls.insecure {
        b = b.danger_accept_invalid_certs(true);
    }
    Ok(b)
}
