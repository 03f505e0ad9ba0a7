//! Aggregate routes: one client request answered with several upstream calls, merged into one
//! JSON answer (`routes[].aggregate`, docs/aggregation.md).
//!
//! It sits below the proxy and above the upstreams: the proxy hands a request that matched an
//! aggregate route (after the route's plugins let it through) to [`Aggregate::answer`], which
//! runs the calls through [`Upstream::call`] (balancing, health, retries, the circuit breaker
//! and timeouts, as for a proxied request) and gives back the answer with what each call did,
//! for the exchange's record and trace.
//!
//! Calls that do not depend on each other run at once, each in its own task; a call starts as
//! soon as the calls it depends on have answered, and is skipped when one of them failed. A
//! failed required call ends the answer at once (the other calls are cancelled). Everything the
//! calls read from upstream answers is bounded: each body (`max_body`), all of them together
//! (`max_answer`), a fan-out's length (`max_fan_out`), and the whole answer by `timeout`.

mod jq;
mod merge;
mod template;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use frontdesk_config::model::aggregate::{Step, Template, ValueRef};
use frontdesk_config::{AggregateConfig, MergeConfig};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::body::{Body, CollectError};
use crate::error::{ErrorKind, GatewayError};
use crate::observe::metrics::{Family, Histogram, Metrics};
use crate::observe::trace::{self, TraceContext};
use crate::observe::{CallReport, CallSpan};
use crate::route::AggregateCall;
use crate::upstream::{CallError, CallOptions, Upstream};
pub use jq::Jq;
use template::{BodyTemplate, Lookup};

/// `X-Frontdesk-Partial: true`: an optional call failed and its key is `null`.
pub static X_FRONTDESK_PARTIAL: HeaderName = HeaderName::from_static("x-frontdesk-partial");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_ANONYMOUS_CONSUMER: HeaderName = HeaderName::from_static("x-anonymous-consumer");

/// An aggregate route's calls and merge, compiled.
#[derive(Debug)]
pub struct Aggregate {
    route: Arc<str>,
    /// In config order (by name).
    calls: Vec<Call>,
    merge: Merge,
    /// Calls whose answer headers are taken, first one first.
    headers_from: Vec<usize>,
    headers_allow: Vec<HeaderName>,
    timeout: Duration,
    meta_key: String,
    max_body: u64,
    max_answer: u64,
    max_fan_out: usize,
    /// Some template reads the client's body (`request.body`).
    needs_body: bool,
    /// The route's response cache, which `GET` calls consult and fill (when the route caches).
    cache: Option<CallCache>,
}

/// What a call needs of the route's cache: the stores and the RFC 9111 rules of its config.
#[derive(Debug)]
struct CallCache {
    cache: Arc<crate::cache::Cache>,
    rules: crate::cache::policy::Rules,
}

#[derive(Debug)]
struct Call {
    name: Arc<str>,
    upstream: Arc<Upstream>,
    method: Method,
    path: Template,
    headers: Vec<(HeaderName, Template)>,
    /// Client headers it receives.
    forward: Vec<HeaderName>,
    body: Option<BodyTemplate>,
    required: bool,
    timeout: Option<Duration>,
    /// The calls it waits for (indexes into `Aggregate::calls`).
    deps: Vec<usize>,
    for_each: Option<ForEach>,
    /// What the config says, for `explain`.
    for_each_text: Option<String>,
    path_text: String,
    duration: Arc<Histogram>,
    /// `frontdesk_aggregate_calls_total` by result: ok, failed, timeout, skipped.
    counters: [Arc<AtomicU64>; 4],
}

#[derive(Debug)]
struct ForEach {
    /// The reference, `[*]` included.
    source: ValueRef,
    /// Where `[*]` is in `source.steps`.
    each_at: usize,
    /// The element's name in templates.
    element: String,
    max_parallel: usize,
}

#[derive(Debug)]
enum Merge {
    /// Every call's body under its name.
    All,
    /// Answer keys to picks (`None`: the whole object of bodies).
    Pick(Vec<(String, Option<ValueRef>)>),
    /// A jq expression.
    Jq(Arc<Jq>),
}

/// What an aggregate needs to know of the client's request, after the route's plugins.
#[derive(Debug)]
pub struct AggregateRequest {
    /// The request id, sent with every call.
    pub request_id: HeaderValue,
    /// The client's method.
    pub method: Method,
    /// The client's path.
    pub path: String,
    /// The client's query, without `?`.
    pub query: Option<String>,
    /// The client's headers, as the plugins left them (consumer headers included).
    pub headers: HeaderMap,
    /// The route template's parameters, as the client sent them (percent-encoded).
    pub params: Vec<(Arc<str>, String)>,
    /// The client's address (for consistent hashing).
    pub client_ip: IpAddr,
    /// The exchange's trace, when traced: each call's attempts are sent under it.
    pub trace: Option<TraceContext>,
    /// Whether the exchange is observed: what each call did is then reported.
    pub observed: bool,
    /// The client's body (read only when a template uses `request.body`).
    pub body: Body,
}

