//! Operator tooling, off the request path: `rules test` (replaying a HAR file through a
//! config, [`replay`]) and, to come, `probe`.

pub mod replay;
