//! The inventory: machines (known by their MAC) and groups, and their queries.

pub(crate) mod mac;
pub(crate) mod repo;
