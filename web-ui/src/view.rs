//! What every page shares: the navigation bar, one-time messages after a form, rendering,
//! form fields, numbers and times for people, the style sheet and the script.

use askama::Template;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

/// The one-time message after a form (`ok:` or `error:` then the text, hex-encoded).
const FLASH_COOKIE: &str = "drover_flash";

/// The navigation bar's data: who is logged in, the session's form token, the page.
pub(crate) struct Nav {
    pub(crate) user: String,
    pub(crate) csrf: String,
    pub(crate) active: &'static str,
    pub(crate) flash: Option<Flash>,
}

impl Nav {
    /// The class of a navigation link (the current page is marked).
    pub(crate) fn here(&self, page: &str) -> &'static str {
        if self.active == page {
            "page"
        } else {
            "false"
        }
    }
}

/// A one-time message: what the last form did.
pub(crate) struct Flash {
    pub(crate) ok: bool,
    pub(crate) text: String,
}

/// A submitted form's fields, in order (a field may repeat: checkboxes).
#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
pub(crate) struct Fields(pub(crate) Vec<(String, String)>);

impl Fields {
    /// The field's first value.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The field's value, trimmed; `None` when missing or empty.
    pub(crate) fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    /// Every value of a field.
    pub(crate) fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// Renders a template (a failure is the server's: a 500 saying so).
pub(crate) fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a dashboard page");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// Renders a page; a shown one-time message is cleared.
pub(crate) fn page<T: Template>(nav: &Nav, t: &T) -> Response {
    render_page(nav.flash.is_some(), t)
}

/// [`page`] for a template that holds its [`Nav`]: `flash` when the nav had a message.
pub(crate) fn render_page<T: Template>(flash: bool, t: &T) -> Response {
    let mut r = render(t);
    if flash {
        r.headers_mut().append(
            header::SET_COOKIE,
            HeaderValue::from_static("drover_flash=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        );
    }
    r
}

/// To `to`, with a one-time message (`kind`: ok or error).
pub(crate) fn redirect_with(to: &str, kind: &str, text: &str) -> Response {
    let mut r = Redirect::to(to).into_response();
    let v = format!(
        "{FLASH_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=60",
        hex(&format!("{kind}:{text}"))
    );
    if let Ok(v) = HeaderValue::from_str(&v) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The one-time message the request carries.
pub(crate) fn flash(headers: &HeaderMap) -> Option<Flash> {
    let v = unhex(crate::auth::cookie(headers, FLASH_COOKIE)?)?;
    let (kind, text) = v.split_once(':')?;
    Some(Flash {
        ok: kind == "ok",
        text: text.chars().take(500).collect(),
    })
}

pub(crate) fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<String> {
    if s.len() % 2 != 0 || s.len() > 4096 {
        return None;
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// Bytes for people: 1.5 GiB.
pub(crate) fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n.max(0) as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{} B", n.max(0))
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A rate for people: 812.4 Mbit/s.
pub(crate) fn rate(bps: i64) -> String {
    let v = bps.max(0) as f64;
    if v >= 1e9 {
        format!("{:.2} Gbit/s", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1} Mbit/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0} kbit/s", v / 1e3)
    } else {
        format!("{v:.0} bit/s")
    }
}

/// Seconds for people: 1 h 05 min, 4 min 10 s, 12 s.
pub(crate) fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{} h {:02} min", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

/// A Unix-milliseconds time in the server's local time: 2026-11-25 18:04:05.
pub(crate) fn time(ms: Option<i64>) -> String {
    use chrono::TimeZone;
    match ms.and_then(|ms| chrono::Local.timestamp_millis_opt(ms).single()) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => "—".into(),
    }
}

const CSS: &str = include_str!("../static/app.css");
const JS: &str = include_str!("../static/app.js");

pub(crate) async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CSS,
    )
        .into_response()
}

pub(crate) async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        JS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_read_numbers() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(rate(812_400_000), "812.4 Mbit/s");
        assert_eq!(rate(2_500_000_000), "2.50 Gbit/s");
        assert_eq!(duration(3900.0), "1 h 05 min");
        assert_eq!(duration(250.0), "4 min 10 s");
        assert_eq!(time(None), "—");
    }

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        let s = "ok:machine «lab-1» added";
        assert_eq!(unhex(&hex(s)).as_deref(), Some(s));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("abc"), None);
    }

    #[test]
    fn fields_repeat_and_trim() {
        let f = Fields(vec![
            ("to".into(), "a".into()),
            ("to".into(), " b ".into()),
            ("to".into(), "".into()),
            ("name".into(), "  ".into()),
        ]);
        assert_eq!(f.all("to"), ["a", "b"]);
        assert_eq!(f.text("name"), None);
        assert_eq!(f.get("to"), Some("a"));
    }
}