/// An aggregate's answer and what its calls did.
#[derive(Debug)]
pub struct Answered {
    /// The JSON answer (`200`), or the problem naming the required call that failed (`502`,
    /// `504`).
    pub response: Response<Body>,
    /// Each upstream call's report (observed exchanges only), for the record and the trace.
    pub reports: Vec<CallReport>,
    /// Each call's span (sampled traces only).
    pub spans: Vec<CallSpan>,
    /// Why the answer is a failure, when it is one.
    pub error: Option<ErrorKind>,
}

/// Why a call has no answer.
#[derive(Clone, Debug)]
struct Failure {
    /// The upstream's status when it answered, else the gateway's status for the failure.
    status: u16,
    reason: String,
    timeout: bool,
    kind: ErrorKind,
}

impl Failure {
    fn new(status: StatusCode, reason: impl Into<String>, kind: ErrorKind) -> Failure {
        Failure {
            status: status.as_u16(),
            reason: reason.into(),
            timeout: status == StatusCode::GATEWAY_TIMEOUT,
            kind,
        }
    }

    fn bad(reason: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_GATEWAY, reason, ErrorKind::UpstreamReset)
    }
}

/// One call's answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

#[derive(Debug)]
enum Outcome {
    Ok(Answer),
    Failed(Failure),
    /// Not made: a call it depends on failed.
    Skipped(String),
}

/// A finished call, as the calls after it see it.
#[derive(Debug)]
struct Done {
    outcome: Outcome,
}

/// A finished call's task: its outcome and what it did.
#[derive(Debug)]
struct Finished {
    outcome: Outcome,
    reports: Vec<CallReport>,
    span: Option<CallSpan>,
}

impl Done {
    fn answer(&self) -> Option<&Answer> {
        match &self.outcome {
            Outcome::Ok(a) => Some(a),
            _ => None,
        }
    }
}

/// The client's request as templates read it.
#[derive(Debug)]
struct Inputs {
    request_id: HeaderValue,
    method: Method,
    path: String,
    /// Decoded query pairs.
    query: Vec<(String, String)>,
    headers: HeaderMap,
    /// Decoded path parameters.
    params: Vec<(Arc<str>, String)>,
    client_ip: IpAddr,
    trace: Option<TraceContext>,
    observed: bool,
    body: Option<Value>,
    /// Bytes read from every call's answer so far.
    spent: AtomicU64,
}

/// What one call's templates see.
struct Values<'a> {
    agg: &'a Aggregate,
    inputs: &'a Inputs,
    done: &'a [Option<Arc<Done>>],
    element: Option<(&'a str, &'a Value)>,
}

impl Lookup for Values<'_> {
    fn lookup(&self, r: &ValueRef) -> Option<Value> {
        if let Some(i) = self.agg.index(&r.root) {
            let a = self.done.get(i)?.as_ref()?.answer()?;
            return match r.steps.split_first()? {
                (Step::Key(k), rest) if k == "body" => template::follow(&a.body, rest).cloned(),
                (Step::Key(k), []) if k == "status" => Some(Value::from(a.status)),
                (Step::Key(k), [Step::Key(name)]) if k == "headers" => a
                    .headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(Value::from),
                _ => None,
            };
        }
        if r.root == "request" {
            let i = self.inputs;
            return match r.steps.split_first()? {
                (Step::Key(k), rest) if k == "body" => {
                    template::follow(i.body.as_ref()?, rest).cloned()
                }
                (Step::Key(k), []) if k == "method" => Some(Value::from(i.method.as_str())),
                (Step::Key(k), []) if k == "path" => Some(Value::from(i.path.as_str())),
                (Step::Key(k), [Step::Key(name)]) if k == "query" => i
                    .query
                    .iter()
                    .find(|(q, _)| q == name)
                    .map(|(_, v)| Value::from(v.as_str())),
                (Step::Key(k), [Step::Key(name)]) if k == "headers" => i
                    .headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(Value::from),
                _ => None,
            };
        }
        if let Some((name, v)) = self.element {
            if name == r.root {
                return template::follow(v, &r.steps).cloned();
            }
        }
        let (_, v) = self.inputs.params.iter().find(|(n, _)| **n == *r.root)?;
        r.steps.is_empty().then(|| Value::from(v.as_str()))
    }
}

