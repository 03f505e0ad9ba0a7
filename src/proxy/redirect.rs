//! `redirect_https` on a plain listener: every request is answered, before routing and plugins,
//! with a permanent redirect to the same host and target over HTTPS.

use http::uri::Authority;
use http::{header, HeaderValue, Request, Response, StatusCode};

use super::ResponseBody;
use crate::error::GatewayError;
use crate::snapshot::Snapshot;

/// `308 Permanent Redirect` (method and body are kept by clients, unlike 301) to
/// `https://<host><:port><path and query>`: the host of the request without its port, and the
/// port of the first TLS listener in `snap` (left out when it is 443). A request without a
/// usable `Host` (or HTTP/2 `:authority`) gets 400.
pub fn to_https<B>(
    snap: &Snapshot,
    req: &Request<B>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let bad = || {
        GatewayError::downstream(
            StatusCode::BAD_REQUEST,
            "the request has no valid Host to redirect to",
        )
    };
    let authority = match req.headers().get(header::HOST) {
        Some(h) => h.to_str().ok().and_then(|h| h.parse::<Authority>().ok()),
        None => req.uri().authority().cloned(),
    }
    .ok_or_else(bad)?;
    let host = authority.host();
    if host.is_empty() {
        return Err(bad());
    }
    let port = snap
        .listeners
        .iter()
        .find(|l| l.tls.is_some())
        .map(|l| l.port())
        .filter(|&p| p != 443);
    let target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|pq| pq.starts_with('/'))
        .unwrap_or("/");
    let location = match port {
        Some(p) => format!("https://{host}:{p}{target}"),
        None => format!("https://{host}{target}"),
    };
    let value = HeaderValue::from_str(&location).map_err(|_| bad())?;
    let body = format!("Redirecting to {location}\n");
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, value);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        let cfg = frontdesk_config::load_str("version: 1\n", &|_| None)
            .unwrap()
            .config;
        Snapshot::build(cfg, None).unwrap().0
    }

    fn location(req: Request<()>) -> Result<String, StatusCode> {
        to_https(&snap(), &req)
            .map(|r| {
                assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
                r.headers()[header::LOCATION].to_str().unwrap().to_string()
            })
            .map_err(|e| e.status)
    }

    #[test]
    fn keeps_host_path_and_query_and_drops_the_port() {
        let req = Request::get("/a/b?x=1&y")
            .header(header::HOST, "Shop.example:8080")
            .body(())
            .unwrap();
        // Without a TLS listener to name, the default port is implied.
        assert_eq!(location(req).unwrap(), "https://Shop.example/a/b?x=1&y");
        let req = Request::get("/")
            .header(header::HOST, "[::1]:80")
            .body(())
            .unwrap();
        assert_eq!(location(req).unwrap(), "https://[::1]/");
    }

    #[test]
    fn takes_the_http2_authority_when_there_is_no_host_header() {
        let req = Request::get("http://h2.example:80/p").body(()).unwrap();
        assert_eq!(location(req).unwrap(), "https://h2.example/p");
    }

    #[test]
    fn refuses_a_missing_or_malformed_host() {
        let req = Request::get("/").body(()).unwrap();
        assert_eq!(location(req), Err(StatusCode::BAD_REQUEST));
        let req = Request::get("/")
            .header(header::HOST, "bad host/evil")
            .body(())
            .unwrap();
        assert_eq!(location(req), Err(StatusCode::BAD_REQUEST));
    }
}
