//! The HTTP side: the API's router and shared state, its OpenAPI document, and the dashboard's mount.

pub(crate) mod api;
pub(crate) mod openapi;
pub(crate) mod ui;
