//! The image store as the daemon shows it: the image versions in it (with what they share)
//! and the re-check of an image's every chunk. Capture uploads into it are
//! [`crate::serve::deployments::capture`]'s; its files are [`imaging::store`]'s.

pub(crate) mod api;
pub(crate) mod service;
