//! Login, logout and passwords; the session cookie; the token every form carries.

use std::time::Instant;

use askama::Template;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use crate::view::{render, Fields, Nav};
use crate::{Control, Session, Ui};

/// The session cookie.
pub(crate) const SESSION_COOKIE: &str = "drover_session";
/// The login form's token's double (the login has no session yet).
const LOGIN_COOKIE: &str = "drover_login";

/// A cookie's value from the request.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Secure over TLS; `None` clears it.
pub(crate) fn set_cookie(secure: bool, name: &str, value: Option<&str>, path: &str) -> HeaderValue {
    let mut c = match value {
        Some(v) => format!("{name}={v}; Path={path}; HttpOnly; SameSite=Strict"),
        None => format!("{name}=; Path={path}; HttpOnly; SameSite=Strict; Max-Age=0"),
    };
    if secure {
        c.push_str("; Secure");
    }
    // Names and values are ours: hex and fixed words.
    HeaderValue::from_str(&c).expect("a cookie of hex and fixed words")
}

/// Equal in constant time (tokens).
pub(crate) fn same(a: &str, b: &str) -> bool {
    blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}

pub(crate) fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A request with an open session (else: to the login page).
pub(crate) struct Authed {
    pub(crate) session: Session,
    pub(crate) cookie: String,
}

impl Authed {
    /// The form carries the session's form token.
    pub(crate) fn allows(&self, form: &Fields) -> bool {
        form.get("csrf")
            .is_some_and(|t| same(t, &self.session.csrf))
    }

    pub(crate) fn user(&self) -> &str {
        &self.session.user.name
    }

    pub(crate) fn nav(&self, active: &'static str, headers: &HeaderMap) -> Nav {
        Nav {
            user: self.session.user.name.clone(),
            csrf: self.session.csrf.clone(),
            active,
            flash: crate::view::flash(headers),
        }
    }
}

pub(crate) fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "the form's token is missing or stale: reload the page and try again",
    )
        .into_response()
}

impl<C: Control> FromRequestParts<Ui<C>> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui<C>) -> Result<Self, Response> {
        let to_login = || {
            let next = parts.uri.path();
            let target = if parts.method == axum::http::Method::GET && next != "/" {
                format!("/login?next={}", crate::view::hex(next))
            } else {
                "/login".to_string()
            };
            Redirect::to(&target).into_response()
        };
        let Some(c) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login());
        };
        match ui.control.session(c).await {
            Ok(Some(session)) => {
                let path = parts.uri.path();
                if session.user.must_change && path != "/password" && path != "/logout" {
                    return Err(Redirect::to("/password").into_response());
                }
                Ok(Self {
                    session,
                    cookie: c.to_string(),
                })
            }
            Ok(None) => Err(to_login()),
            Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, e.0).into_response()),
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    next: String,
    user: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

/// Where to go after the login: a page of this dashboard only.
pub(crate) fn next_page(hex: Option<&str>) -> String {
    hex.and_then(crate::view::unhex)
        .filter(|p| p.starts_with('/') && !p.starts_with("//") && !p.contains('\\'))
        .unwrap_or_else(|| "/".into())
}

fn login_form<C>(ui: &Ui<C>, status: StatusCode, page: LoginPage) -> Response {
    let cookie = set_cookie(
        ui.options.secure_cookies,
        LOGIN_COOKIE,
        Some(&page.csrf),
        "/login",
    );
    (status, [(header::SET_COOKIE, cookie)], render(&page)).into_response()
}

pub(crate) async fn login_page<C: Control>(
    State(ui): State<Ui<C>>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    // Logged in already: on to the page.
    if let Some(c) = cookie(&headers, SESSION_COOKIE) {
        if let Ok(Some(_)) = ui.control.session(c).await {
            return Redirect::to(&next_page(q.next.as_deref())).into_response();
        }
    }
    let page = LoginPage {
        csrf: random_token(),
        next: q.next.unwrap_or_default(),
        user: String::new(),
        error: None,
    };
    login_form(&ui, StatusCode::OK, page)
}