/// Why an aggregate could not be compiled: the field under `routes[i].aggregate` and the reason.
#[derive(Debug)]
pub struct BuildError {
    /// Such as `merge` or `calls.profile.upstream`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

// === impl Aggregate ===

impl Aggregate {
    /// Compiles a validated aggregate of route `route`. `upstreams` are the snapshot's; an
    /// upstream the config names that is missing (it failed to build and was reported) is an
    /// error too, as is a jq merge that does not compile.
    pub fn build(
        route: &Arc<str>,
        cfg: &AggregateConfig,
        upstreams: &HashMap<String, Arc<Upstream>>,
        metrics: &Metrics,
    ) -> Result<Aggregate, BuildError> {
        let err = |field: String, message: String| BuildError { field, message };
        let names: Vec<&String> = cfg.calls.keys().collect();
        let index = |n: &str| names.iter().position(|k| k.as_str() == n);
        let header_names = |list: &[String], field: String| {
            list.iter()
                .map(|h| {
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| err(field.clone(), format!("invalid header name {h:?}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let route_forward = header_names(&cfg.forward_headers, "forward_headers".into())?;
        let mut calls = Vec::with_capacity(cfg.calls.len());
        let mut needs_body = false;
        for (name, c) in &cfg.calls {
            let at = |f: &str| format!("calls.{name}.{f}");
            let upstream = upstreams
                .get(&c.upstream)
                .cloned()
                .ok_or_else(|| err(at("upstream"), format!("unknown upstream {:?}", c.upstream)))?;
            let method = Method::from_bytes(c.method.as_bytes())
                .map_err(|_| err(at("method"), format!("invalid method {:?}", c.method)))?;
            let path = Template::parse(&c.path).map_err(|e| err(at("path"), e))?;
            let mut refs: Vec<ValueRef> = path.refs().cloned().collect();
            let mut headers = Vec::new();
            for (h, v) in &c.headers {
                let n = HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| err(at("headers"), format!("invalid header name {h:?}")))?;
                let t = Template::parse(v).map_err(|e| err(at("headers"), e))?;
                refs.extend(t.refs().cloned());
                headers.push((n, t));
            }
            let body = match &c.body {
                None => None,
                Some(b) => {
                    let mut texts = Vec::new();
                    frontdesk_config::model::aggregate::body_templates(b, &mut texts);
                    for t in texts {
                        let t = Template::parse(&t).map_err(|e| err(at("body"), e))?;
                        refs.extend(t.refs().cloned());
                    }
                    Some(BodyTemplate::compile(b).map_err(|e| err(at("body"), e))?)
                }
            };
            let for_each = match &c.for_each {
                None => None,
                Some(fe) => {
                    let source = ValueRef::parse(fe).map_err(|e| err(at("for_each"), e))?;
                    let each_at = source
                        .each_at()
                        .ok_or_else(|| err(at("for_each"), "no `[*]`".into()))?;
                    let element = c
                        .each_as
                        .clone()
                        .or_else(|| {
                            source.steps.iter().rev().find_map(|s| match s {
                                Step::Key(k) => Some(k.clone()),
                                _ => None,
                            })
                        })
                        .ok_or_else(|| err(at("as"), "name the element".into()))?;
                    refs.push(source.clone());
                    Some(ForEach {
                        source,
                        each_at,
                        element,
                        max_parallel: c.max_parallel.max(1),
                    })
                }
            };
            needs_body |= refs
                .iter()
                .any(|r| r.root == "request" && r.steps.first() == Some(&Step::Key("body".into())));
            let mut deps: Vec<usize> = c
                .depends_on
                .iter()
                .chain(refs.iter().map(|r| &r.root))
                .filter_map(|n| index(n))
                .collect();
            deps.sort_unstable();
            deps.dedup();
            let mut forward = route_forward.clone();
            forward.extend(header_names(&c.forward_headers, at("forward_headers"))?);
            let call_name: Arc<str> = Arc::from(name.as_str());
            let counter = |result: &str| {
                metrics.counter(
                    Family::AggregateCalls,
                    [route.clone(), call_name.clone(), Arc::from(result)],
                )
            };
            calls.push(Call {
                upstream,
                method,
                path,
                headers,
                forward,
                body,
                required: c.required,
                timeout: c.timeout.map(|t| t.get()),
                deps,
                for_each,
                for_each_text: c.for_each.clone(),
                path_text: c.path.clone(),
                duration: metrics.aggregate_call(route, &call_name),
                counters: [
                    counter("ok"),
                    counter("failed"),
                    counter("timeout"),
                    counter("skipped"),
                ],
                name: call_name,
            });
        }
        let merge = match &cfg.merge {
            None => Merge::All,
            Some(MergeConfig::Pick(picks)) => Merge::Pick(
                picks
                    .iter()
                    .map(|(k, p)| {
                        let r = match p.strip_prefix("$.") {
                            None => None,
                            Some(rest) => Some(
                                ValueRef::parse(rest).map_err(|e| err(format!("merge.{k}"), e))?,
                            ),
                        };
                        Ok((k.clone(), r))
                    })
                    .collect::<Result<_, BuildError>>()?,
            ),
            Some(MergeConfig::Jq(code)) => Merge::Jq(Arc::new(
                Jq::compile(code).map_err(|e| err("merge".into(), e))?,
            )),
        };
        let (headers_from, headers_allow) = match &cfg.headers {
            None => (Vec::new(), Vec::new()),
            Some(h) => (
                h.from.iter().filter_map(|n| index(n)).collect(),
                header_names(&h.allow, "headers.allow".into())?,
            ),
        };
        Ok(Aggregate {
            route: route.clone(),
            calls,
            merge,
            headers_from,
            headers_allow,
            timeout: cfg.timeout.get(),
            meta_key: cfg.meta_key.clone(),
            max_body: cfg.max_body.0,
            max_answer: cfg.max_answer.0,
            max_fan_out: cfg.max_fan_out,
            needs_body,
            cache: None,
        })
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.calls.iter().position(|c| &*c.name == name)
    }

    /// The upstreams the calls use, in call order (a name may repeat).
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.calls.iter().map(|c| &c.upstream)
    }

    /// The calls as `explain` shows them, with the route's path parameters (as the client sent
    /// them) filled into their paths where a path names one.
    pub fn explain(&self, params: &[(Arc<str>, String)]) -> Vec<AggregateCall> {
        let inputs = Inputs {
            request_id: HeaderValue::from_static(""),
            method: Method::GET,
            path: String::new(),
            query: Vec::new(),
            headers: HeaderMap::new(),
            params: params
                .iter()
                .map(|(k, v)| (k.clone(), template::decode(v)))
                .collect(),
            client_ip: IpAddr::from([0, 0, 0, 0]),
            trace: None,
            observed: false,
            body: None,
            spent: AtomicU64::new(0),
        };
        let values = Values {
            agg: self,
            inputs: &inputs,
            done: &[],
            element: None,
        };
        self.calls
            .iter()
            .map(|c| {
                // A path whose placeholders are all known is shown filled in; any other as
                // written.
                let path =
                    template::render_path(&c.path, &values).unwrap_or_else(|_| c.path_text.clone());
                AggregateCall {
                    name: c.name.to_string(),
                    upstream: c.upstream.name.to_string(),
                    method: c.method.to_string(),
                    path,
                    required: c.required,
                    after: c
                        .deps
                        .iter()
                        .map(|d| self.calls[*d].name.to_string())
                        .collect(),
                    for_each: c.for_each_text.clone(),
                    max_parallel: c.for_each.as_ref().map(|f| f.max_parallel),
                }
            })
            .collect()
    }

    /// Answers a request: runs the calls, then merges their bodies. A client body that a
    /// template needs but that is not JSON, or too large, is the client's error.
    pub async fn answer(self: &Arc<Self>, req: AggregateRequest) -> Result<Answered, GatewayError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let body = if self.needs_body {
            Some(self.client_body(req.body, deadline).await?)
        } else {
            None
        };
        let inputs = Arc::new(Inputs {
            query: req
                .query
                .as_deref()
                .map(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            params: req
                .params
                .iter()
                .map(|(k, v)| (k.clone(), template::decode(v)))
                .collect(),
            request_id: req.request_id,
            method: req.method,
            path: req.path,
            headers: req.headers,
            client_ip: req.client_ip,
            trace: req.trace,
            observed: req.observed,
            body,
            spent: AtomicU64::new(0),
        });
        let mut reports = Vec::new();
        let mut spans = Vec::new();
        let done = self
            .run_calls(&inputs, deadline, &mut reports, &mut spans)
            .await;
        // A required call that failed (or was never made) fails the whole answer.
        let failed_required = self.calls.iter().zip(&done).find_map(|(c, d)| {
            let failure = match &d.outcome {
                Outcome::Ok(_) => return None,
                Outcome::Failed(f) => f.clone(),
                Outcome::Skipped(why) => Failure::bad(format!("it was not made: {why}")),
            };
            c.required.then_some((c, failure))
        });
        let (response, error) = match failed_required {
            Some((c, f)) => (self.failure(c, &f, &inputs.request_id), Some(f.kind)),
            None => match self.merged(&done, &inputs, deadline).await {
                Ok(r) => (r, None),
                Err(f) => (self.problem(&f, &inputs.request_id, None), Some(f.kind)),
            },
        };
        Ok(Answered {
            response,
            reports,
            spans,
            error,
        })
    }

    /// Reads the client's JSON body, within `max_body` and the deadline.
    async fn client_body(
        &self,
        body: Body,
        deadline: tokio::time::Instant,
    ) -> Result<Value, GatewayError> {
        let read = tokio::time::timeout_at(deadline, body.collect_capped(self.max_body)).await;
        let bytes = match read {
            Err(_) => {
                return Err(GatewayError::downstream(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                ))
            }
            Ok(Err(CollectError::Overflow(_))) => {
                return Err(GatewayError::downstream(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than {} bytes", self.max_body),
                ))
            }
            Ok(Err(CollectError::Failed(_))) => {
                return Err(GatewayError::downstream(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                ))
            }
            Ok(Ok(c)) => c.data,
        };
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|_| {
            GatewayError::downstream(StatusCode::BAD_REQUEST, "the request body is not JSON")
        })
    }

    /// Runs every call, each as soon as its dependencies have answered, until all are done, a
    /// required one failed, or the deadline passed (calls still running then fail as timed out).
    async fn run_calls(
        self: &Arc<Self>,
        inputs: &Arc<Inputs>,
        deadline: tokio::time::Instant,
        reports: &mut Vec<CallReport>,
        spans: &mut Vec<CallSpan>,
    ) -> Vec<Arc<Done>> {
        let n = self.calls.len();
        let mut done: Vec<Option<Arc<Done>>> = vec![None; n];
        let mut started = vec![false; n];
        // Dropped on return: calls still running are cancelled.
        let mut tasks = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, usize> = HashMap::new();
        loop {
            let mut progressed = true;
            while progressed {
                progressed = false;
                for (i, c) in self.calls.iter().enumerate() {
                    if started[i] || !c.deps.iter().all(|d| done[*d].is_some()) {
                        continue;
                    }
                    started[i] = true;
                    let failed_dep = c
                        .deps
                        .iter()
                        .find(|d| done[**d].as_ref().and_then(|x| x.answer()).is_none());
                    if let Some(d) = failed_dep {
                        c.counters[3].fetch_add(1, Ordering::Relaxed);
                        done[i] = Some(Arc::new(Done {
                            outcome: Outcome::Skipped(format!(
                                "call {:?} failed",
                                &*self.calls[*d].name
                            )),
                        }));
                        progressed = true;
                        continue;
                    }
                    let task = Arc::clone(self).run_call(i, inputs.clone(), done.clone());
                    let handle = tasks.spawn(task);
                    running.insert(handle.id(), i);
                }
            }
            let required_failed = self
                .calls
                .iter()
                .zip(&done)
                .any(|(c, d)| c.required && d.as_ref().is_some_and(|d| d.answer().is_none()));
            if required_failed || done.iter().all(Option::is_some) {
                break;
            }
            match tokio::time::timeout_at(deadline, tasks.join_next_with_id()).await {
                Ok(Some(Ok((id, f)))) => {
                    reports.extend(f.reports);
                    spans.extend(f.span);
                    if let Some(i) = running.remove(&id) {
                        done[i] = Some(Arc::new(Done { outcome: f.outcome }));
                    }
                }
                Ok(Some(Err(e))) => {
                    // A call's task that panicked: a bug, reported as the call's failure.
                    if let Some(i) = running.remove(&e.id()) {
                        tracing::error!(route = %self.route, call = %self.calls[i].name, "an aggregate call's task failed: {e}");
                        done[i] = Some(Arc::new(Done {
                            outcome: Outcome::Failed(Failure::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "the gateway failed",
                                ErrorKind::Internal,
                            )),
                        }));
                    }
                }
                // Nothing runs and not everything is done: cannot happen (validation refuses
                // cycles), but never wait for ever.
                Ok(None) => break,
                Err(_) => break,
            }
        }
        let cut = format!(
            "it did not answer before the aggregate's deadline ({}ms)",
            self.timeout.as_millis()
        );
        done.into_iter()
            .enumerate()
            .map(|(i, d)| {
                d.unwrap_or_else(|| {
                    let c = &self.calls[i];
                    let outcome = if started[i] {
                        c.counters[2].fetch_add(1, Ordering::Relaxed);
                        Outcome::Failed(Failure::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            cut.clone(),
                            ErrorKind::UpstreamTimeout,
                        ))
                    } else {
                        c.counters[3].fetch_add(1, Ordering::Relaxed);
                        Outcome::Skipped("the aggregate's deadline passed first".into())
                    };
                    Arc::new(Done { outcome })
                })
            })
            .collect()
    }

