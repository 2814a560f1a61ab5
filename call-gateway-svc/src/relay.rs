//! The relay of call events to NATS JetStream (on when `events.nats_url` is set).
//!
//! Driven by the events table, not by the calls: each pass publishes, per tenant and in id
//! order, the events after the tenant's `relayed_through` mark, each with JetStream message id
//! `<tenant>:<event id>` (so a redelivery after a crash or a retry is dropped by JetStream's
//! duplicate window), awaiting each acknowledgement before the next so that a call's events
//! are stored in order, and moves the mark past what was acknowledged. NATS being down only
//! delays the relay: calls never wait on it, and nothing is skipped when it comes back, unless
//! it stays down longer than the events' retention (then the ids lost are logged).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::Context, message::PublishMessage};
use futures::FutureExt;
use prost::Message as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::event::CallEvent;
use crate::service::Events;
use crate::settings::EventsSettings;
use crate::store::calls::CallStore;

/// Tenants relayed per pass, and events per tenant per pass.
const TENANTS_PER_PASS: u32 = 64;
const EVENTS_PER_TENANT: u32 = 256;

/// Starts the relay when it is configured.
pub fn spawn(
    settings: &EventsSettings,
    events: Events,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    if settings.nats_url.is_empty() {
        return None;
    }
    Some(tokio::spawn(run(settings.clone(), events.store(), stop)))
}

/// The subject of an event: `<prefix>.<tenant>.<type>`. A dot separates subject tokens, so
/// the dots of a tenant id become `~`, a character tenant ids never hold: no two tenants share
/// a subject.
pub fn subject(prefix: &str, e: &CallEvent) -> String {
    format!(
        "{prefix}.{}.{}",
        e.tenant_id.replace('.', "~"),
        e.kind.as_str()
    )
}

async fn run(cfg: EventsSettings, store: Arc<dyn CallStore>, stop: CancellationToken) {
    let mut wakes = store.event_wakes();
    let mut delay = Duration::from_millis(200);
    let client = loop {
        let connect = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .connect(cfg.nats_url.as_str());
        tokio::select! {
            () = stop.cancelled() => return,
            c = connect => match c {
                Ok(c) => break c,
                Err(e) => tracing::warn!(error = %e, "cannot connect to NATS; events wait in the table"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    };
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(3));
    let mut stream_ready = false;
    let mut idle = Duration::from_secs(1);
    loop {
        let mut more = false;
        if !stream_ready {
            let config = jetstream::stream::Config {
                name: cfg.nats_stream.clone(),
                subjects: vec![format!("{}.>", cfg.nats_subject_prefix)],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            };
            match js.get_or_create_stream(config).await {
                Ok(_) => stream_ready = true,
                Err(e) => {
                    tracing::warn!(error = %e, stream = %cfg.nats_stream, "cannot create the JetStream stream; retrying")
                }
            }
        }
        if stream_ready {
            let publish = publisher(js.clone(), cfg.clone());
            match store
                .relay_events(TENANTS_PER_PASS, EVENTS_PER_TENANT, &publish)
                .await
            {
                Ok(n) => {
                    more = n > 0;
                    idle = Duration::from_secs(1);
                }
                Err(e) => tracing::warn!(error = %e, "call event relay pass failed"),
            }
        }
        if more {
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => break,
            _ = wakes.recv() => {}
            () = tokio::time::sleep(idle) => {}
        }
        idle = (idle * 2).min(Duration::from_secs(2));
    }
}

/// Publishes one tenant's events one after the other; returns how many were acknowledged.
fn publisher(
    js: Context,
    cfg: EventsSettings,
) -> impl Fn(Vec<CallEvent>) -> futures::future::BoxFuture<'static, usize> + Send + Sync {
    move |events: Vec<CallEvent>| {
        let js = js.clone();
        let cfg = cfg.clone();
        async move {
            let mut acked = 0;
            for e in &events {
                let msg = crate::grpc::event_to_pb(e);
                let payload = if cfg.nats_payload == "json" {
                    match serde_json::to_vec(&msg) {
                        Ok(b) => b,
                        Err(_) => break,
                    }
                } else {
                    msg.encode_to_vec()
                };
                let publish = PublishMessage::build()
                    .message_id(format!("{}:{}", e.tenant_id, e.event_id))
                    .payload(payload.into());
                let sent = match js
                    .send_publish(subject(&cfg.nats_subject_prefix, e), publish)
                    .await
                {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(err) => Err(err.to_string()),
                };
                if let Err(err) = sent {
                    tracing::warn!(error = %err, tenant = %e.tenant_id, event_id = e.event_id,
                        "NATS did not acknowledge a call event; retrying from it");
                    break;
                }
                acked += 1;
            }
            acked
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::call::CallStatus;
    use crate::domain::event::EventType;

    fn event(tenant: &str) -> CallEvent {
        CallEvent {
            event_id: 1,
            tenant_id: tenant.into(),
            call_id: "c".into(),
            kind: EventType::Completed,
            status: CallStatus::Completed,
            collector_id: "a".into(),
            case_id: "k".into(),
            extension_number: None,
            result: None,
            talk_seconds: None,
            error_code: None,
            error_message: None,
            occurred_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn tenants_never_share_a_subject() {
        assert_eq!(
            subject("cco.calls", &event("acme")),
            "cco.calls.acme.completed"
        );
        let dotted = subject("cco.calls", &event("a.b"));
        assert_eq!(dotted, "cco.calls.a~b.completed");
        assert_ne!(dotted, subject("cco.calls", &event("a_b")));
        assert_eq!(dotted.split('.').count(), 4, "one token for the tenant");
    }
}
