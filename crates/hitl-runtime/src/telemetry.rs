//! Logging setup and W3C trace-context propagation.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogFormat, TelemetrySettings};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the configured level.
pub fn init(settings: &TelemetrySettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log_level));
    let builder = fmt().with_env_filter(filter).with_target(false);
    let _ = match settings.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A W3C `traceparent` for a child of `parent` (same trace id, new span id derived from `salt`),
/// or a fresh one derived from `salt` when there is no valid parent. Deterministic, so a record
/// processed twice carries the same context.
pub fn child_traceparent(parent: Option<&[u8]>, salt: &[u8]) -> String {
    let parsed = parent
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(parse_traceparent);
    let span_id = fnv1a(salt, 0x811c_9dc5_u64) | 1;
    // Built by hand: this runs for every record, and `format!` was a visible share of it.
    let mut traceparent = String::with_capacity(55);
    traceparent.push_str("00-");
    let flags = match parsed {
        Some((trace_id, flags)) => {
            traceparent.push_str(trace_id);
            flags
        }
        None => {
            push_hex(&mut traceparent, fnv1a(salt, 0x9e37_79b9_7f4a_7c15));
            push_hex(&mut traceparent, fnv1a(salt, 0xc2b2_ae3d_27d4_eb4f) | 1);
            "01"
        }
    };
    traceparent.push('-');
    push_hex(&mut traceparent, span_id);
    traceparent.push('-');
    traceparent.push_str(flags);
    traceparent
}

/// Appends `value` as 16 lowercase hex digits.
fn push_hex(out: &mut String, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(DIGITS[((value >> (shift * 4)) & 0xf) as usize] as char);
    }
}

fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (version == "00"
        && hex(trace_id, 32)
        && hex(span_id, 16)
        && hex(flags, 2)
        && trace_id != "0".repeat(32))
    .then_some((trace_id, flags))
}

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_parent_trace_id() {
        let parent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let child = child_traceparent(Some(parent), b"d-1");
        assert!(child.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(child.ends_with("-01"));
        assert_ne!(&child[36..52], "b7ad6b7169203331");
    }

    #[test]
    fn makes_a_valid_deterministic_one_without_parent() {
        let a = child_traceparent(Some(b"garbage"), b"d-1");
        assert_eq!(a, child_traceparent(None, b"d-1"));
        assert!(parse_traceparent(&a).is_some());
        assert_ne!(a, child_traceparent(None, b"d-2"));
    }
}
