//! `msgi serve --metrics ADDR`: Prometheus metrics over HTTP (`GET
//! /metrics`), from `msgi-metrics`, on the shared endpoint server
//! ([`crate::http`]).

use std::net::SocketAddr;

use anyhow::Result;
use http::{Method, StatusCode};
use msgi_metrics::Metrics;

use crate::http::{not_found, respond, Request, Response};

/// The handler of the metrics endpoint: `GET /metrics` (or `HEAD`) answers
/// the current metrics as OpenMetrics text; other paths 404, other methods
/// on `/metrics` 405.
pub(crate) fn endpoint(metrics: Metrics) -> impl Fn(Request) -> Response + Send + Sync + 'static {
    move |request: Request| {
        if request.uri().path() != "/metrics" {
            return not_found();
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut answer = respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "GET /metrics\n",
            );
            answer.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            return answer;
        }
        respond(StatusCode::OK, msgi_metrics::CONTENT_TYPE, metrics.encode())
    }
}

/// `METRICS http://<addr>/metrics`, after the `LISTENING` lines (for scripts).
pub(crate) fn announce(addr: SocketAddr) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "METRICS http://{addr}/metrics")?;
    out.flush()?;
    Ok(())
}
