//! The dashboard against a fake [`Control`]: logins, sessions, tokens, pages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

use crate::{Control, ControlError, Options, Session, User, FORM_PATHS, PAGE_PATHS};

/// One user (alice, password "right password"), sessions in memory, an API that answers
/// every GET with an empty list and records the calls.
#[derive(Clone, Default)]
struct Fake {
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    calls: Arc<Mutex<Vec<(String, String, String)>>>,
    audit: Arc<Mutex<Vec<String>>>,
    must_change: bool,
}

impl Control for Fake {
    async fn api(&self, user: &str, req: Request<Body>) -> Response {
        let (method, path) = (req.method().to_string(), req.uri().to_string());
        self.calls
            .lock()
            .unwrap()
            .push((user.into(), method.clone(), path.clone()));
        if method != "GET" {
            return Json(json!({"id": "d1", "name": "x"})).into_response();
        }
        if path.starts_with("/api/v1/machines/") {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "machine not found"})),
            )
                .into_response();
        }
        if path.starts_with("/api/v1/deployments/") {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "deployment \"d1\" not found"})),
            )
                .into_response();
        }
        if path == "/api/v1/store" {
            return Json(json!({
                "location": "s3://images/campus at http://10.0.0.5:8333",
                "encrypted": true,
                "cache": {
                    "store_reads": 15, "store_bytes": 48019710, "cache_hits": 585,
                    "cache_bytes": 48019710, "cache_max_bytes": 21474836480u64,
                    "cache_files": 15, "damaged_in_cache": 1
                }
            }))
            .into_response();
        }
        Json(json!([])).into_response()
    }

    async fn login(&self, name: &str, password: &str) -> Result<Option<User>, ControlError> {
        Ok(
            (name == "alice" && password == "right password").then(|| User {
                name: name.into(),
                must_change: self.must_change,
            }),
        )
    }

    async fn open_session(&self, user: &User) -> Result<(String, Session), ControlError> {
        let cookie = crate::auth::random_token();
        let s = Session {
            user: user.clone(),
            csrf: crate::auth::random_token(),
        };
        self.sessions
            .lock()
            .unwrap()
            .insert(cookie.clone(), s.clone());
        Ok((cookie, s))
    }

    async fn session(&self, cookie: &str) -> Result<Option<Session>, ControlError> {
        Ok(self.sessions.lock().unwrap().get(cookie).cloned())
    }

    async fn close_session(&self, cookie: &str) -> Result<(), ControlError> {
        self.sessions.lock().unwrap().remove(cookie);
        Ok(())
    }

    async fn set_password(&self, _: &str, password: &str, _: &str) -> Result<(), ControlError> {
        if password.len() < 8 {
            return Err(ControlError(
                "a password needs at least 8 characters".into(),
            ));
        }
        for s in self.sessions.lock().unwrap().values_mut() {
            s.user.must_change = false;
        }
        Ok(())
    }

    async fn audit(&self, actor: &str, action: &str, _: &str) {
        self.audit.lock().unwrap().push(format!("{actor} {action}"));
    }
}

struct Answer {
    status: StatusCode,
    location: Option<String>,
    cookies: Vec<String>,
    body: String,
}

async fn send(app: &axum::Router, req: Request<Body>) -> Answer {
    let r = app.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let location = r
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_string());
    let cookies = r
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let body = String::from_utf8_lossy(&r.into_body().collect().await.unwrap().to_bytes()).into();
    Answer {
        status,
        location,
        cookies,
        body,
    }
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::empty()).unwrap()
}

fn post(path: &str, cookie: Option<&str>, form: &str) -> Request<Body> {
    let mut b =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::from(form.to_string())).unwrap()
}

/// `name="csrf" value="..."`'s value in a page.
fn token(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a form token") + 19;
    html[at..at + 64].to_string()
}

