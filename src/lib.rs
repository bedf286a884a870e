//! Support shared by the workspace's examples, integration tests and benchmarks.
