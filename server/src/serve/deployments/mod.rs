//! Deployments and their tasks: the service that runs them (multicast sessions, swarms, unicast), the agents' and admins' handlers, captures, and their repository.

pub(crate) mod api;
pub(crate) mod capture;
pub(crate) mod fit;
pub(crate) mod personalize;
pub(crate) mod repo;
pub(crate) mod service;
pub(crate) mod stream;