    /// One call, in its own task: one request, or one per element of its `for_each`.
    async fn run_call(
        self: Arc<Self>,
        i: usize,
        inputs: Arc<Inputs>,
        done: Vec<Option<Arc<Done>>>,
    ) -> Finished {
        let c = &self.calls[i];
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let span_id = inputs
            .trace
            .as_ref()
            .filter(|t| t.sampled && inputs.observed)
            .map(|_| trace::new_span_id());
        let mut reports = Vec::new();
        let mut elements = None;
        let work = async {
            match &c.for_each {
                None => {
                    let values = Values {
                        agg: &self,
                        inputs: &inputs,
                        done: &done,
                        element: None,
                    };
                    self.one(c, &values, &inputs, span_id, &mut reports).await
                }
                Some(fe) => {
                    let done = Arc::new(done.clone());
                    self.fan_out(i, fe, &inputs, done, span_id, &mut reports, &mut elements)
                        .await
                }
            }
        };
        let result = match c.timeout {
            None => work.await,
            Some(t) => tokio::time::timeout(t, work).await.unwrap_or_else(|_| {
                Err(Failure::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("it took longer than its timeout ({}ms)", t.as_millis()),
                    ErrorKind::UpstreamTimeout,
                ))
            }),
        };
        let took = t0.elapsed();
        c.duration.observe(took);
        let (result_label, counter) = match &result {
            Ok(_) => ("ok", 0),
            Err(f) if f.timeout => ("timeout", 2),
            Err(_) => ("failed", 1),
        };
        c.counters[counter].fetch_add(1, Ordering::Relaxed);
        let span = span_id.map(|span_id| CallSpan {
            call: c.name.clone(),
            upstream: c.upstream.name.clone(),
            span_id,
            start: wall,
            duration: took,
            status: match &result {
                Ok(a) => Some(a.status),
                Err(f) => Some(f.status),
            },
            result: result_label,
            reason: result.as_ref().err().map(|f| f.reason.clone()),
            elements,
        });
        Finished {
            outcome: match result {
                Ok(a) => Outcome::Ok(a),
                Err(f) => Outcome::Failed(f),
            },
            reports,
            span,
        }
    }

