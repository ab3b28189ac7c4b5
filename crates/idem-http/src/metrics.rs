//! What became of each request the layer handled: `idem_requests_total{outcome}` and the
//! `outcome` field of the request's tracing span.

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    PassedThrough,
    Executed,
    Replayed,
    InFlight,
    OutcomeUnknown,
    Mismatch,
    KeyMissing,
    KeyInvalid,
    BodyTooLarge,
    BodyUnreadable,
    BodyTimeout,
    InvalidJson,
    PrincipalMissing,
    StoreUnavailable,
    StoreFull,
    FailedOpen,
    NotReplayable,
}

impl Disposition {
    const fn label(self) -> &'static str {
        match self {
            Self::PassedThrough => "passed_through",
            Self::Executed => "executed",
            Self::Replayed => "replayed",
            Self::InFlight => "in_flight",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::Mismatch => "mismatch",
            Self::KeyMissing => "key_missing",
            Self::KeyInvalid => "key_invalid",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyUnreadable => "body_unreadable",
            Self::BodyTimeout => "body_timeout",
            Self::InvalidJson => "invalid_json",
            Self::PrincipalMissing => "principal_missing",
            Self::StoreUnavailable => "store_unavailable",
            Self::StoreFull => "store_full",
            Self::FailedOpen => "failed_open",
            Self::NotReplayable => "not_replayable",
        }
    }

    /// Counts the request and notes the outcome on the current span.
    pub(crate) fn record(self) {
        metrics::counter!("idem_requests_total", "outcome" => self.label()).increment(1);
        tracing::Span::current().record("outcome", self.label());
        crate::report::outcome(self.label());
    }
}
