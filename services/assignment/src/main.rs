//! Placeholder binary: the assignment service is not built yet (issue #3).

fn main() {
    eprintln!(
        "hitl-assignment: not implemented yet (issue #3); the router runs on its own meanwhile"
    );
    std::process::exit(1);
}
