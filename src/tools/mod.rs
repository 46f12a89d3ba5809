//! Operator tooling, off the request path: `rules test` (replaying a HAR file through a
//! config, [`replay`]) and `probe` (finding an app's session cookies and login
//! signals, and proposing a config, [`probe`]).

pub mod probe;
pub mod replay;
