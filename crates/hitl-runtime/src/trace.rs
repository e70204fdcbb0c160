//! Distributed traces: W3C trace context carried in record headers, and spans exported to an
//! OpenTelemetry collector over OTLP/HTTP (JSON encoding, `POST {endpoint}/v1/traces`).
//!
//! One trace per decision: the router starts it (or continues the producer's), and every record a
//! service writes about the decision carries a `traceparent` naming that service's span. Span ids
//! are derived from the decision id, not drawn at random, so a record processed twice (after an
//! aborted transaction) carries the same context and its span is the same span.
//!
//! Export never slows the loop: spans go through a bounded queue to an exporter thread that
//! posts them in batches; a full queue or a failed post drops spans and counts them.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::EncodeLabelSet, metrics::counter::Counter, metrics::family::Family,
    registry::Registry,
};
use serde::Serialize;

use crate::config::TelemetrySettings;

/// A W3C trace context (`traceparent`, version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: u64,
    pub flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` value; `None` for anything that is not a valid version-00 context
    /// (all-zero ids are invalid).
    pub fn parse(value: &[u8]) -> Option<Self> {
        let value = std::str::from_utf8(value).ok()?;
        let mut parts = value.split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let trace = u128::from_str_radix(trace_id, 16)
            .ok()
            .filter(|_| trace_id.len() == 32)?;
        let span = u64::from_str_radix(span_id, 16)
            .ok()
            .filter(|_| span_id.len() == 16)?;
        let flags = u8::from_str_radix(flags, 16)
            .ok()
            .filter(|_| flags.len() == 2)?;
        (trace != 0 && span != 0).then_some(Self {
            trace_id: trace.to_be_bytes(),
            span_id: span,
            flags,
        })
    }

    /// Whether the trace is recorded (the `sampled` flag).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The context of a span that is a child of `parent`: the same trace and flags, a span id
    /// derived from `salt`. Without a parent, a new trace derived from `salt`, recorded when its
    /// id falls within `sample_ratio` (0..=1) — the same rule for the same id everywhere.
    pub fn child(parent: Option<&Self>, salt: &[u8], sample_ratio: f64) -> Self {
        let span_id = mix(fnv1a(salt, 0x811c_9dc5)) | 1;
        match parent {
            Some(parent) => Self { span_id, ..*parent },
            None => {
                let high = mix(fnv1a(salt, 0x9e37_79b9_7f4a_7c15));
                let low = mix(fnv1a(salt, 0xc2b2_ae3d_27d4_eb4f)) | 1;
                let trace_id = ((u128::from(high) << 64) | u128::from(low)).to_be_bytes();
                Self {
                    trace_id,
                    span_id,
                    flags: u8::from(sampled_by_ratio(low, sample_ratio)),
                }
            }
        }
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id.to_be_bytes());
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }

    pub fn trace_id_hex(&self) -> String {
        let mut out = String::with_capacity(32);
        push_hex(&mut out, &self.trace_id);
        out
    }
}

/// Like OpenTelemetry's `TraceIdRatioBased`: compare 63 bits of the trace id with the ratio.
fn sampled_by_ratio(low: u64, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio.is_nan() || ratio <= 0.0 {
        return false;
    }
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    (low >> 1) < bound
}

pub fn span_id_hex(span_id: u64) -> String {
    let mut out = String::with_capacity(16);
    push_hex(&mut out, &span_id.to_be_bytes());
    out
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
}

/// MurmurHash3's 64-bit finalizer: FNV alone leaves similar ids with similar high bits, which
/// would skew sampling by ratio.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

/// Milliseconds since the epoch as nanoseconds (for spans that start at a recorded event time).
pub fn millis_to_nanos(millis: i64) -> u64 {
    u64::try_from(millis).unwrap_or(0).saturating_mul(1_000_000)
}

/// OTLP span kinds used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    /// Processing a record read from Kafka.
    Consumer = 5,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for Value {
    fn from(value: &'static str) -> Self {
        Self::Str(Cow::Borrowed(value))
    }
}
impl From<String> for Value {
    fn from(value: String) -> Self {
        Self::Str(Cow::Owned(value))
    }
}
impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}
impl From<bool> for Value {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

/// A finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub name: &'static str,
    pub kind: SpanKind,
    /// This span's own context (its trace id and span id).
    pub context: TraceContext,
    pub parent_span_id: Option<u64>,
    pub start_nanos: u64,
    pub end_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// Set for a span that ended in an error (a dead letter, a rejected verdict).
    pub error: Option<String>,
}

impl Span {
    /// A span named `name` with context `context`, child of `parent` (a span id in the same trace).
    pub fn new(
        name: &'static str,
        kind: SpanKind,
        context: TraceContext,
        parent: Option<&TraceContext>,
        start_nanos: u64,
    ) -> Self {
        Self {
            name,
            kind,
            context,
            parent_span_id: parent
                .filter(|parent| parent.trace_id == context.trace_id)
                .map(|parent| parent.span_id),
            start_nanos,
            end_nanos: start_nanos,
            attributes: Vec::new(),
            error: None,
        }
    }

    pub fn attribute(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.attributes.push((key, value.into()));
        self
    }

    pub fn ended_at(mut self, end_nanos: u64) -> Self {
        self.end_nanos = end_nanos.max(self.start_nanos);
        self
    }

    pub fn failed(mut self, message: impl Into<String>) -> Self {
        self.error = Some(message.into());
        self
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Default)]
struct TraceMetrics {
    exported: Counter,
    dropped: Family<ReasonLabel, Counter>,
}

impl TraceMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let sub = registry.sub_registry_with_prefix("hitl_trace");
        sub.register(
            "spans_exported",
            "Spans accepted by the OTLP endpoint",
            metrics.exported.clone(),
        );
        sub.register(
            "spans_dropped",
            "Spans not exported, by reason (queue_full: the exporter fell behind; export_failed: the endpoint refused or could not be reached)",
            metrics.dropped.clone(),
        );
        // Every series from the start, at 0, so that alerts on their increase work.
        for reason in ["queue_full", "export_failed"] {
            let _ = metrics.dropped.get_or_create(&ReasonLabel { reason });
        }
        metrics
    }

    fn dropped(&self, reason: &'static str, count: usize) {
        self.dropped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(count as u64);
    }
}

/// Where a service sends its spans. Cheap to clone; a disabled tracer (no OTLP endpoint
/// configured) drops everything at no cost. The exporter ends when every clone is dropped.
#[derive(Debug, Clone)]
pub struct Tracer {
    sample_ratio: f64,
    sender: Option<SyncSender<Span>>,
    /// Spans queued and not yet taken by the exporter.
    queued: Arc<AtomicUsize>,
    metrics: TraceMetrics,
}

impl Default for Tracer {
    fn default() -> Self {
        Self::disabled(1.0)
    }
}

impl Tracer {
    /// A tracer that exports nothing; new traces are still marked sampled by `sample_ratio`, so
    /// services downstream that do export agree on which decisions are traced.
    pub fn disabled(sample_ratio: f64) -> Self {
        Self {
            sample_ratio,
            sender: None,
            queued: Arc::default(),
            metrics: TraceMetrics::default(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.sender.is_some()
    }

    pub fn sample_ratio(&self) -> f64 {
        self.sample_ratio
    }

    /// Whether to build the span of this context: export is on, the trace is sampled, and the
    /// queue has room (a full queue counts the span as dropped, before it costs anything).
    pub fn records(&self, context: &TraceContext) -> bool {
        if self.sender.is_none() || !context.sampled() {
            return false;
        }
        if self.queued.load(Ordering::Relaxed) >= QUEUE {
            self.metrics.dropped("queue_full", 1);
            return false;
        }
        true
    }

    /// Queues `span` for export if its trace is sampled; never blocks.
    pub fn export(&self, span: Span) {
        let Some(sender) = &self.sender else { return };
        if !span.context.sampled() {
            return;
        }
        // Counted before it is sent, so the exporter never takes one it was not told about.
        self.queued.fetch_add(1, Ordering::Relaxed);
        let dropped = match sender.try_send(span) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "queue_full",
            Err(TrySendError::Disconnected(_)) => "export_failed",
        };
        self.queued.fetch_sub(1, Ordering::Relaxed);
        self.metrics.dropped(dropped, 1);
    }
}

/// The exporter thread; `finish` waits for it to post what is queued.
pub struct Exporter {
    handle: JoinHandle<()>,
}

impl Exporter {
    /// Waits up to `timeout` for the exporter to post its last batch (every `Tracer` clone must be
    /// dropped first, or it waits the whole timeout).
    pub fn finish(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.handle.is_finished() {
            let _ = self.handle.join();
        } else {
            tracing::warn!("trace exporter did not finish in time; its last spans are lost");
        }
    }
}

/// Waits (up to 5 s, off the async workers) for `exporter` to post its last spans, once the
/// service's loop has stopped and dropped its tracer.
pub async fn finish(exporter: Option<Exporter>) {
    if let Some(exporter) = exporter {
        let _ = tokio::task::spawn_blocking(move || exporter.finish(Duration::from_secs(5))).await;
    }
}

const QUEUE: usize = 16_384;
const BATCH: usize = 512;

/// Starts exporting spans of `service_name` when `settings.otlp_endpoint` is set; otherwise a
/// disabled tracer and no thread. Registers the `hitl_trace_*` metrics either way.
pub fn start(
    settings: &TelemetrySettings,
    service_name: &str,
    registry: &mut Registry,
) -> (Tracer, Option<Exporter>) {
    let metrics = TraceMetrics::register(registry);
    let Some(endpoint) = settings.otlp_endpoint.as_deref() else {
        return (
            Tracer {
                metrics,
                ..Tracer::disabled(settings.trace_sample_ratio)
            },
            None,
        );
    };
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let (sender, receiver) = mpsc::sync_channel(QUEUE);
    let post = Post {
        agent: ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(settings.otlp_timeout))
                .http_status_as_error(false)
                .build(),
        ),
        url,
        headers: settings.otlp_headers.clone(),
        resource: resource(service_name),
    };
    let exporter_metrics = metrics.clone();
    let interval = settings.trace_export_interval;
    let queued = Arc::new(AtomicUsize::new(0));
    let taken = queued.clone();
    let handle = std::thread::Builder::new()
        .name(format!("{service_name}-otlp"))
        .spawn(move || export_loop(&receiver, &taken, &post, &exporter_metrics, interval))
        .expect("spawn exporter thread");
    tracing::info!(endpoint = %post_url_for_log(endpoint), sample_ratio = settings.trace_sample_ratio, "exporting traces over OTLP/HTTP");
    (
        Tracer {
            sample_ratio: settings.trace_sample_ratio,
            sender: Some(sender),
            queued,
            metrics,
        },
        Some(Exporter { handle }),
    )
}

fn post_url_for_log(endpoint: &str) -> String {
    // Never log credentials embedded in the URL.
    match endpoint.split_once('@') {
        Some((scheme_and_user, host)) => match scheme_and_user.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…@{host}"),
            None => format!("…@{host}"),
        },
        None => endpoint.to_owned(),
    }
}

fn resource(service_name: &str) -> Vec<KeyValue> {
    vec![
        KeyValue::string("service.name", service_name),
        KeyValue::string("service.namespace", "hitl"),
        KeyValue::string("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::string("telemetry.sdk.name", "hitl"),
        KeyValue::string("telemetry.sdk.language", "rust"),
    ]
}

struct Post {
    agent: ureq::Agent,
    url: String,
    headers: BTreeMap<String, String>,
    resource: Vec<KeyValue>,
}

fn export_loop(
    receiver: &mpsc::Receiver<Span>,
    queued: &AtomicUsize,
    post: &Post,
    metrics: &TraceMetrics,
    interval: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut next_flush = Instant::now() + interval;
    let mut failures_logged = 0u32;
    // How many spans of `batch` were already subtracted from `queued`.
    let mut taken = 0;
    loop {
        let wait = next_flush.saturating_duration_since(Instant::now());
        let disconnected = match receiver.recv_timeout(wait) {
            Ok(span) => {
                batch.push(span);
                // Take what else is queued without waiting.
                while batch.len() < BATCH {
                    match receiver.try_recv() {
                        Ok(span) => batch.push(span),
                        Err(_) => break,
                    }
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        queued.fetch_sub(batch.len() - taken, Ordering::Relaxed);
        taken = batch.len();
        if !batch.is_empty()
            && (batch.len() >= BATCH || Instant::now() >= next_flush || disconnected)
        {
            match post.send(&batch) {
                Ok(()) => {
                    metrics.exported.inc_by(batch.len() as u64);
                }
                Err(error) => {
                    metrics.dropped("export_failed", batch.len());
                    // Log the first failures and then every 100th, not once per batch.
                    if failures_logged < 3 || failures_logged % 100 == 0 {
                        tracing::warn!(%error, spans = batch.len(), "trace export failed; spans dropped");
                    }
                    failures_logged += 1;
                }
            }
            batch.clear();
            taken = 0;
        }
        if Instant::now() >= next_flush {
            next_flush = Instant::now() + interval;
        }
        if disconnected {
            return;
        }
    }
}

impl Post {
    fn send(&self, spans: &[Span]) -> Result<(), String> {
        let body = export_request(&self.resource, spans);
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let response = request.send(&body).map_err(|error| error.to_string())?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{} answered {status}", self.url))
        }
    }
}

/// The OTLP `ExportTraceServiceRequest` for `spans`, in OTLP's JSON encoding (ids as hex,
/// 64-bit integers as strings, enums as numbers).
pub fn export_request_json(service_name: &str, spans: &[Span]) -> String {
    export_request(&resource(service_name), spans)
}

fn export_request(resource: &[KeyValue], spans: &[Span]) -> String {
    let request = ExportRequest {
        resource_spans: [ResourceSpans {
            resource: Resource {
                attributes: resource,
            },
            scope_spans: [ScopeSpans {
                scope: Scope {
                    name: "hitl",
                    version: env!("CARGO_PKG_VERSION"),
                },
                spans: spans.iter().map(OtlpSpan::from).collect(),
            }],
        }],
    };
    serde_json::to_string(&request).expect("spans serialize")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportRequest<'a> {
    resource_spans: [ResourceSpans<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    resource: Resource<'a>,
    scope_spans: [ScopeSpans; 1],
}

#[derive(Serialize)]
struct Resource<'a> {
    attributes: &'a [KeyValue],
}

#[derive(Serialize)]
struct ScopeSpans {
    scope: Scope,
    spans: Vec<OtlpSpan>,
}

#[derive(Serialize)]
struct Scope {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OtlpSpan {
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<String>,
    flags: u32,
    name: &'static str,
    kind: u8,
    start_time_unix_nano: String,
    end_time_unix_nano: String,
    attributes: Vec<KeyValue>,
    status: Status,
}

#[derive(Serialize)]
struct Status {
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    /// 0 unset, 2 error.
    code: u8,
}

#[derive(Debug, Clone, Serialize)]
struct KeyValue {
    key: String,
    value: AnyValue,
}

impl KeyValue {
    fn string(key: &str, value: &str) -> Self {
        Self {
            key: key.to_owned(),
            value: AnyValue::StringValue(value.to_owned()),
        }
    }
}

/// OTLP's `AnyValue`, whose JSON names the variants `stringValue`, `intValue`, ….
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[allow(clippy::enum_variant_names)]
enum AnyValue {
    StringValue(String),
    /// int64 is a string in OTLP's JSON.
    IntValue(String),
    BoolValue(bool),
}

impl From<&Span> for OtlpSpan {
    fn from(span: &Span) -> Self {
        Self {
            trace_id: span.context.trace_id_hex(),
            span_id: span_id_hex(span.context.span_id),
            parent_span_id: span.parent_span_id.map(span_id_hex),
            // W3C trace flags in the low byte.
            flags: u32::from(span.context.flags),
            name: span.name,
            kind: span.kind as u8,
            start_time_unix_nano: span.start_nanos.to_string(),
            end_time_unix_nano: span.end_nanos.to_string(),
            attributes: span
                .attributes
                .iter()
                .map(|(key, value)| KeyValue {
                    key: (*key).to_owned(),
                    value: match value {
                        Value::Str(text) => AnyValue::StringValue(text.to_string()),
                        Value::Int(number) => AnyValue::IntValue(number.to_string()),
                        Value::Bool(flag) => AnyValue::BoolValue(*flag),
                    },
                })
                .collect(),
            status: Status {
                code: if span.error.is_some() { 2 } else { 0 },
                message: span.error.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn parses_and_prints_a_context_unchanged() {
        let context = TraceContext::parse(PARENT).unwrap();
        assert_eq!(context.header().as_bytes(), PARENT);
        assert_eq!(context.span_id, 0xb7ad_6b71_6920_3331);
        assert!(context.sampled());
    }

    #[test]
    fn refuses_invalid_contexts() {
        for bad in [
            &b"garbage"[..],
            b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033zz-01",
        ] {
            assert_eq!(
                TraceContext::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_child_keeps_trace_and_flags_with_a_derived_span() {
        let parent = TraceContext::parse(PARENT).unwrap();
        let child = TraceContext::child(Some(&parent), b"d-1", 0.0);
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(
            child.flags, parent.flags,
            "the parent's sampling decision wins"
        );
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(child, TraceContext::child(Some(&parent), b"d-1", 0.0));
    }

    #[test]
    fn a_root_is_deterministic_and_sampled_by_ratio() {
        let a = TraceContext::child(None, b"d-1", 1.0);
        assert_eq!(a, TraceContext::child(None, b"d-1", 1.0));
        assert_ne!(a.trace_id, TraceContext::child(None, b"d-2", 1.0).trace_id);
        assert!(a.sampled());
        assert!(!TraceContext::child(None, b"d-1", 0.0).sampled());
        let sampled = (0..10_000)
            .filter(|i| TraceContext::child(None, format!("d-{i}").as_bytes(), 0.25).sampled())
            .count();
        assert!(
            (2_250..2_750).contains(&sampled),
            "{sampled} of 10000 at 0.25"
        );
    }

    #[test]
    fn the_json_follows_otlp() {
        let context = TraceContext::child(TraceContext::parse(PARENT).as_ref(), b"d-1", 1.0);
        let span = Span::new(
            "hitl.route",
            SpanKind::Consumer,
            context,
            TraceContext::parse(PARENT).as_ref(),
            1_000,
        )
        .attribute("hitl.decision_id", "d-1")
        .attribute("hitl.quorum", 2i64)
        .ended_at(3_000)
        .failed("boom");
        let json: serde_json::Value =
            serde_json::from_str(&export_request_json("hitl-router", &[span])).unwrap();
        let resource = &json["resourceSpans"][0];
        assert_eq!(
            resource["resource"]["attributes"][0],
            serde_json::json!({"key": "service.name", "value": {"stringValue": "hitl-router"}})
        );
        let span = &resource["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(span["parentSpanId"], "b7ad6b7169203331");
        assert_eq!(span["spanId"].as_str().unwrap().len(), 16);
        assert_eq!(span["kind"], 5);
        assert_eq!(span["startTimeUnixNano"], "1000");
        assert_eq!(span["endTimeUnixNano"], "3000");
        assert_eq!(
            span["attributes"][1],
            serde_json::json!({"key": "hitl.quorum", "value": {"intValue": "2"}})
        );
        assert_eq!(
            span["status"],
            serde_json::json!({"code": 2, "message": "boom"})
        );
    }

    #[test]
    fn a_parent_in_another_trace_is_not_named() {
        let context = TraceContext::child(None, b"d-1", 1.0);
        let other = TraceContext::parse(PARENT).unwrap();
        let span = Span::new("x", SpanKind::Internal, context, Some(&other), 0);
        assert_eq!(span.parent_span_id, None);
    }

    #[test]
    fn an_unreachable_endpoint_drops_and_counts_without_blocking() {
        // A port nobody listens on: every post fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = TelemetrySettings {
            otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
            trace_export_interval: Duration::from_millis(20),
            ..TelemetrySettings::default()
        };
        let mut registry = Registry::default();
        let (tracer, exporter) = start(&settings, "test", &mut registry);
        for i in 0..3 {
            let context = TraceContext::child(None, format!("d-{i}").as_bytes(), 1.0);
            assert!(tracer.records(&context));
            tracer.export(Span::new("x", SpanKind::Internal, context, None, 0));
        }
        drop(tracer);
        exporter.unwrap().finish(Duration::from_secs(10));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("hitl_trace_spans_dropped_total{reason=\"export_failed\"} 3"),
            "{text}"
        );
        assert!(text.contains("hitl_trace_spans_exported_total 0"), "{text}");
    }

    #[test]
    fn a_disabled_tracer_takes_spans_and_does_nothing() {
        let tracer = Tracer::disabled(1.0);
        let context = TraceContext::child(None, b"d-1", 1.0);
        assert!(!tracer.records(&context));
        tracer.export(Span::new("x", SpanKind::Internal, context, None, 0));
    }
}
