//! The answer of an aggregate: the calls' bodies merged (picks or jq), the meta block and the
//! header of a partial answer, the headers taken from calls, and the problem for a failure.

use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use serde_json::{Map, Value};

use std::sync::Arc;

use super::{
    template, Aggregate, Call, Done, Failure, Inputs, Merge, Outcome, X_FRONTDESK_PARTIAL,
};
use crate::body::Body;
use crate::error::ErrorKind;

impl Aggregate {
    /// The merged answer, with the meta block and header of a partial one.
    pub(super) async fn merged(
        &self,
        done: &[Arc<Done>],
        inputs: &Inputs,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Body>, Failure> {
        let body_of = |i: usize| done[i].answer().map_or(Value::Null, |a| a.body.clone());
        let all = || -> Map<String, Value> {
            self.calls
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.to_string(), body_of(i)))
                .collect()
        };
        let mut answer = match &self.merge {
            Merge::All => Value::Object(all()),
            Merge::Pick(picks) => Value::Object(
                picks
                    .iter()
                    .map(|(k, pick)| {
                        let v = match pick {
                            None => Value::Object(all()),
                            Some(r) => self.index(&r.root).map_or(Value::Null, |i| {
                                done[i]
                                    .answer()
                                    .and_then(|a| template::follow(&a.body, &r.steps))
                                    .cloned()
                                    .unwrap_or(Value::Null)
                            }),
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            Merge::Jq(jq) => {
                let input = Value::Object(all()).to_string();
                let request = serde_json::json!({
                    "method": inputs.method.as_str(),
                    "path": inputs.path,
                    "params": inputs.params.iter().map(|(k, v)| (k.to_string(), Value::from(v.as_str()))).collect::<Map<_, _>>(),
                    "query": inputs.query.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect::<Map<_, _>>(),
                })
                .to_string();
                let jq = jq.clone();
                // jaq cannot be interrupted: it runs on a blocking thread, its built-in loops
                // stop at the deadline (the bounded runner), and the answer does not wait past it.
                let until = deadline.into_std();
                let run = tokio::task::spawn_blocking(move || {
                    jq.run(input.as_bytes(), request.as_bytes(), until)
                });
                let out =
                    match tokio::time::timeout_at(deadline, run).await {
                        Err(_) => return Err(Failure::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            "the merge expression did not finish before the aggregate's deadline",
                            ErrorKind::UpstreamTimeout,
                        )),
                        Ok(Err(_)) => Err("it stopped".to_string()),
                        Ok(Ok(r)) => r,
                    };
                let text = out.map_err(|e| {
                    // The reason may quote the answers' values: logged, not sent.
                    tracing::info!(route = %self.route, error = %e, "an aggregate's merge expression failed");
                    Failure::bad("the merge expression failed on the calls' answers")
                })?;
                serde_json::from_str(&text).map_err(|_| {
                    Failure::bad("the merge expression gave a value that is not JSON")
                })?
            }
        };
        let failed: Map<String, Value> = self
            .calls
            .iter()
            .zip(done)
            .filter_map(|(c, d)| {
                let (status, reason) = match &d.outcome {
                    Outcome::Ok(_) => return None,
                    Outcome::Failed(f) => (Value::from(f.status), f.reason.clone()),
                    Outcome::Skipped(why) => (Value::Null, format!("not made: {why}")),
                };
                Some((
                    c.name.to_string(),
                    serde_json::json!({ "status": status, "reason": reason }),
                ))
            })
            .collect();
        let partial = !failed.is_empty();
        if partial {
            if let Value::Object(m) = &mut answer {
                m.insert(
                    self.meta_key.clone(),
                    serde_json::json!({ "partial": true, "failed": failed }),
                );
            }
        }
        let bytes = serde_json::to_vec(&answer)
            .map_err(|_| Failure::bad("the answer could not be written"))?;
        if bytes.len() as u64 > self.max_answer {
            return Err(Failure::bad(format!(
                "the answer is larger than max_answer ({} bytes)",
                self.max_answer
            )));
        }
        let mut resp = Response::new(Body::full(bytes));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for name in &self.headers_allow {
            if is_framing(name) {
                continue;
            }
            let from = self
                .headers_from
                .iter()
                .filter_map(|i| done[*i].answer())
                .find(|a| a.headers.contains_key(name));
            if let Some(a) = from {
                for v in a.headers.get_all(name) {
                    h.append(name.clone(), v.clone());
                }
            }
        }
        if partial {
            h.insert(
                X_FRONTDESK_PARTIAL.clone(),
                HeaderValue::from_static("true"),
            );
            // A partial answer must not be stored and served again as if it were whole.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.remove(header::ETAG);
            h.remove(header::LAST_MODIFIED);
        }
        Ok(resp)
    }

    /// The answer when required call `c` failed: `504` for a timeout, else `502`, with a
    /// problem body that names the call and its status.
    pub(super) fn failure(
        &self,
        c: &Call,
        f: &Failure,
        request_id: &HeaderValue,
    ) -> Response<Body> {
        self.problem(f, request_id, Some(&c.name))
    }

    pub(super) fn problem(
        &self,
        f: &Failure,
        request_id: &HeaderValue,
        call: Option<&str>,
    ) -> Response<Body> {
        let status = if f.timeout {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        let mut doc = serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": match call {
                Some(name) => format!("the required call {name:?} failed: {}", f.reason),
                None => f.reason.clone(),
            },
        });
        if let Some(name) = call {
            doc["call"] = Value::from(name);
            doc["call_status"] = Value::from(f.status);
        }
        if let Ok(id) = request_id.to_str() {
            doc["request_id"] = Value::from(id);
        }
        let mut resp = Response::new(Body::full(doc.to_string()));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}

/// Headers the answer's framing and type own, never taken from a call's answer.
fn is_framing(h: &HeaderName) -> bool {
    *h == header::CONTENT_LENGTH
        || *h == header::TRANSFER_ENCODING
        || *h == header::CONTENT_TYPE
        || *h == header::CONTENT_ENCODING
        || *h == header::CONNECTION
}
