//! `--redirect-blobs`: a blob GET for content in the object store is answered with `307 Temporary
//! Redirect` to a short-lived signed URL of the object, so the store sends the bytes and the cache
//! pod's network carries none of them. Which requests qualify is decided here (the HTTP side: method
//! and client); whether the blob has a URL, and whether the client may have it, is the cache's and
//! the store's business (`Cache::blob_redirect`).

use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, LOCATION, USER_AGENT};
use http::{HeaderMap, StatusCode};
use regex::Regex;

use super::response::{header, API_VERSION, CONTENT_DIGEST};
use crate::oci::Digest;

/// ocicache's own warm client (`ocicache warm --server`, and `--warm-from-cluster` through the
/// loopback listener): warming means the bytes pass through the cache (verifying the bucket's copy
/// on the way), so it is never redirected.
const WARM_USER_AGENT: &str = "ocicache-warm/";

/// When blob GETs are redirected.
#[derive(Debug, Clone)]
pub struct Redirects {
    /// How long each signed URL is valid.
    pub ttl: Duration,
    /// Clients whose `User-Agent` matches are served the bytes instead (clients that cannot follow a
    /// redirect, or cannot reach the store).
    pub skip_user_agent: Option<Regex>,
}

impl Redirects {
    /// The signed URL's lifetime if this request may be redirected: a GET (a HEAD is answered by the
    /// cache itself) from a client that is not skipped.
    pub fn ttl_for(&self, head: bool, headers: &HeaderMap) -> Option<Duration> {
        if head {
            return None;
        }
        let agent = headers.get(USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
        if agent.starts_with(WARM_USER_AGENT) || self.skip_user_agent.as_ref().is_some_and(|re| re.is_match(agent)) {
            return None;
        }
        Some(self.ttl)
    }
}

/// `307` to the signed URL. The digest goes along so clients can check what they will get; the
/// answer is not to be cached, since the URL expires.
pub fn response(digest: &Digest, url: &url::Url) -> Response {
    Response::builder()
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header(API_VERSION, "registry/2.0")
        .header(CONTENT_DIGEST, header(digest.to_string()))
        .header(LOCATION, header(url.as_str()))
        .header(CACHE_CONTROL, "no-store")
        .header(CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_agent(agent: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(USER_AGENT, agent.parse().unwrap());
        h
    }

    #[test]
    fn heads_warmers_and_skipped_clients_are_not_redirected() {
        let ttl = Duration::from_secs(300);
        let r = Redirects { ttl, skip_user_agent: Some(Regex::new("^old-client/").unwrap()) };
        assert_eq!(r.ttl_for(false, &with_agent("containerd/1.7.24")), Some(ttl));
        assert_eq!(r.ttl_for(false, &HeaderMap::new()), Some(ttl), "no User-Agent: redirected");
        assert_eq!(r.ttl_for(true, &with_agent("containerd/1.7.24")), None, "HEAD");
        assert_eq!(r.ttl_for(false, &with_agent("old-client/2.0")), None);
        assert_eq!(r.ttl_for(false, &with_agent("ocicache-warm/0.1.0")), None);
        let all = Redirects { ttl, skip_user_agent: None };
        assert_eq!(all.ttl_for(false, &with_agent("old-client/2.0")), Some(ttl));
    }

    #[test]
    fn the_redirect_names_the_digest_and_the_url_and_is_not_cached() {
        let d: Digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000".parse().unwrap();
        let url = url::Url::parse("https://bucket.s3.example/blobs/x?X-Amz-Expires=300&X-Amz-Signature=abc").unwrap();
        let r = response(&d, &url);
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(r.headers()[LOCATION], url.as_str());
        assert_eq!(r.headers()[CONTENT_DIGEST], d.to_string());
        assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[CONTENT_LENGTH], "0");
    }
}
