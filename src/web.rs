//! The browser side, served from assets embedded at build time (`web/`, no CDN): the chat page
//! at `/`, GraphiQL at `GET /graphql` (see [`crate::graphql`]), and their scripts, styles and
//! vendored libraries under `/assets/`.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "web/"]
struct Assets;

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "md" | "txt" => "text/plain; charset=utf-8",
        _ if path.contains("LICENSE") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// An embedded file, or `404`.
pub fn asset(path: &str) -> Response {
    match Assets::get(path) {
        Some(file) => (
            [
                (header::CONTENT_TYPE, content_type(path)),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            file.data,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// `/` and `/assets/…`.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(|| async { asset("index.html") }))
        .route(
            "/assets/{*path}",
            get(|Path(path): Path<String>| async move { asset(&path) }),
        )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pages_and_vendored_libraries_are_embedded() {
        for path in [
            "index.html",
            "chat.js",
            "graphiql.html",
            "graphiql-init.js",
            "vendor/graphiql.min.js",
            "vendor/react.production.min.js",
            "vendor/react-dom.production.min.js",
            "vendor/graphql-ws.min.js",
            "vendor/LICENSE.graphiql",
        ] {
            assert!(super::Assets::get(path).is_some(), "{path} is not embedded");
        }
    }
}
