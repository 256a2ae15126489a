//! drover's dashboard: the pages an admin does the daily work in (machines, groups, images,
//! deployments with live per-machine progress, schedules, the audit log), their forms, the
//! login, and the style sheet and script, all compiled into the binary (askama templates; no
//! CDN, no build step, no Node.js).
//!
//! It does not touch the database or the deployments itself: everything goes through a
//! [`Control`], which `drover serve` implements by calling its own HTTP API in-process as
//! the logged-in user (so the API's checks and audit log apply to the dashboard alike), and
//! by keeping users and sessions in its database. Tests drive the pages against a fake.
//!
//! Security: a session cookie (HttpOnly, SameSite=Strict, Secure over TLS) that names a
//! session stored hashed by the [`Control`]; every form, the login's included, carries a
//! token checked on submission (the session's, or for the login a cookie's double); every
//! page but the login needs a session; after five failed logins in a row a user name waits
//! before its next attempt, twice as long each time.

mod auth;
mod call;
mod pages;
mod throttle;
mod view;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

/// A dashboard user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// The password was given to them (generated) and must be changed before anything else.
    pub must_change: bool,
}

/// An open login session.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    /// The token every form of the session carries.
    pub csrf: String,
}

/// A failure of the [`Control`], in words the page can show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlError(pub String);

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the dashboard needs of the server.
pub trait Control: Clone + Send + Sync + 'static {
    /// The HTTP API (`req`'s path is under `/api/v1`), called as `user`: what the API does
    /// for an admin's token it does for the user, audit log included.
    fn api(&self, user: &str, req: Request<Body>) -> impl Future<Output = Response> + Send;
    /// The user, if `password` is theirs.
    fn login(
        &self,
        name: &str,
        password: &str,
    ) -> impl Future<Output = Result<Option<User>, ControlError>> + Send;
    /// Opens a session: the cookie's value (a secret) and the session.
    fn open_session(
        &self,
        user: &User,
    ) -> impl Future<Output = Result<(String, Session), ControlError>> + Send;
    /// The open session a cookie names.
    fn session(
        &self,
        cookie: &str,
    ) -> impl Future<Output = Result<Option<Session>, ControlError>> + Send;
    /// Ends a session.
    fn close_session(&self, cookie: &str) -> impl Future<Output = Result<(), ControlError>> + Send;
    /// Sets a user's password; their sessions but `keep` end.
    fn set_password(
        &self,
        user: &str,
        password: &str,
        keep: &str,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;
    /// Appends to the audit log.
    fn audit(&self, actor: &str, action: &str, detail: &str) -> impl Future<Output = ()> + Send;
}

/// How the dashboard is served.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Served over TLS: cookies get `Secure`.
    pub secure_cookies: bool,
}

/// The dashboard's state: the control, the options and the failed logins.
#[derive(Clone)]
pub(crate) struct Ui<C> {
    pub(crate) control: C,
    pub(crate) options: Arc<Options>,
    pub(crate) throttle: Arc<throttle::Throttle>,
}

/// The dashboard's routes: `/`, `/login`, `/logout`, `/password`, `/machines`, `/groups`,
/// `/images`, `/deployments`, `/schedules`, `/log` and `/static/...`.
pub fn router<C: Control>(control: C, options: Options) -> Router {
    use pages::*;
    let ui = Ui {
        control,
        options: Arc::new(options),
        throttle: Arc::default(),
    };
    Router::new()
        .route("/", get(overview::<C>))
        .route("/login", get(auth::login_page::<C>).post(auth::login::<C>))
        .route("/logout", post(auth::logout::<C>))
        .route(
            "/password",
            get(auth::password_page).post(auth::change_password::<C>),
        )
        .route("/machines", get(machines::<C>).post(add_machine::<C>))
        .route("/machines/{mac}", get(machine::<C>).post(save_machine::<C>))
        .route("/machines/{mac}/wake", post(wake_machine::<C>))
        .route("/machines/{mac}/delete", post(delete_machine::<C>))
        .route("/groups", get(groups::<C>).post(add_group::<C>))
        .route("/groups/{name}/wake", post(wake_group::<C>))
        .route("/groups/{name}/delete", post(delete_group::<C>))
        .route("/groups/{name}/vars", post(save_group_vars::<C>))
        .route("/images", get(images::<C>))
        .route("/images/{reference}/verify", post(verify_image::<C>))
        .route(
            "/deployments",
            get(deployments::<C>).post(create_deployment::<C>),
        )
        .route("/deployments/{id}", get(deployment::<C>))
        .route("/deployments/{id}/events", get(deployment_events::<C>))
        .route("/deployments/{id}/cancel", post(cancel_deployment::<C>))
        .route("/deployments/{id}/start", post(start_deployment::<C>))
        .route("/schedules", get(schedules::<C>).post(create_schedule::<C>))
        .route(
            "/schedules/{name}",
            get(schedule::<C>).post(save_schedule::<C>),
        )
        .route("/schedules/{name}/delete", post(delete_schedule::<C>))
        .route("/log", get(log::<C>))
        .route("/static/app.css", get(view::css))
        .route("/static/app.js", get(view::js))
        .with_state(ui)
}

/// Every form's path (for the tests that post to each without its token).
pub const FORM_PATHS: &[&str] = &[
    "/login",
    "/logout",
    "/password",
    "/machines",
    "/machines/aa:bb:cc:dd:ee:ff",
    "/machines/aa:bb:cc:dd:ee:ff/wake",
    "/machines/aa:bb:cc:dd:ee:ff/delete",
    "/groups",
    "/groups/lab/wake",
    "/groups/lab/delete",
    "/groups/lab/vars",
    "/images/lab@1/verify",
    "/deployments",
    "/deployments/d1/cancel",
    "/deployments/d1/start",
    "/schedules",
    "/schedules/nightly",
    "/schedules/nightly/delete",
];

/// Every page's path (for the tests that load each without logging in).
pub const PAGE_PATHS: &[&str] = &[
    "/",
    "/password",
    "/machines",
    "/machines/aa:bb:cc:dd:ee:ff",
    "/groups",
    "/images",
    "/deployments",
    "/deployments/d1",
    "/deployments/d1/events",
    "/schedules",
    "/schedules/nightly",
    "/log",
];
