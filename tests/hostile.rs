//! Hostile clients against the real binary on the shipped pipeline, with osmem-server behind
//! it. Each attack checks the daemon's peak RSS (VmHWM) against the memory budget plus a
//! stated margin, that it is still alive, and that an honest client sending alongside is
//! served and indexed; each prints `hostile: <attack>: peak RSS N MiB, honest requests served
//! N/N`.

mod common;

#[path = "hostile/harness.rs"]
mod harness;

#[path = "hostile/beats.rs"]
mod beats;

#[path = "hostile/http.rs"]
mod http;
