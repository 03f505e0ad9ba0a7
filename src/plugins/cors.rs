//! `cors`: cross-origin resource sharing, as the Fetch standard (§3.2, "CORS protocol") asks.
//!
//! A **preflight** (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here
//! with `204` and never forwarded; it runs before authentication, since browsers send preflights
//! without credentials. When the origin, the method and every requested header are allowed, the
//! answer carries the `Access-Control-Allow-*` headers; otherwise it carries none, and the browser
//! refuses the real request. An **actual request** is forwarded as usual; when its origin is
//! allowed, the response gets `Access-Control-Allow-Origin` (and `-Credentials`, `-Expose-Headers`).
//!
//! The route's `cors` owns the policy: `Access-Control-*` headers from the upstream are removed.
//! Every response gets `Vary: Origin`, since it depends on the request's `Origin` (Fetch §3.2.5,
//! "CORS protocol and HTTP caches").

use std::sync::Arc;

use async_trait::async_trait;
use frontdesk_config::CorsConfig;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::plugin::{
    BuildEnv, Ctx, Flow, Phases, Plugin, PluginError, PluginFactory, PluginResponse, RequestHead,
    ResponseHead,
};

/// Methods allowed when `allow_methods` is empty: the CORS-safelisted ones.
const DEFAULT_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];

/// The `cors` plugin.
#[derive(Debug)]
pub struct Cors {
    /// Allowed origins, lower-cased; empty when `any_origin`.
    origins: Vec<String>,
    /// `*` is among the origins.
    any_origin: bool,
    /// `allow_credentials`.
    credentials: bool,
    /// Allowed methods, upper-cased; empty when `any_method`.
    methods: Vec<String>,
    any_method: bool,
    /// Allowed request headers, lower-cased; empty when `any_header`.
    headers: Vec<String>,
    any_header: bool,
    /// Precomputed answer headers.
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

/// What the request phase found, for the response phase.
#[derive(Clone, Debug)]
enum Seen {
    /// The request was a preflight this plugin answered: its answer is complete.
    Preflight,
    /// An actual request from an allowed origin: the `Access-Control-Allow-Origin` to send.
    Allowed(HeaderValue),
}

static VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

impl Cors {
    /// The `Access-Control-Allow-Origin` for the request's `Origin`, or `None` when it is absent,
    /// repeated or not allowed.
    fn allow_origin(&self, req: &HeaderMap) -> Option<HeaderValue> {
        let mut all = req.get_all(ORIGIN).iter();
        let origin = all.next()?;
        if all.next().is_some() {
            // Browsers send one `Origin`; several are not a browser's request.
            return None;
        }
        if self.any_origin {
            if !self.credentials {
                return Some(HeaderValue::from_static("*"));
            }
            // `*` cannot go with credentials (Fetch §3.2.5), so the origin is echoed; but never
            // `null` (sandboxed frames, `file:`), which would hand credentials to any such page.
            return (origin.as_bytes() != b"null").then(|| origin.clone());
        }
        self.origins
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
            .then(|| origin.clone())
    }

