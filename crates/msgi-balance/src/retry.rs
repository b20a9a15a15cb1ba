//! Retrying idempotent requests once on another upstream: a tower
//! [`Policy`] for `tower::retry::Retry`, with a budget.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use msgi::{BoxError, ConfigError, Frame};
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::{Policy, RetryLayer};

use crate::error::Error;

/// Retries a correlated request once when `idempotent` says it may be
/// processed twice and it failed in a way another upstream can mend
/// ([`Error::is_retryable`]: its upstream died with it in flight, or it was
/// never sent). An upstream's ERROR answer is an answer, never retried; a
/// one-way frame is never retried (never cloned). Retries draw from a
/// [`TpsBudget`] shared by every clone, so they cannot amplify an outage:
/// beyond `min_per_sec` retries a second, at most `ratio` retries per
/// request.
pub struct RetryIdempotent<F> {
    idempotent: F,
    budget: Arc<TpsBudget>,
    retried: bool,
}

impl<F: Clone> Clone for RetryIdempotent<F> {
    fn clone(&self) -> Self {
        RetryIdempotent {
            idempotent: self.idempotent.clone(),
            budget: self.budget.clone(),
            retried: false,
        }
    }
}

impl<F> fmt::Debug for RetryIdempotent<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryIdempotent")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl<F> RetryIdempotent<F>
where
    F: Fn(&Frame) -> bool + Clone,
{
    /// A policy with a budget of `min_per_sec` retries a second plus `ratio`
    /// (0 to 1) per request, over a 10 s window.
    pub fn new(idempotent: F, min_per_sec: u32, ratio: f32) -> Result<Self, ConfigError> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(ConfigError::new("retry ratio", "must be between 0 and 1"));
        }
        if min_per_sec > 1_000_000 {
            return Err(ConfigError::new(
                "retry min_per_sec",
                "must be at most 1,000,000",
            ));
        }
        Ok(RetryIdempotent {
            idempotent,
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), min_per_sec, ratio)),
            retried: false,
        })
    }

    /// The policy as a layer (`ServiceBuilder::layer`).
    pub fn into_layer(self) -> RetryLayer<Self> {
        RetryLayer::new(self)
    }
}

impl<F> Policy<Frame, Option<Frame>, BoxError> for RetryIdempotent<F>
where
    F: Fn(&Frame) -> bool + Clone,
{
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Frame,
        result: &mut Result<Option<Frame>, BoxError>,
    ) -> Option<Self::Future> {
        let Err(error) = result else { return None };
        if self.retried {
            return None;
        }
        let retryable = error
            .downcast_ref::<Error>()
            .is_some_and(Error::is_retryable);
        if !retryable || !self.budget.withdraw() {
            return None;
        }
        self.retried = true;
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, req: &Frame) -> Option<Frame> {
        if req.request_id().is_none() || !(self.idempotent)(req) {
            return None;
        }
        if !self.retried {
            self.budget.deposit();
        }
        Some(req.clone())
    }
}
