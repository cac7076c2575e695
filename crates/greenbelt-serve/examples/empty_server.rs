//! The ceiling for `bench/`: the smallest axum server on the same stack as
//! Greenbelt (axum 0.8 on a multi-threaded tokio runtime). Every POST, on any
//! path, reads the request body and answers 200 with a fixed small JSON body;
//! other methods get 405. Nothing is decoded, validated, computed or logged,
//! so its req/s under the bench's load generator is what the HTTP stack and
//! the client leave for a model server on this machine.
//!
//! ```sh
//! cargo build --release -p greenbelt-serve --example empty_server
//! target/release/examples/empty_server 8090      # listens on 127.0.0.1:8090
//! ```

use axum::Router;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::post;

/// Shaped like a small V2 inference response so the bytes on the wire are of
/// the same order as a real answer.
const BODY: &str = r#"{"model_name":"empty","outputs":[{"name":"out","datatype":"FP32","shape":[1,2],"data":[0.5,0.5]}]}"#;

async fn answer(body: Bytes) -> impl IntoResponse {
    // Read (and drop) the body like a real handler would.
    drop(body);
    ([(CONTENT_TYPE, "application/json")], BODY)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::args().nth(1) {
        Some(p) => p
            .parse()
            .map_err(|e| format!("port {p:?} is not a number: {e}"))?,
        None => 8090,
    };
    let app = Router::new().fallback_service(post(answer));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("empty_server listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
