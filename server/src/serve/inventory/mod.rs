//! The inventory: machines (known by their MAC) and groups: their handlers, rules and
//! repository.

pub(crate) mod api;
pub(crate) mod mac;
pub(crate) mod repo;
pub(crate) mod service;
