//! Placeholder binary: the audit service is not built yet (issue #4).

fn main() {
    eprintln!("hitl-audit: not implemented yet (issue #4); the router runs on its own meanwhile");
    std::process::exit(1);
}