    /// A `for_each` call: one request per element, at most `max_parallel` at once; its answer
    /// is the array of the elements' bodies, in order. An element that fails fails the call.
    #[allow(clippy::too_many_arguments)]
    async fn fan_out(
        self: &Arc<Self>,
        i: usize,
        fe: &ForEach,
        inputs: &Arc<Inputs>,
        done: Arc<Vec<Option<Arc<Done>>>>,
        parent: Option<[u8; 8]>,
        reports: &mut Vec<CallReport>,
        count: &mut Option<usize>,
    ) -> Result<Answer, Failure> {
        let source = {
            let values = Values {
                agg: self,
                inputs,
                done: &done,
                element: None,
            };
            let array = ValueRef {
                root: fe.source.root.clone(),
                steps: fe.source.steps[..fe.each_at].to_vec(),
                text: fe.source.text.clone(),
            };
            values.lookup(&array)
        };
        let list = match source {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => {
                return Err(Failure::bad(format!(
                    "`for_each: {}` found no array",
                    fe.source.text
                )))
            }
        };
        if list.len() > self.max_fan_out {
            return Err(Failure::bad(format!(
                "`for_each: {}` found {} elements, more than max_fan_out ({})",
                fe.source.text,
                list.len(),
                self.max_fan_out
            )));
        }
        *count = Some(list.len());
        let rest = &fe.source.steps[fe.each_at + 1..];
        let elements: Vec<Value> = list
            .iter()
            .map(|e| template::follow(e, rest).cloned().unwrap_or(Value::Null))
            .collect();
        let n = elements.len();
        let mut bodies: Vec<Option<Value>> = vec![None; n];
        let mut tasks = JoinSet::new();
        let mut next = 0;
        let mut in_flight = 0;
        let elements = Arc::new(elements);
        while next < n || in_flight > 0 {
            while next < n && in_flight < fe.max_parallel {
                let (agg, inputs, done, elements) = (
                    Arc::clone(self),
                    inputs.clone(),
                    done.clone(),
                    elements.clone(),
                );
                let at = next;
                tasks.spawn(async move {
                    let c = &agg.calls[i];
                    let name = agg.calls[i]
                        .for_each
                        .as_ref()
                        .map_or("", |f| f.element.as_str());
                    let values = Values {
                        agg: &agg,
                        inputs: &inputs,
                        done: &done,
                        element: Some((name, &elements[at])),
                    };
                    let mut reports = Vec::new();
                    let r = agg.one(c, &values, &inputs, parent, &mut reports).await;
                    (at, r, reports)
                });
                next += 1;
                in_flight += 1;
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            in_flight -= 1;
            let (at, r, mut more) = joined.map_err(|_| {
                Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the gateway failed",
                    ErrorKind::Internal,
                )
            })?;
            reports.append(&mut more);
            match r {
                Ok(a) => bodies[at] = Some(a.body),
                Err(mut f) => {
                    f.reason = format!("element {at}: {}", f.reason);
                    return Err(f);
                }
            }
        }
        Ok(Answer {
            status: 200,
            headers: HeaderMap::new(),
            body: Value::Array(bodies.into_iter().map(Option::unwrap_or_default).collect()),
        })
    }