    /// The answer to a preflight: with the `Access-Control-Allow-*` headers when everything asked
    /// for is allowed, bare otherwise.
    fn preflight(&self, req: &HeaderMap, method: &HeaderValue) -> PluginResponse {
        let mut resp = http::Response::new(crate::body::Body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(VARY, VARY_PREFLIGHT.clone());
        let Some(origin) = self.allow_origin(req) else {
            return resp;
        };
        if !self.any_method
            && !self
                .methods
                .iter()
                .any(|m| m.as_bytes() == method.as_bytes())
        {
            return resp;
        }
        let requested = req.get(ACCESS_CONTROL_REQUEST_HEADERS);
        if let Some(list) = requested {
            let Ok(list) = list.to_str() else { return resp };
            let allowed = |name: &str| {
                self.any_header || self.headers.iter().any(|a| a.eq_ignore_ascii_case(name))
            };
            if !list
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .all(allowed)
            {
                return resp;
            }
        }
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.credentials {
            h.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        // `*` lists are answered by echoing what was asked: a literal `*` means nothing to a
        // browser on a credentialed request, and never covers `Authorization`.
        let methods = if self.any_method {
            method.clone()
        } else {
            self.allow_methods.clone()
        };
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, methods);
        let headers = if self.any_header {
            requested.cloned()
        } else {
            self.allow_headers.clone()
        };
        if let Some(v) = headers {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(v) = &self.max_age {
            h.insert(ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        resp
    }
}

/// Adds `name` to `Vary` unless it is there already (or `Vary: *`).
fn add_vary(h: &mut HeaderMap, name: &'static str) {
    let present = h
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|v| v == "*" || v.eq_ignore_ascii_case(name));
    if !present {
        h.append(VARY, HeaderValue::from_static(name));
    }
}

/// Joins a list into one header value (`GET, POST`).
fn joined(list: &[String], field: &str) -> Result<HeaderValue, String> {
    HeaderValue::try_from(list.join(", ")).map_err(|_| format!("`{field}` has an invalid value"))
}

impl PluginFactory for Cors {
    const KIND: &'static str = "cors";
    const ORDER: u16 = 110;
    type Config = CorsConfig;

    fn build(cfg: &CorsConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        if cfg.allow_origins.is_empty() {
            return Err("`allow_origins` needs at least one origin, or `*`".into());
        }
        let star = |l: &[String]| l.iter().any(|s| s.trim() == "*");
        let clean = |l: &[String], upper: bool| -> Vec<String> {
            l.iter()
                .map(|s| s.trim())
                .filter(|s| *s != "*")
                .map(|s| {
                    if upper {
                        s.to_ascii_uppercase()
                    } else {
                        s.to_ascii_lowercase()
                    }
                })
                .collect()
        };
        let any_origin = star(&cfg.allow_origins);
        let any_method = star(&cfg.allow_methods);
        let any_header = star(&cfg.allow_headers);
        let mut methods = clean(&cfg.allow_methods, true);
        if cfg.allow_methods.is_empty() {
            methods = DEFAULT_METHODS.map(String::from).to_vec();
        }
        for m in &methods {
            Method::from_bytes(m.as_bytes()).map_err(|_| format!("invalid method {m:?}"))?;
        }
        let headers = clean(&cfg.allow_headers, false);
        let expose: Vec<String> = cfg.expose_headers.iter().map(|s| s.trim().into()).collect();
        Ok(Arc::new(Cors {
            origins: if any_origin {
                Vec::new()
            } else {
                clean(&cfg.allow_origins, false)
            },
            any_origin,
            credentials: cfg.allow_credentials,
            allow_methods: joined(&methods, "allow_methods")?,
            methods: if any_method { Vec::new() } else { methods },
            any_method,
            allow_headers: if headers.is_empty() {
                None
            } else {
                Some(joined(&headers, "allow_headers")?)
            },
            headers: if any_header { Vec::new() } else { headers },
            any_header,
            expose_headers: if expose.is_empty() {
                None
            } else {
                Some(joined(&expose, "expose_headers")?)
            },
            max_age: cfg.max_age.map(|d| HeaderValue::from(d.get().as_secs())),
        }))
    }
}

#[async_trait]
impl Plugin for Cors {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_RESPONSE
    }

    async fn request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        if !req.headers.contains_key(ORIGIN) {
            // Not a cross-origin request: nothing to do but `Vary` on the response.
            return Ok(Flow::Continue);
        }
        if req.method == Method::OPTIONS {
            if let Some(method) = req.headers.get(ACCESS_CONTROL_REQUEST_METHOD) {
                cx.ext.insert(Seen::Preflight);
                return Ok(Flow::Respond(self.preflight(&req.headers, method)));
            }
        }
        if let Some(origin) = self.allow_origin(&req.headers) {
            cx.ext.insert(Seen::Allowed(origin));
        }
        Ok(Flow::Continue)
    }

    async fn response_filter(
        &self,
        resp: &mut ResponseHead,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        let seen = cx.ext.get::<Seen>();
        if matches!(seen, Some(Seen::Preflight)) {
            return Ok(());
        }
        let h = &mut resp.headers;
        for name in [
            ACCESS_CONTROL_ALLOW_ORIGIN,
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            ACCESS_CONTROL_ALLOW_METHODS,
            ACCESS_CONTROL_ALLOW_HEADERS,
            ACCESS_CONTROL_EXPOSE_HEADERS,
            ACCESS_CONTROL_MAX_AGE,
        ] {
            h.remove(name);
        }
        add_vary(h, "Origin");
        if let Some(Seen::Allowed(origin)) = seen {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            if self.credentials {
                h.insert(
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            if let Some(v) = &self.expose_headers {
                h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str) -> Arc<dyn Plugin> {
        let text = format!("version: 1\nplugins:\n  cors: {yaml}\n");
        let cfg = frontdesk_config::load_str(&text, &|_| None)
            .expect("valid")
            .config
            .plugins
            .cors
            .expect("cors configured");
        Cors::build(&cfg, &BuildEnv::default()).expect("builds")
    }

    const ISSUE: &str = "{ allow_origins: [\"https://app.example.com\"], allow_methods: [GET, POST], \
        allow_headers: [authorization, content-type, x-api-key], allow_credentials: true, max_age: 600s }";

    fn request(method: &str, headers: &[(&str, &str)]) -> RequestHead {
        let mut b = http::Request::builder().method(method).uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    /// Runs both phases as the chain would; returns the answer (for a preflight) or the upstream
    /// response head after the response phase.
    async fn run(
        p: &Arc<dyn Plugin>,
        mut req: RequestHead,
        upstream: &[(&str, &str)],
    ) -> (bool, ResponseHead) {
        let mut cx = Ctx::for_test();
        let (answered, mut head) = match p.request_filter(&mut req, &mut cx).await.expect("ok") {
            Flow::Respond(r) => (true, r.into_parts().0),
            Flow::Continue => {
                let mut b = http::Response::builder();
                for (k, v) in upstream {
                    b = b.header(*k, *v);
                }
                (false, b.body(()).expect("resp").into_parts().0)
            }
        };
        p.response_filter(&mut head, &mut cx).await.expect("ok");
        (answered, head)
    }

    fn get<'a>(h: &'a ResponseHead, name: &str) -> Option<&'a str> {
        h.headers.get(name).map(|v| v.to_str().expect("ascii"))
    }

    fn has_cors(h: &ResponseHead) -> bool {
        h.headers
            .keys()
            .any(|k| k.as_str().starts_with("access-control-"))
    }

    #[tokio::test]
    async fn allowed_preflight_is_answered_with_every_header() {
        let p = build(ISSUE);
        let req = request(
            "OPTIONS",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "Content-Type, X-Api-Key"),
            ],
        );
        let (answered, h) = run(&p, req, &[]).await;
        assert!(answered);
        assert_eq!(h.status, StatusCode::NO_CONTENT);
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(&h, "access-control-allow-methods"), Some("GET, POST"));
        assert_eq!(
            get(&h, "access-control-allow-headers"),
            Some("authorization, content-type, x-api-key")
        );
        assert_eq!(get(&h, "access-control-max-age"), Some("600"));
        assert_eq!(
            get(&h, "vary"),
            Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        );
    }

    #[tokio::test]
    async fn refused_preflights_are_answered_bare() {
        let p = build(ISSUE);
        let app = ("origin", "https://app.example.com");
        let cases: [(&str, &[(&str, &str)]); 4] = [
            (
                "origin",
                &[
                    ("origin", "https://evil.example"),
                    ("access-control-request-method", "GET"),
                ],
            ),
            (
                "method",
                &[app, ("access-control-request-method", "DELETE")],
            ),
            (
                "header",
                &[
                    app,
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "authorization, x-secret"),
                ],
            ),
            (
                "case-sensitive method",
                &[app, ("access-control-request-method", "post")],
            ),
        ];
        for (what, headers) in cases {
            let (answered, h) = run(&p, request("OPTIONS", headers), &[]).await;
            assert!(answered, "{what}");
            assert_eq!(h.status, StatusCode::NO_CONTENT, "{what}");
            assert!(!has_cors(&h), "{what}: {h:?}");
            assert!(get(&h, "vary").is_some(), "{what}");
        }
    }

