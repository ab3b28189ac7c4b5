//! OpenTelemetry traces: spans of target [`TARGET`] (a request, each store call, the upstream
//! call), exported over OTLP/HTTP with JSON bodies when the binary is built with the `otlp`
//! feature and run with `--otlp-endpoint`; and W3C `traceparent` taken from each request and
//! written on the one forwarded upstream.
//!
//! Without an endpoint no subscriber wants these spans (the log's filter turns the target
//! off), so creating them costs a callsite check and nothing else.

use http::HeaderMap;

/// The target of the spans exported as traces (and only of those).
pub const TARGET: &str = "idem::trace";

/// The log filter's directive that keeps the trace spans out of the log lines.
pub const LOG_DIRECTIVE: &str = "idem::trace=off";

/// Makes `span`, a request's span, the child of the trace its `traceparent` names, if any.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    #[cfg(feature = "otlp")]
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
        });
        let _ = span.set_parent(parent);
    }
    #[cfg(not(feature = "otlp"))]
    let _ = (span, headers);
}

/// Writes `span`'s trace context (`traceparent`) on a request sent on its behalf.
pub fn pass_on(span: &tracing::Span, headers: &mut HeaderMap) {
    #[cfg(feature = "otlp")]
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let context = span.context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut opentelemetry_http::HeaderInjector(headers));
        });
    }
    #[cfg(not(feature = "otlp"))]
    let _ = (span, headers);
}

/// The OTLP/HTTP traces URL for `endpoint`: a collector's base URL gets `/v1/traces`.
#[cfg(feature = "otlp")]
pub fn traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let has_path = trimmed
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    if has_path {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

#[cfg(feature = "otlp")]
mod export {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::registry::LookupSpan;

    /// Keeps the exporter alive; dropping it sends what is left.
    pub struct Exporting(SdkTracerProvider);

    impl Drop for Exporting {
        fn drop(&mut self) {
            let _ = self.0.shutdown();
        }
    }

    /// The layer that turns [`super::TARGET`] spans into OpenTelemetry spans sent to
    /// `endpoint`, and the guard that flushes them.
    pub fn layer<S>(endpoint: &str) -> anyhow::Result<(impl Layer<S>, Exporting)>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(super::traces_url(endpoint))
            .build()?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name("idem").build())
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("idem"))
            .with_filter(Targets::new().with_target(super::TARGET, tracing::Level::INFO));
        Ok((layer, Exporting(provider)))
    }
}

#[cfg(feature = "otlp")]
pub use export::{Exporting, layer};

#[cfg(all(test, feature = "otlp"))]
mod tests {
    use super::*;

    #[test]
    fn a_collector_base_url_gets_the_traces_path() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/custom/traces"),
            "http://c:4318/custom/traces"
        );
    }
}
