//! The chaos suite at CI size (issue #12): the whole system on its own Apache Kafka (started by the
//! chaos driver, never the harness's shared one, so pausing it disturbs no other test), 5,000
//! signed decisions from three workflows with about 1 % poison records, simulated reviewers that
//! approve, reject, amend, defer, escalate, renew and let leases expire, every service instance
//! SIGKILLed 3 times and bounced with SIGTERM once at random moments, the broker paused (SIGSTOP)
//! for 15 s, longer than any lease plus its grace. The independent verifier then reads the raw
//! topics; the test asserts that it found no violation. `hitl-loadtest chaos` runs the same with
//! any size (README, "Chaos").

use hitl_tests::{binary, repository};

#[test]
fn chaos_at_ci_size_breaks_no_promise() {
    let bin_dir = binary("hitl-router")
        .parent()
        .expect("target/<profile>")
        .to_owned();
    // A sibling of the test binaries' folder: `hitl-audit verify` and the services are needed.
    for name in ["hitl-assignment", "hitl-audit"] {
        binary(name);
    }
    let options = hitl_loadtest::chaos::Options::ci(bin_dir, repository());
    let run = hitl_loadtest::chaos::run(&options).expect("the chaos run itself failed");
    eprintln!("{}", run.text);
    let by_class = run.report.violations_by_class();
    assert!(
        run.report.violations.is_empty(),
        "the chaos verifier found {} violations: {by_class:?} (full report above)",
        run.report.violations.len()
    );
    assert!(
        run.recoveries
            .iter()
            .filter(|r| r.signal == "SIGKILL")
            .count()
            >= 3 * 6,
        "every instance was killed 3 times"
    );
}
