//! The hitl assignment service: puts each pending review item in front of the right reviewer —
//! priority with SLA decay, roles, capacity and fairness, leases, escalation, quorum — and turns
//! verdicts into outcomes.
//!
//! `queue`, `pools` and `core` are pure (no Kafka, no clock); `service` is the Kafka shell.

pub mod core;
mod metrics;
pub mod pools;
pub mod queue;
pub mod service;

use std::sync::{mpsc, Arc};

use hitl_runtime::{
    config::{GroupProtocol, Settings},
    LoopSettings,
};
use tokio_util::sync::CancellationToken;

pub use service::{AssignmentProcessor, AssignmentSettings};

/// Runs the assignment service until `shutdown` is cancelled or its loop fails fatally.
pub async fn run(
    settings: Settings<AssignmentSettings>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // One instance must get the same partitions of review-requests and verdicts (co-partitioned by
    // pool): the `range` assignor does that, client-side (classic) or in the broker (KIP-848).
    match settings.kafka.group_protocol {
        GroupProtocol::Classic if settings.kafka.partition_assignment_strategy != "range" => {
            anyhow::bail!(
                "kafka.partition_assignment_strategy: the assignment service needs `range`, which \
                 gives one instance the same partitions of review-requests and verdicts (co-partitioned by pool)"
            )
        }
        GroupProtocol::Consumer if settings.kafka.group_remote_assignor != "range" => {
            anyhow::bail!(
                "kafka.group_remote_assignor: the assignment service needs `range`, which gives one \
                 instance the same partitions of review-requests and verdicts (co-partitioned by pool)"
            )
        }
        _ => {}
    }
    hitl_runtime::service::run(
        &settings,
        settings.service.create_topics,
        loop_settings(&settings),
        shutdown,
        |startup| {
            let metrics = Arc::new(metrics::AssignmentMetrics::register(startup.registry));
            let codec = settings.codec.build(settings.kafka.request_timeout)?;
            let keys = Arc::new(settings.trust.key_set().map_err(anyhow::Error::msg)?);
            let signer = settings.trust.signer().map_err(anyhow::Error::msg)?;
            let (updates, roster) = mpsc::channel();
            let roster_reader = service::spawn_roster_reader(
                &settings.kafka,
                settings.topics.reviewers.clone(),
                codec.clone(),
                keys.clone(),
                updates,
                startup.shutdown.clone(),
            )?;
            startup.join_on_stop(roster_reader);
            Ok(AssignmentProcessor::new(
                &settings,
                codec,
                metrics,
                roster,
                startup.tracer.clone(),
                keys,
                signer,
            ))
        },
    )
    .await?;
    Ok(())
}

/// The loop settings the assignment service runs with.
pub fn loop_settings(settings: &Settings<AssignmentSettings>) -> LoopSettings {
    LoopSettings {
        service: "assignment".into(),
        group_id: settings.service.group_id.clone(),
        transactional_id: settings.service.transactional_id(),
        input_topics: vec![
            settings.topics.review_requests.clone(),
            settings.topics.verdicts.clone(),
        ],
        dead_letter_topic: Some(settings.topics.decisions_dlq.clone()),
        tick_interval: Some(settings.service.tick_interval),
        max_records_per_second: None,
    }
}
