//! Who asks: users, passwords and sessions, API tokens, the caller's address checks (is this request from the machine it claims to be), and TLS.

pub(crate) mod caller;
pub(crate) mod tls;
pub(crate) mod users;