fn cookie_value(cookies: &[String], name: &str) -> Option<String> {
    cookies.iter().find_map(|c| {
        let v = c.strip_prefix(&format!("{name}="))?.split(';').next()?;
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// Logs alice in: the session cookie and the session's form token.
async fn log_in(app: &axum::Router) -> (String, String) {
    let page = send(app, get("/login", None)).await;
    assert_eq!(page.status, StatusCode::OK);
    let login_cookie = cookie_value(&page.cookies, "drover_login").expect("the login's cookie");
    let t = token(&page.body);
    assert_eq!(t, login_cookie, "the form carries the cookie's double");
    let r = send(
        app,
        post(
            "/login",
            Some(&format!("drover_login={login_cookie}")),
            &format!("csrf={t}&user=alice&password=right+password&next="),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let session = cookie_value(&r.cookies, "drover_session").expect("a session cookie");
    let set = r
        .cookies
        .iter()
        .find(|c| c.starts_with("drover_session="))
        .unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains("Secure"),
        "plain HTTP: no Secure flag ({set})"
    );
    let cookie = format!("drover_session={session}");
    let page = send(app, get("/machines", Some(&cookie))).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    (cookie, token(&page.body))
}

#[tokio::test]
async fn every_page_needs_a_login() {
    let app = crate::router(Fake::default(), Options::default());
    for path in PAGE_PATHS {
        let r = send(&app, get(path, None)).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        let to = r.location.unwrap();
        assert!(to.starts_with("/login"), "{path} -> {to}");
        // A made-up cookie is no session either.
        let r = send(&app, get(path, Some("drover_session=00ff"))).await;
        assert!(r.location.unwrap().starts_with("/login"), "{path}");
    }
    // The login page, the style sheet and the script are public.
    for path in ["/login", "/static/app.css", "/static/app.js"] {
        assert_eq!(
            send(&app, get(path, None)).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
}

#[tokio::test]
async fn every_form_refuses_a_missing_or_wrong_token() {
    let fake = Fake::default();
    let app = crate::router(fake.clone(), Options::default());
    let (cookie, good) = log_in(&app).await;
    let calls_before = fake.calls.lock().unwrap().len();
    for path in FORM_PATHS {
        let both = format!("{cookie}; drover_login={good}");
        for form in ["name=x", "csrf=&name=x", "csrf=0123&name=x"] {
            let r = send(&app, post(path, Some(&both), form)).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{path} with {form:?}");
        }
    }
    // Nothing reached the API, and the session still works.
    assert_eq!(fake.calls.lock().unwrap().len(), calls_before);
    let r = send(
        &app,
        post("/groups", Some(&cookie), &format!("csrf={good}&name=lab")),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let last = fake.calls.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        last,
        ("alice".into(), "POST".into(), "/api/v1/groups".into())
    );
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_logout_ends_the_session() {
    let fake = Fake::default();
    let app = crate::router(fake.clone(), Options::default());
    let page = send(&app, get("/login", None)).await;
    let c = cookie_value(&page.cookies, "drover_login").unwrap();
    let r = send(
        &app,
        post(
            "/login",
            Some(&format!("drover_login={c}")),
            &format!("csrf={c}&user=alice&password=wrong"),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("wrong user name or password"), "{}", r.body);
    assert!(cookie_value(&r.cookies, "drover_session").is_none());
    // The login form's token is checked too.
    let r = send(
        &app,
        post(
            "/login",
            None,
            "csrf=abc&user=alice&password=right+password",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let (cookie, t) = log_in(&app).await;
    let r = send(&app, post("/logout", Some(&cookie), &format!("csrf={t}"))).await;
    assert_eq!(r.location.as_deref(), Some("/login"));
    let r = send(&app, get("/", Some(&cookie))).await;
    assert_eq!(r.location.as_deref(), Some("/login"), "the session is over");
    let audit = fake.audit.lock().unwrap().clone();
    assert!(
        audit.contains(&"web:alice login.refused".to_string()),
        "{audit:?}"
    );
    assert!(audit.contains(&"user:alice login".to_string()), "{audit:?}");
    assert!(
        audit.contains(&"user:alice logout".to_string()),
        "{audit:?}"
    );
}

#[tokio::test]
async fn failed_logins_in_a_row_make_the_name_wait() {
    let fake = Fake::default();
    let app = crate::router(fake.clone(), Options::default());
    let attempt = |password: &'static str| {
        let app = app.clone();
        async move {
            let page = send(&app, get("/login", None)).await;
            let c = cookie_value(&page.cookies, "drover_login").unwrap();
            let form = format!("csrf={c}&user=alice&password={password}");
            send(
                &app,
                post("/login", Some(&format!("drover_login={c}")), &form),
            )
            .await
        }
    };
    for _ in 0..crate::throttle::FREE_FAILURES {
        let r = attempt("wrong").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    // Even the right password waits now; the page says why and for how long.
    let r = attempt("right+password").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(
        r.body
            .contains("too many failed logins for alice: try again in 1 s"),
        "{}",
        r.body
    );
    assert!(cookie_value(&r.cookies, "drover_session").is_none());
    let audit = fake.audit.lock().unwrap().clone();
    assert_eq!(
        audit
            .iter()
            .filter(|a| *a == "web:alice login.throttled")
            .count(),
        1,
        "{audit:?}"
    );
    // After the wait the right password logs in.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = attempt("right+password").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
}

#[tokio::test]
async fn a_given_password_must_be_changed_first() {
    let fake = Fake {
        must_change: true,
        ..Fake::default()
    };
    let app = crate::router(fake, Options::default());
    let page = send(&app, get("/login", None)).await;
    let c = cookie_value(&page.cookies, "drover_login").unwrap();
    let r = send(
        &app,
        post(
            "/login",
            Some(&format!("drover_login={c}")),
            &format!("csrf={c}&user=alice&password=right+password"),
        ),
    )
    .await;
    assert_eq!(r.location.as_deref(), Some("/password"));
    let cookie = format!(
        "drover_session={}",
        cookie_value(&r.cookies, "drover_session").unwrap()
    );
    let r = send(&app, get("/machines", Some(&cookie))).await;
    assert_eq!(
        r.location.as_deref(),
        Some("/password"),
        "nothing else first"
    );
    let page = send(&app, get("/password", Some(&cookie))).await;
    let t = token(&page.body);
    let r = send(
        &app,
        post(
            "/password",
            Some(&cookie),
            &format!("csrf={t}&current=right+password&new=short&repeat=short"),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("at least 8"), "{}", r.body);
    let r = send(
        &app,
        post(
            "/password",
            Some(&cookie),
            &format!("csrf={t}&current=right+password&new=longer+one&repeat=longer+one"),
        ),
    )
    .await;
    assert_eq!(r.location.as_deref(), Some("/"));
    assert_eq!(
        send(&app, get("/machines", Some(&cookie))).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn pages_show_what_the_api_refused_and_forms_say_what_happened() {
    let fake = Fake::default();
    let app = crate::router(fake, Options::default());
    let (cookie, t) = log_in(&app).await;
    let r = send(&app, get("/deployments/d1", Some(&cookie))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        r.body.contains("deployment &#34;d1&#34; not found"),
        "{}",
        r.body
    );
    let r = send(
        &app,
        post("/groups", Some(&cookie), &format!("csrf={t}&name=lab")),
    )
    .await;
    let flash = r
        .cookies
        .iter()
        .find(|c| c.starts_with("drover_flash="))
        .unwrap();
    let value = flash["drover_flash=".len()..].split(';').next().unwrap();
    let page = send(
        &app,
        get("/groups", Some(&format!("{cookie}; drover_flash={value}"))),
    )
    .await;
    assert!(page.body.contains("group lab added"), "{}", page.body);
    assert!(
        page.cookies.iter().any(|c| c.starts_with("drover_flash=;")),
        "a shown message is cleared"
    );
}

#[tokio::test]
async fn the_next_page_after_login_stays_on_this_site() {
    for (next, to) in [
        (Some("/machines"), "/machines"),
        (Some("//evil.example/"), "/"),
        (Some("https://evil.example/"), "/"),
        (None, "/"),
    ] {
        let hexed = next.map(crate::view::hex);
        assert_eq!(crate::auth::next_page(hexed.as_deref()), to, "{next:?}");
    }
}

#[tokio::test]
async fn over_tls_the_session_cookie_is_secure() {
    let app = crate::router(
        Fake::default(),
        Options {
            secure_cookies: true,
        },
    );
    let page = send(&app, get("/login", None)).await;
    let c = cookie_value(&page.cookies, "drover_login").unwrap();
    let r = send(
        &app,
        post(
            "/login",
            Some(&format!("drover_login={c}")),
            &format!("csrf={c}&user=alice&password=right+password"),
        ),
    )
    .await;
    let set = r
        .cookies
        .iter()
        .find(|c| c.starts_with("drover_session="))
        .unwrap();
    assert!(set.ends_with("; Secure"), "{set}");
}

#[tokio::test]
async fn the_images_page_shows_the_store_and_its_cache() {
    let app = crate::router(Fake::default(), Options::default());
    let (cookie, _) = log_in(&app).await;
    let r = send(&app, get("/images", Some(&cookie))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for want in [
        "s3://images/campus at http://10.0.0.5:8333, encrypted at rest",
        "15 chunks (45.8 MiB) read from the store",
        "local cache 45.8 MiB of 20.0 GiB (15 chunks), 585 reads answered by it",
        "1 damaged cached copies dropped",
    ] {
        assert!(r.body.contains(want), "{want:?} not in {}", r.body);
    }
}
