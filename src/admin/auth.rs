//! The admin token: a bearer token required on every admin path except `/livez`, `/readyz` and
//! `/metrics`. It is read from the live snapshot on every request, so a reload that changes it
//! takes effect at once. Tokens are compared in constant time (as SHA-256 digests, so the
//! comparison does not reveal the token's length either).

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::dto::Problem;
use super::AdminState;

/// Lets the request through when the token matches (or when no token is needed); `401` with
/// `WWW-Authenticate: Bearer` otherwise.
pub(crate) async fn require_token(
    State(state): State<AdminState>,
    req: Request,
    next: Next,
) -> Response {
    let expected = state.token();
    let verdict = match expected.as_deref() {
        Some(token) => match bearer(req.headers()) {
            // The placeholder `GET /config` shows is never a token, whatever the config says.
            Some(given) if given != frontdesk_config::REDACTED && same(given, token) => Ok(()),
            Some(_) => Err("the admin token is wrong"),
            None => Err("an admin token is required: send `Authorization: Bearer <token>`"),
        },
        // No token is only allowed on loopback; fail closed if the listener is not.
        None if state.loopback => Ok(()),
        None => Err("no admin token is configured; this listener is not on loopback"),
    };
    match verdict {
        Ok(()) => next.run(req).await,
        Err(detail) => {
            let mut resp = Problem::new(StatusCode::UNAUTHORIZED, detail).into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"frontdesk-admin\""),
            );
            resp
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn same(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_tokens_only() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn compares_whole_tokens() {
        assert!(same("s3cret", "s3cret"));
        assert!(!same("s3cre", "s3cret"));
        assert!(!same("", "s3cret"));
    }
}
