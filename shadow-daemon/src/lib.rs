//! shadow-daemon: mirror live HTTP traffic to a shadow service, passively, from the kernel.
//!
//! Stages, in data-flow order: `capture` (the only module that touches aya) → `segment` (decoded
//! records) → `reassembly` (byte streams) → `http` (messages) → `replay` (to the shadow) →
//! `metrics`. Stages are joined by bounded channels; a full stage drops and counts.

pub mod capture;
pub mod compare;
pub mod config;
pub mod control;
pub mod ctl;
pub mod http;
pub mod message;
pub mod metrics;
pub mod operate;
pub mod reassembly;
pub mod replay;
pub mod run;
pub mod segment;
pub mod service;
