//! Builds the tracing subscriber once per process, and, when an OTLP endpoint is configured,
//! exports spans over OTLP/gRPC with W3C trace context carried across the services' gRPC hops
//! (`traceparent`/`tracestate` metadata: injected by [`inject`] on every outgoing call made
//! through the platform's client interceptor, adopted by [`adopt_parent`] on every incoming
//! one), so one call is one trace across the gateway and the allocator. Off by default: no
//! exporter, no propagation, no cost.

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Log settings shared by both services.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` (human) or `json` (one object per line).
    pub format: String,
    /// An `EnvFilter` directive such as `info` or `allocator_svc=debug,info`; `RUST_LOG` wins.
    pub filter: String,
    /// An OTLP/gRPC collector (`http://collector:4317`, plaintext) to export spans to; empty
    /// (the default) exports nothing and propagates no trace context.
    pub otlp_endpoint: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: "text".into(),
            filter: "info".into(),
            otlp_endpoint: String::new(),
        }
    }
}

impl LogSettings {
    /// Checks the values; errors name `<section>.<key>`.
    ///
    /// # Errors
    /// When the endpoint is not an http:// URL.
    pub fn validate(&self, section: &str) -> anyhow::Result<()> {
        let e = self.otlp_endpoint.as_str();
        let plain_url =
            e.starts_with("http://") && e.parse::<http::Uri>().is_ok_and(|u| u.host().is_some());
        if !(e.is_empty() || plain_url) {
            anyhow::bail!(
                "{section}.otlp_endpoint: must be empty or an http:// URL of an OTLP/gRPC collector (TLS to the collector is not built in: run a local collector or sidecar)"
            );
        }
        Ok(())
    }
}

/// The tracer provider when spans are exported (flushed by [`shutdown`]).
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Runs the OTLP exporter's requests on the service's Tokio runtime: the SDK's batch processor
/// exports from a thread of its own, where the gRPC client finds no reactor.
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.export(batch).await })
            .await
            .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        // Called once while building the provider, before any export holds a second handle.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// The exporting provider for `service`, or why not.
fn provider(endpoint: &str, service: &str) -> anyhow::Result<SdkTracerProvider> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| anyhow::anyhow!("log.otlp_endpoint: tracing must start inside the runtime"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| anyhow::anyhow!("log.otlp_endpoint: {e}"))?;
    Ok(SdkTracerProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .with_batch_exporter(OnRuntime {
            inner: Arc::new(exporter),
            runtime,
        })
        .build())
}

/// Installs the global subscriber for `service` (its name in exported spans); a second call is
/// a no-op. With `otlp_endpoint` set, spans are exported and trace context propagated.
pub fn init(settings: &LogSettings, service: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let otel = if settings.otlp_endpoint.is_empty() || PROVIDER.get().is_some() {
        None
    } else {
        match provider(&settings.otlp_endpoint, service) {
            Ok(p) => {
                let tracer = p.tracer(service.to_owned());
                let _ = PROVIDER.set(p);
                Some(tracing_opentelemetry::layer().with_tracer(tracer))
            }
            Err(e) => {
                eprintln!("{service}: spans will not be exported: {e:#}");
                None
            }
        }
    };
    // The log filter (`RUST_LOG`, `log.filter`) chooses what is printed, not what is traced:
    // the exporter gets every span at INFO and above whatever the logs show.
    let fmt: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> =
        if settings.format == "json" {
            Box::new(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_filter(filter),
            )
        } else {
            Box::new(tracing_subscriber::fmt::layer().with_filter(filter))
        };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel.map(|l| l.with_filter(LevelFilter::INFO)))
        .try_init();
}

/// Exports what is still buffered and stops exporting (at the end of a service's life).
pub async fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let p = p.clone();
        // The provider waits for its export thread, which waits for this runtime: block a
        // thread of the blocking pool, never a worker.
        let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
    }
}

fn exporting() -> bool {
    PROVIDER.get().is_some()
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes the current span's trace context into an outgoing request's metadata (W3C
/// `traceparent`), when spans are exported.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    if exporting() {
        let cx = tracing::Span::current().context();
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
    }
}

/// Makes `span` a child of the trace an incoming request names in its headers (W3C
/// `traceparent`), when spans are exported and the request names one.
pub fn adopt_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if exporting() && headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(cx);
    }
}

/// Installs a test subscriber that prints only when `TEST_LOG` is set.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::registry()
            .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("debug")))
            .with(tracing_subscriber::fmt::layer().with_test_writer())
            .try_init();
    }
}