    /// Lets `GET` calls use the route's response cache (`cfg` is the route's `cache` plugin's):
    /// a fresh stored answer is used without a request; a storable answer is stored.
    pub fn with_cache(
        mut self,
        cache: Arc<crate::cache::Cache>,
        cfg: &frontdesk_config::CacheConfig,
    ) -> Self {
        self.cache = Some(CallCache {
            cache,
            rules: crate::cache::policy::Rules {
                default_ttl: cfg.default_ttl.0,
                max_ttl: cfg.max_ttl.0,
                statuses: cfg.statuses.clone(),
                store_set_cookie: cfg.store_set_cookie,
                key_has_consumer: false,
                stale_while_revalidate: cfg.stale_while_revalidate.0,
                stale_if_error: cfg.stale_if_error.0,
            },
        });
        self
    }

    /// A fresh stored answer of call `c` for `req`, from the route's cache.
    fn cached(&self, key: &str, req: &Request<Body>) -> Option<Arc<crate::cache::Entry>> {
        let cc = self.cache.as_ref()?;
        let now = crate::cache::policy::unix_ms(std::time::SystemTime::now());
        let vars = cc.cache.get(key)?;
        let e = vars.iter().find(|e| {
            crate::cache::policy::vary_values(&e.meta.vary, req.headers()) == e.meta.vary_values
        })?;
        matches!(e.freshness(now), crate::cache::Freshness::Fresh(_) if !e.meta.no_cache)
            .then(|| e.clone())
    }

