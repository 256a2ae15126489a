//! The dashboard's [`web_ui::Control`]: the HTTP API called in-process as the logged-in user
//! (its checks and its audit log apply alike), users and sessions from the database. And the
//! first run's admin user.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceExt;
use web_ui::{ControlError, Session, User};

use crate::serve::auth::users::{self, check_password};
use crate::serve::db::{Db, DbError};
use crate::serve::web::api::Actor;

/// The server as the dashboard sees it.
#[derive(Clone)]
pub(crate) struct Control {
    pub(crate) db: Db,
    /// The API's routes (without the dashboard's).
    pub(crate) api: Router,
}

fn unavailable(e: impl std::fmt::Display) -> ControlError {
    tracing::error!(error = %e, "dashboard: the database failed");
    ControlError(format!("the server's database failed: {e}"))
}

fn user(u: users::User) -> User {
    User {
        name: u.name,
        must_change: u.must_change,
    }
}

fn session(s: users::WebSession) -> Session {
    Session {
        user: user(s.user),
        csrf: s.csrf,
    }
}

impl web_ui::Control for Control {
    async fn api(&self, name: &str, mut req: Request<Body>) -> Response {
        // The API's auth takes an actor set in-process (no header can set one).
        req.extensions_mut().insert(Actor(format!("user:{name}")));
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 0))));
        match self.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
        .into_response()
    }

    async fn login(&self, name: &str, password: &str) -> Result<Option<User>, ControlError> {
        if users::check_user_name(name).is_err() {
            return Ok(None);
        }
        Ok(self
            .db
            .users()
            .check_login(name, password)
            .await
            .map_err(unavailable)?
            .map(user))
    }

    async fn open_session(&self, u: &User) -> Result<(String, Session), ControlError> {
        let (cookie, s) = self
            .db
            .users()
            .open_session(&users::User {
                name: u.name.clone(),
                must_change: u.must_change,
                created_ms: 0,
            })
            .await
            .map_err(unavailable)?;
        Ok((cookie, session(s)))
    }

    async fn session(&self, cookie: &str) -> Result<Option<Session>, ControlError> {
        Ok(self
            .db
            .users()
            .web_session(cookie)
            .await
            .map_err(unavailable)?
            .map(session))
    }

    async fn close_session(&self, cookie: &str) -> Result<(), ControlError> {
        self.db
            .users()
            .close_session(cookie)
            .await
            .map_err(unavailable)
    }

    async fn set_password(
        &self,
        name: &str,
        password: &str,
        keep: &str,
    ) -> Result<(), ControlError> {
        check_password(password).map_err(ControlError)?;
        match self
            .db
            .users()
            .set_password(name, password, false, Some(keep))
            .await
        {
            Ok(()) => Ok(()),
            Err(DbError::NotFound(w)) => Err(ControlError(format!("{w} not found"))),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn audit(&self, actor: &str, action: &str, detail: &str) {
        if let Err(e) = self.db.audit(actor, action, detail).await {
            tracing::error!(error = %format!("{e:#}"), action, "writing the audit log");
        }
    }
}

/// On a server without users: `admin` with a generated password to change at the first
/// login, printed once.
pub(crate) async fn first_admin(db: &Db) -> anyhow::Result<()> {
    if !db.users().users().await?.is_empty() {
        return Ok(());
    }
    let password = users::generate_password();
    match db.users().add_user("admin", &password, true).await {
        Ok(_) => {}
        // Another server sharing the database made it first.
        Err(DbError::Exists(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    db.audit("server", "user.add", "admin (first run)").await?;
    eprintln!("  dashboard   first run: user \"admin\", one-time password {password}");
    eprintln!(
        "              (to be changed at the first login; `drover user passwd admin` sets another)"
    );
    Ok(())
}
