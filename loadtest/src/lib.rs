//! Load generation for demos and benchmarks: a deterministic mix of realistic decisions (and a
//! few invalid records, so the DLQ path is exercised), a live summary read back from the output
//! topics, the router-vs-passthrough throughput benchmark, and the chaos suite with its
//! independent verifier (`chaos`).

pub mod audit;
pub mod bench;
pub mod chaos;
pub mod clients;
pub mod dedup;
pub mod demo;
pub mod mix;
pub mod restore;
pub mod reviewers;