    /// Stores call `c`'s answer in the route's cache when the rules allow it.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &self,
        key: &str,
        req_headers: &HeaderMap,
        status: StatusCode,
        headers: &HeaderMap,
        data: &Bytes,
        sent_at: std::time::SystemTime,
    ) {
        let Some(cc) = &self.cache else { return };
        let now = std::time::SystemTime::now();
        let Ok(life) = crate::cache::policy::storable(
            &Method::GET,
            req_headers,
            status,
            headers,
            &cc.rules,
            sent_at,
            now,
        ) else {
            return;
        };
        let vary = crate::cache::policy::vary_names(headers).unwrap_or_default();
        let meta = crate::cache::Meta::new(
            key.to_string(),
            String::new(),
            vary.clone(),
            crate::cache::policy::vary_values(&vary, req_headers),
            Vec::new(),
            String::new(),
        );
        let e = crate::cache::Entry::new(meta, status, headers.clone(), data.clone(), &life, now);
        cc.cache.put(Arc::new(e));
    }

    /// One upstream request of call `c`, its answer read and parsed.
    async fn one(
        &self,
        c: &Call,
        values: &Values<'_>,
        inputs: &Inputs,
        parent: Option<[u8; 8]>,
        reports: &mut Vec<CallReport>,
    ) -> Result<Answer, Failure> {
        let req = self.request(c, values, inputs)?;
        // The route's cache, for `GET` calls: keyed by route, call, upstream and target.
        let cache_key = (self.cache.is_some() && c.method == Method::GET).then(|| {
            format!(
                "{}|call:{}|{}|{}",
                self.route,
                c.name,
                c.upstream.name,
                req.uri().path_and_query().map_or("/", |p| p.as_str())
            )
        });
        if let Some(e) = cache_key.as_deref().and_then(|k| self.cached(k, &req)) {
            inputs
                .spent
                .fetch_add(e.body.len() as u64, Ordering::Relaxed);
            return Ok(Answer {
                status: e.status.as_u16(),
                headers: e.headers.clone(),
                body: json_body(&e.body)?,
            });
        }
        let req_headers = cache_key.as_ref().map(|_| req.headers().clone());
        let sent_at = std::time::SystemTime::now();
        let mut opts = CallOptions {
            hash: c
                .upstream
                .hash_of(req.headers(), req.uri().path(), inputs.client_ip),
            preserve_host: false,
            body_sent: Default::default(),
            report: inputs.observed.then(|| CallReport {
                trace: inputs.trace.clone(),
                method: Some(c.method.clone()),
                parent,
                ..CallReport::default()
            }),
            raw_fields: None,
            added: Default::default(),
        };
        let called = c.upstream.call(Box::new(req), &mut opts).await;
        reports.extend(opts.report);
        let (resp, lease) = called.map_err(|e| call_failure(&e))?;
        let resp = *resp;
        let status = resp.status();
        if !status.is_success() {
            return Err(Failure {
                status: status.as_u16(),
                reason: format!("the upstream answered {}", status.as_u16()),
                timeout: false,
                kind: ErrorKind::UpstreamReset,
            });
        }
        let (parts, body) = resp.into_parts();
        let body = crate::upstream::leased(body, lease);
        if parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            return Err(Failure::bad(
                "the answer is compressed (content-encoding), which an aggregate does not read",
            ));
        }
        let budget = self
            .max_answer
            .saturating_sub(inputs.spent.load(Ordering::Relaxed));
        let cap = self.max_body.min(budget);
        let too_large = |len: u64| {
            if len > self.max_body {
                format!(
                    "the answer is larger than max_body ({} bytes)",
                    self.max_body
                )
            } else {
                format!(
                    "the answers together are larger than max_answer ({} bytes)",
                    self.max_answer
                )
            }
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(len) = declared.filter(|l| *l > cap) {
            return Err(Failure::bad(too_large(len)));
        }
        let data: Bytes = match body.collect_capped(cap).await {
            Ok(c) => c.data,
            Err(CollectError::Overflow(o)) => {
                let read: u64 = o.read.iter().map(|b| b.len() as u64).sum();
                return Err(Failure::bad(too_large(read)));
            }
            Err(CollectError::Failed(_)) => {
                return Err(Failure::bad("the answer's body failed while it was read"))
            }
        };
        if let (Some(key), Some(rh)) = (&cache_key, &req_headers) {
            self.store(key, rh, status, &parts.headers, &data, sent_at);
        }
        let len = data.len() as u64;
        let spent = inputs.spent.fetch_add(len, Ordering::Relaxed) + len;
        if spent > self.max_answer {
            return Err(Failure::bad(too_large(0)));
        }
        Ok(Answer {
            status: status.as_u16(),
            headers: parts.headers,
            body: json_body(&data)?,
        })
    }

    /// Call `c`'s request: path and query, headers, body.
    fn request(
        &self,
        c: &Call,
        values: &Values<'_>,
        inputs: &Inputs,
    ) -> Result<Request<Body>, Failure> {
        let path = template::render_path(&c.path, values).map_err(Failure::bad)?;
        let uri: http::Uri = path.parse().map_err(|_| {
            Failure::bad(format!("the path {path:?} is not a valid request target"))
        })?;
        let mut h = HeaderMap::new();
        for name in &c.forward {
            for v in inputs.headers.get_all(name) {
                h.append(name.clone(), v.clone());
            }
        }
        // Who the caller is, as the route's authentication plugins settled it.
        for (k, v) in &inputs.headers {
            if k.as_str().starts_with("x-consumer-") || *k == X_ANONYMOUS_CONSUMER {
                h.append(k.clone(), v.clone());
            }
        }
        // Without a trace of the gateway's own, the caller's trace context passes through.
        if inputs.trace.is_none() {
            for name in [&trace::TRACEPARENT, &trace::TRACESTATE] {
                if let Some(v) = inputs.headers.get(name) {
                    h.insert(name.clone(), v.clone());
                }
            }
        }
        h.insert(X_REQUEST_ID.clone(), inputs.request_id.clone());
        if !h.contains_key(header::ACCEPT) {
            h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        }
        // Answers are read here, not passed on: they must come as they are.
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        h.remove(header::HOST);
        h.remove(header::CONTENT_LENGTH);
        for (name, t) in &c.headers {
            let v = template::render_header(t, values).map_err(Failure::bad)?;
            let v = HeaderValue::from_str(&v)
                .map_err(|_| Failure::bad(format!("header {name} cannot take {v:?}")))?;
            h.insert(name.clone(), v);
        }
        let body = match &c.body {
            None => Body::empty(),
            Some(t) => {
                let v = t.render(values).map_err(Failure::bad)?;
                if !h.contains_key(header::CONTENT_TYPE) {
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
                Body::full(v.to_string())
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = c.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = h;
        Ok(req)
    }
}

/// A failed upstream call, as a call's failure: the status the gateway would answer for it.
/// A call's answer as JSON (an empty body is `null`).
fn json_body(data: &[u8]) -> Result<Value, Failure> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(data).map_err(|_| Failure::bad("the answer is not JSON"))
}

fn call_failure(e: &CallError) -> Failure {
    match e {
        CallError::Connect(_) => Failure::new(
            StatusCode::BAD_GATEWAY,
            "the upstream could not be reached",
            ErrorKind::UpstreamConnect,
        ),
        CallError::Reset(_) => Failure::new(
            StatusCode::BAD_GATEWAY,
            "the upstream closed the connection or sent an invalid response",
            ErrorKind::UpstreamReset,
        ),
        CallError::Timeout => Failure::new(
            StatusCode::GATEWAY_TIMEOUT,
            "the upstream did not answer in time",
            ErrorKind::UpstreamTimeout,
        ),
        CallError::CircuitOpen => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the upstream is failing; its circuit breaker is open",
            ErrorKind::CircuitOpen,
        ),
        CallError::Saturated => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests are in flight to the upstream",
            ErrorKind::CircuitOpen,
        ),
        CallError::NoHealthyEndpoint => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream endpoint is available",
            ErrorKind::NoHealthyTarget,
        ),
        CallError::ClientBody(_) => Failure::bad("the call's request body failed"),
    }
}
