//! The demo app and the JavaScript client, served at `/` on the gateway's port
//! (`--demo false` turns it off). The files are compiled in from `clients/`:
//! no CDN, nothing read from disk at run time, and the page always matches the
//! gateway that serves it.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use std::sync::Arc;

use crate::Gateway;

/// Path, content type and body of every file served.
const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../../clients/demo/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../clients/demo/app.js"),
    ),
    (
        "/app.css",
        "text/css; charset=utf-8",
        include_str!("../../../clients/demo/app.css"),
    ),
    (
        "/switchboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../clients/js/switchboard.js"),
    ),
    (
        "/msgpack.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../clients/js/msgpack.js"),
    ),
];

/// The page's scripts come from this origin only and it may connect only back
/// here (`ws:`/`wss:` to the same host): a message's text can never run as code.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                   style-src 'self'; script-src 'self'; frame-ancestors 'none'";

/// The response for `path`, if it is one of the demo's files (or
/// `/demo.json`, which tells the page whether the gateway wants a token).
pub fn get(gw: &Arc<Gateway>, path: &str) -> Option<Response<Full<Bytes>>> {
    let (content_type, body) = if path == "/demo.json" {
        let config = serde_json::json!({
            "auth": gw.settings.tokens.is_some(),
            "instance": gw.bus.instance(),
        });
        ("application/json", Bytes::from(config.to_string()))
    } else {
        let (_, content_type, body) = FILES.iter().find(|(p, _, _)| *p == path)?;
        (*content_type, Bytes::from_static(body.as_bytes()))
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(response)
}
