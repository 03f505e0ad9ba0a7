//! What the authentication plugins share: the state they build together ([`AuthState`], kept in
//! the request's `Ctx::ext`) and the step that settles it after the last of them ([`Settle`],
//! added to a chain that has any auth plugin by [`super::finish`]).
//!
//! Auth plugins run one after the other; the first that identifies the caller wins and the others
//! step aside. After the last one the caller is settled: an identified caller's consumer goes
//! upstream in headers; an unidentified one goes on as an `anonymous` consumer if one was
//! offered, or is refused with `401` and every plugin's challenge.

use std::sync::Arc;

use async_trait::async_trait;
use http::{header, HeaderValue, StatusCode};

use crate::consumer::Consumer;
use crate::plugin::{
    Ctx, Flow, Phases, Plugin, PluginError, RequestHead, X_ANONYMOUS_CONSUMER, X_CONSUMER_GROUPS,
    X_CONSUMER_NAME,
};

/// Who the caller is, as the authentication plugins found out so far.
#[derive(Clone, Debug, Default)]
pub struct AuthState {
    /// True once a plugin identified the caller (as a consumer, or as an unnamed JWT caller).
    pub identified: bool,
    /// `WWW-Authenticate` challenges of the auth plugins that found no credentials.
    pub challenges: Vec<HeaderValue>,
    /// The consumer to go on as when no plugin identifies the caller.
    pub anonymous: Option<Arc<Consumer>>,
}

pub use crate::plugin::VerifiedClaims;

/// The request's auth state.
pub fn state(cx: &mut Ctx) -> &mut AuthState {
    cx.ext.get_or_insert_default::<AuthState>()
}

/// True once an earlier auth plugin identified the caller: later ones step aside.
pub fn identified(cx: &Ctx) -> bool {
    cx.ext.get::<AuthState>().is_some_and(|a| a.identified)
}

/// A plugin identified the caller (`None`: valid credentials that name no consumer).
pub fn identify(cx: &mut Ctx, consumer: Option<Arc<Consumer>>) {
    state(cx).identified = true;
    cx.consumer = consumer;
}

/// A plugin found no credentials of its kind: it offers its challenge and anonymous consumer.
pub fn missing(cx: &mut Ctx, challenge: HeaderValue, anonymous: Option<&Arc<Consumer>>) {
    let s = state(cx);
    s.challenges.push(challenge);
    if s.anonymous.is_none() {
        s.anonymous = anonymous.cloned();
    }
}

/// Settles who the caller is, right after the chain's last auth plugin.
pub struct Settle {
    /// The auth plugins' kinds joined by `+`: the plugin label of "no credentials" refusals.
    kinds: Arc<str>,
}

impl Settle {
    /// Runs after every auth plugin (120s) and before the access checks that read the consumer
    /// (`acl` at 150).
    pub const ORDER: u16 = 149;

    /// The step for a chain with these auth plugins.
    pub fn new(kinds: &[&str]) -> Self {
        Settle {
            kinds: Arc::from(kinds.join("+")),
        }
    }
}

#[async_trait]
impl Plugin for Settle {
    fn kind(&self) -> &'static str {
        "auth"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    async fn request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        let auth = state(cx);
        if !auth.identified {
            match auth.anonymous.take() {
                Some(anon) => {
                    auth.identified = true;
                    cx.consumer = Some(anon);
                    cx.anonymous = true;
                    req.headers.insert(
                        X_ANONYMOUS_CONSUMER.clone(),
                        HeaderValue::from_static("true"),
                    );
                }
                None => {
                    let mut err = PluginError::new(
                        StatusCode::UNAUTHORIZED,
                        "the request carries no credentials this route accepts",
                    )
                    .with_reason("missing_credentials");
                    err.plugin = Some(self.kinds.clone());
                    for c in auth.challenges.drain(..) {
                        err = err.with_header(header::WWW_AUTHENTICATE, c);
                    }
                    return Err(err);
                }
            }
        }
        if let Some(c) = &cx.consumer {
            req.headers
                .insert(X_CONSUMER_NAME.clone(), c.name_header.clone());
            match &c.groups_header {
                Some(groups) => {
                    req.headers
                        .insert(X_CONSUMER_GROUPS.clone(), groups.clone());
                }
                // No groups: no header at all, rather than an empty one.
                None => {
                    req.headers.remove(&X_CONSUMER_GROUPS);
                }
            }
        }
        Ok(Flow::Continue)
    }
}
