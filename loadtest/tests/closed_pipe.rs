//! `hitl-loadtest` stops quietly, with status 0, when its stdout is a pipe nobody reads any more
//! (`hitl-loadtest ... | head`). `audit-memory` needs no broker.

use std::process::{Command, Stdio};

/// The write end of a pipe whose read end is already closed: every write to it fails with
/// `EPIPE` (the read end lived only in a process that has exited).
fn closed_pipe() -> Stdio {
    let mut reader = Command::new("true")
        .stdin(Stdio::piped())
        .spawn()
        .expect("`true` starts");
    let write_end = reader.stdin.take().expect("piped stdin");
    reader.wait().expect("`true` exits");
    Stdio::from(write_end)
}

#[test]
fn audit_memory_into_a_closed_pipe_exits_0_without_a_panic() {
    let output = Command::new(env!("CARGO_BIN_EXE_hitl-loadtest"))
        .args(["audit-memory", "--decisions", "1000"])
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .expect("hitl-loadtest runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
}

#[test]
fn a_bad_config_is_refused_with_status_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_hitl-loadtest"))
        .args(["bench-router", "--config", "/nonexistent/hitl.toml"])
        .env_remove("HITL_CONFIG")
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .expect("hitl-loadtest runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("hitl: refusing to start: "),
        "stderr: {stderr}"
    );
}
