//! Checks a decoded decision against the contract's rules before it is routed.

use hitl_schema::Decision;

use crate::policy::Tier;

/// Longest accepted decision id, in bytes.
pub const MAX_DECISION_ID_BYTES: usize = 256;
/// Longest accepted short text field (workflow, subject, action, producer, model, priority), and
/// map key or `sensitive_fields` entry, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Longest accepted `context` value, in bytes.
pub const MAX_CONTEXT_VALUE_BYTES: usize = 16 * 1024;
/// Most entries in `context`, in `features` and in `sensitive_fields`.
pub const MAX_CONTEXT_ENTRIES: usize = 256;
pub const MAX_FEATURES: usize = 1024;
pub const MAX_SENSITIVE_FIELDS: usize = 256;

/// Every problem with a decision, each naming its field. Empty: valid.
pub fn problems(decision: &Decision) -> Vec<String> {
    let mut problems = Vec::new();
    if is_blank(&decision.decision_id) {
        problems.push("decision_id: must not be empty".to_owned());
    } else if decision.decision_id.len() > MAX_DECISION_ID_BYTES {
        problems.push(format!(
            "decision_id: longer than {MAX_DECISION_ID_BYTES} bytes"
        ));
    }
    for (field, value) in [
        ("workflow", &decision.workflow),
        ("action", &decision.action),
        ("producer", &decision.producer),
    ] {
        if is_blank(value) {
            problems.push(format!("{field}: must not be empty"));
        }
    }
    for (field, value) in [
        ("workflow", Some(&decision.workflow)),
        ("subject", Some(&decision.subject)),
        ("action", Some(&decision.action)),
        ("producer", Some(&decision.producer)),
        ("model_name", Some(&decision.model_name)),
        ("model_version", decision.model_version.as_ref()),
        ("priority", decision.priority.as_ref()),
    ] {
        if value.is_some_and(|value| value.len() > MAX_TEXT_BYTES) {
            problems.push(format!("{field}: longer than {MAX_TEXT_BYTES} bytes"));
        }
    }
    for (field, count, max) in [
        ("context", decision.context.len(), MAX_CONTEXT_ENTRIES),
        ("features", decision.features.len(), MAX_FEATURES),
        (
            "sensitive_fields",
            decision.sensitive_fields.len(),
            MAX_SENSITIVE_FIELDS,
        ),
    ] {
        if count > max {
            problems.push(format!("{field}: {count} entries, more than {max}"));
        }
    }
    let long_key = decision
        .context
        .keys()
        .chain(decision.features.keys())
        .chain(&decision.sensitive_fields)
        .find(|key| key.len() > MAX_TEXT_BYTES);
    if let Some(key) = long_key {
        problems.push(format!(
            "a context, features or sensitive_fields name of {} bytes is longer than {MAX_TEXT_BYTES}",
            key.len()
        ));
    }
    if let Some((key, value)) = decision
        .context
        .iter()
        .find(|(_, value)| value.len() > MAX_CONTEXT_VALUE_BYTES)
    {
        problems.push(format!(
            "context.{}: {} bytes, longer than {MAX_CONTEXT_VALUE_BYTES}",
            key.chars().take(64).collect::<String>(),
            value.len()
        ));
    }
    if !(0.0..=1.0).contains(&decision.confidence) {
        problems.push(format!(
            "confidence: {} is not a number within 0..1",
            decision.confidence
        ));
    }
    if let Some(risk) = decision.risk_score {
        if !(0.0..=1.0).contains(&risk) {
            problems.push(format!("risk_score: {risk} is not a number within 0..1"));
        }
    }
    if let Some(amount) = decision.amount {
        if !amount.is_finite() {
            problems.push(format!("amount: {amount} is not a finite number"));
        }
    }
    if let Some(priority) = &decision.priority {
        if Tier::parse(priority).is_none() {
            problems.push(format!(
                "priority: `{priority}` is not low, normal, high or urgent"
            ));
        }
    }
    if let Some(sla) = decision.sla_ms {
        if sla <= 0 {
            problems.push(format!("sla_ms: {sla} must be positive"));
        }
    }
    if decision.created_at <= 0 {
        problems.push(format!(
            "created_at: {} is not a time after 1970",
            decision.created_at
        ));
    }
    if let Some((name, value)) = decision
        .features
        .iter()
        .find(|(_, value)| !value.is_finite())
    {
        problems.push(format!("features.{name}: {value} is not a finite number"));
    }
    problems
}

/// `text.trim().is_empty()`, decided at the first byte for the usual text that starts with a
/// visible ASCII character.
fn is_blank(text: &str) -> bool {
    match text.as_bytes().first() {
        None => true,
        Some(first) if first.is_ascii_graphic() => false,
        Some(_) => text.trim().is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::is_blank;

    proptest! {
        #[test]
        fn blank_means_nothing_but_whitespace(text in "\\PC{0,4}|[ \t\n\u{a0}\u{3000}]{0,4}[a-z]?") {
            prop_assert_eq!(is_blank(&text), text.trim().is_empty());
        }
    }
}