    #[tokio::test]
    async fn options_without_request_method_or_origin_is_forwarded() {
        let p = build(ISSUE);
        let (answered, _) = run(
            &p,
            request("OPTIONS", &[("origin", "https://app.example.com")]),
            &[],
        )
        .await;
        assert!(!answered);
        let (answered, _) = run(
            &p,
            request("OPTIONS", &[("access-control-request-method", "GET")]),
            &[],
        )
        .await;
        assert!(!answered);
    }

    #[tokio::test]
    async fn actual_requests_get_headers_only_from_allowed_origins() {
        let p = build("{ allow_origins: [\"https://App.Example.com\"], expose_headers: [x-total], allow_credentials: true }");
        let upstream = [
            ("access-control-allow-origin", "*"),
            ("vary", "accept-encoding"),
        ];
        let (answered, h) = run(
            &p,
            request("GET", &[("origin", "https://app.example.com")]),
            &upstream,
        )
        .await;
        assert!(!answered);
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(&h, "access-control-expose-headers"), Some("x-total"));
        let vary: Vec<_> = h.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["accept-encoding", "Origin"]);

        // A refused origin gets nothing, and the upstream's own `*` is gone.
        let (_, h) = run(
            &p,
            request("GET", &[("origin", "https://evil.example")]),
            &upstream,
        )
        .await;
        assert!(!has_cors(&h), "{h:?}");
        // No `Origin`: not a CORS request, but the answer still varies on it.
        let (_, h) = run(&p, request("GET", &[]), &[("vary", "Origin")]).await;
        assert!(!has_cors(&h));
        assert_eq!(h.headers.get_all("vary").iter().count(), 1);
    }

    #[tokio::test]
    async fn star_origin_is_echoed_with_credentials_and_null_is_refused() {
        let any = build("{ allow_origins: [\"*\"] }");
        let (_, h) = run(
            &any,
            request("GET", &[("origin", "https://a.example")]),
            &[],
        )
        .await;
        assert_eq!(get(&h, "access-control-allow-origin"), Some("*"));

        let creds = build("{ allow_origins: [\"*\"], allow_credentials: true }");
        let (_, h) = run(
            &creds,
            request("GET", &[("origin", "https://a.example")]),
            &[],
        )
        .await;
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://a.example")
        );
        let (_, h) = run(&creds, request("GET", &[("origin", "null")]), &[]).await;
        assert!(!has_cors(&h));
    }

    #[tokio::test]
    async fn star_methods_and_headers_echo_the_request() {
        let p = build("{ allow_origins: [\"https://a.example\"], allow_methods: [\"*\"], allow_headers: [\"*\"] }");
        let req = request(
            "OPTIONS",
            &[
                ("origin", "https://a.example"),
                ("access-control-request-method", "PURGE"),
                ("access-control-request-headers", "authorization,x-anything"),
            ],
        );
        let (_, h) = run(&p, req, &[]).await;
        assert_eq!(get(&h, "access-control-allow-methods"), Some("PURGE"));
        assert_eq!(
            get(&h, "access-control-allow-headers"),
            Some("authorization,x-anything")
        );
        assert!(get(&h, "access-control-max-age").is_none());
        assert!(get(&h, "access-control-allow-credentials").is_none());
    }

    #[tokio::test]
    async fn default_methods_are_the_safelisted_ones() {
        let p = build("{ allow_origins: [\"https://a.example\"] }");
        let ask = |m: &'static str| {
            request(
                "OPTIONS",
                &[
                    ("origin", "https://a.example"),
                    ("access-control-request-method", m),
                ],
            )
        };
        let (_, h) = run(&p, ask("POST"), &[]).await;
        assert_eq!(
            get(&h, "access-control-allow-methods"),
            Some("GET, HEAD, POST")
        );
        assert!(get(&h, "access-control-allow-headers").is_none());
        let (_, h) = run(&p, ask("PUT"), &[]).await;
        assert!(!has_cors(&h));
    }

    #[test]
    fn config_errors_name_their_field() {
        let load = |yaml: &str| {
            let text = format!("version: 1\nplugins:\n  cors: {yaml}\n");
            frontdesk_config::load_str(&text, &|_| None)
                .expect_err("invalid")
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        };
        let e = load("{ allow_origins: [] }");
        assert!(e.contains("plugins.cors.allow_origins: "), "{e}");
        let e = load(
            "{ allow_origins: [\"https://a.example/\", \"a.example\", \"https://*.a.example\"] }",
        );
        assert!(e.contains("plugins.cors.allow_origins[0]: "), "{e}");
        assert!(e.contains("plugins.cors.allow_origins[1]: "), "{e}");
        assert!(e.contains("plugins.cors.allow_origins[2]: "), "{e}");
        let e = load("{ allow_origins: [\"*\"], allow_methods: [\"G T\"], allow_headers: [\"x:y\"], expose_headers: [\"\"] }");
        assert!(e.contains("plugins.cors.allow_methods[0]: "), "{e}");
        assert!(e.contains("plugins.cors.allow_headers[0]: "), "{e}");
        assert!(e.contains("plugins.cors.expose_headers[0]: "), "{e}");

        // A route's own cors under a global one.
        let text = "version: 1\nplugins: { cors: { allow_origins: [\"*\"] } }\nroutes:\n  - { name: r, match: { paths: [\"/\"] }, plugins: { cors: { allow_origins: [\"*\"] }, respond: {} } }\n";
        let e = frontdesk_config::load_str(text, &|_| None).expect_err("both scopes");
        assert!(
            e.iter()
                .any(|d| d.path == "routes[0].plugins.cors" && d.message.contains("not both")),
            "{e:?}"
        );
        // `*` exposed with credentials only warns.
        let text = "version: 1\nplugins: { cors: { allow_origins: [\"*\"], expose_headers: [\"*\"], allow_credentials: true } }\n";
        let loaded = frontdesk_config::load_str(text, &|_| None).expect("valid");
        assert!(
            loaded
                .warnings
                .iter()
                .any(|d| d.path == "plugins.cors.expose_headers"),
            "{:?}",
            loaded.warnings
        );
    }
}
