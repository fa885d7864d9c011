//! Shared support code for integration tests: `mod support;` in a `tests/*.rs`
//! file.

// Each integration test binary compiles this module separately and uses only
// part of it.
#![allow(dead_code)]

pub mod agent;
pub mod agent_process;
pub mod controlplane;
pub mod netns;
pub mod proxy;
pub mod scenario;
pub mod vm;
