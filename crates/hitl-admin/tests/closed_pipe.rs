//! `hitl-admin` stops quietly, with status 0, when its stdout is a pipe nobody reads any more
//! (`hitl-admin ... | head`), and refuses a bad config with status 2. No broker needed.

use std::process::{Command, Output, Stdio};

const ADMIN: &str = env!("CARGO_BIN_EXE_hitl-admin");
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/router.toml");

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

fn run_into_closed_pipe(args: &[&str]) -> Output {
    Command::new(ADMIN)
        .args(args)
        .env_remove("HITL_CONFIG")
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .expect("hitl-admin runs")
}

#[test]
fn topics_list_into_a_closed_pipe_exits_0_without_a_panic() {
    let output = run_into_closed_pipe(&["topics", "list", "--config", CONFIG]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.is_empty(), "stderr: {stderr}");
}

#[test]
fn topics_list_into_an_open_pipe_prints_every_topic() {
    let output = Command::new(ADMIN)
        .args(["topics", "list", "--config", CONFIG])
        .env_remove("HITL_CONFIG")
        .output()
        .expect("hitl-admin runs");
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.lines().count() > 8, "stdout: {stdout}");
    assert!(stdout.contains("partitions="), "stdout: {stdout}");
}

#[test]
fn a_bad_config_is_refused_with_status_2() {
    let output = run_into_closed_pipe(&["topics", "list", "--config", "/nonexistent/hitl.toml"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("hitl: refusing to start: ") && stderr.contains("/nonexistent/hitl.toml"),
        "stderr: {stderr}"
    );
}
