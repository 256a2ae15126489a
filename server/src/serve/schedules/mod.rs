//! Schedules: when deployments and wake-ups run (cron), the service that starts them, their handlers and repository.

pub(crate) mod api;
pub(crate) mod repo;
pub(crate) mod service;