pub(crate) async fn login<C: Control>(
    State(ui): State<Ui<C>>,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Response {
    match (form.get("csrf"), cookie(&headers, LOGIN_COOKIE)) {
        (Some(f), Some(c)) if same(f, c) => {}
        _ => return forbidden(),
    }
    let name = form.get("user").unwrap_or_default().trim().to_string();
    let password = form.get("password").unwrap_or_default();
    let next = form.get("next").map(str::to_string);
    let refused = |error: &str| LoginPage {
        csrf: random_token(),
        next: next.clone().unwrap_or_default(),
        user: name.clone(),
        error: Some(error.into()),
    };
    if let Some(wait) = ui.throttle.wait(&name, Instant::now()) {
        let secs = wait.as_secs_f64().ceil() as u64;
        // Not audited one by one: the failure that began the wait was.
        let why = format!("too many failed logins for {name}: try again in {secs} s");
        return login_form(&ui, StatusCode::TOO_MANY_REQUESTS, refused(&why));
    }
    let user = match ui.control.login(&name, password).await {
        Ok(Some(u)) => {
            ui.throttle.succeeded(&name);
            u
        }
        Ok(None) => {
            let (count, wait) = ui.throttle.failed(&name, Instant::now());
            if !wait.is_zero() {
                let why = format!(
                    "{count} failed logins in a row: the next attempt waits {} s",
                    wait.as_secs()
                );
                ui.control
                    .audit(&format!("web:{name}"), "login.throttled", &why)
                    .await;
            }
            ui.control
                .audit(
                    &format!("web:{name}"),
                    "login.refused",
                    "wrong user name or password",
                )
                .await;
            return login_form(
                &ui,
                StatusCode::UNAUTHORIZED,
                refused("wrong user name or password"),
            );
        }
        Err(e) => return login_form(&ui, StatusCode::SERVICE_UNAVAILABLE, refused(&e.0)),
    };
    let (value, _) = match ui.control.open_session(&user).await {
        Ok(s) => s,
        Err(e) => return login_form(&ui, StatusCode::SERVICE_UNAVAILABLE, refused(&e.0)),
    };
    ui.control
        .audit(&format!("user:{}", user.name), "login", "")
        .await;
    let secure = ui.options.secure_cookies;
    let to = if user.must_change {
        "/password".to_string()
    } else {
        next_page(next.as_deref())
    };
    let mut r = Redirect::to(&to).into_response();
    let h = r.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(secure, SESSION_COOKIE, Some(&value), "/"),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(secure, LOGIN_COOKIE, None, "/login"),
    );
    r
}

pub(crate) async fn logout<C: Control>(
    State(ui): State<Ui<C>>,
    authed: Authed,
    Form(form): Form<Fields>,
) -> Response {
    if !authed.allows(&form) {
        return forbidden();
    }
    if let Err(e) = ui.control.close_session(&authed.cookie).await {
        return (StatusCode::SERVICE_UNAVAILABLE, e.0).into_response();
    }
    ui.control
        .audit(&format!("user:{}", authed.user()), "logout", "")
        .await;
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(ui.options.secure_cookies, SESSION_COOKIE, None, "/"),
    );
    r
}

#[derive(Template)]
#[template(path = "password.html")]
struct PasswordPage {
    nav: Nav,
    forced: bool,
    error: Option<String>,
}

pub(crate) async fn password_page(authed: Authed, headers: HeaderMap) -> Response {
    let page = PasswordPage {
        forced: authed.session.user.must_change,
        nav: authed.nav("password", &headers),
        error: None,
    };
    render(&page).into_response()
}

pub(crate) async fn change_password<C: Control>(
    State(ui): State<Ui<C>>,
    authed: Authed,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Response {
    if !authed.allows(&form) {
        return forbidden();
    }
    let refuse = |status: StatusCode, error: String| {
        let page = PasswordPage {
            forced: authed.session.user.must_change,
            nav: authed.nav("password", &headers),
            error: Some(error),
        };
        (status, render(&page)).into_response()
    };
    let current = form.get("current").unwrap_or_default();
    let new = form.get("new").unwrap_or_default();
    if new != form.get("repeat").unwrap_or_default() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the new password and its repetition differ".into(),
        );
    }
    match ui.control.login(authed.user(), current).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "the current password is wrong".into(),
            )
        }
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, e.0),
    }
    if let Err(e) = ui
        .control
        .set_password(authed.user(), new, &authed.cookie)
        .await
    {
        return refuse(StatusCode::BAD_REQUEST, e.0);
    }
    ui.control
        .audit(&format!("user:{}", authed.user()), "user.password", "")
        .await;
    crate::view::redirect_with("/", "ok", "password changed")
}
