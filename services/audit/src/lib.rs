//! The audit service: not built yet (issue #4).
