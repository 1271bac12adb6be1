//! N concurrent requests to one URL, all sent at once; prints the status
//! counts and the latency distribution (p50, p99, max) of the answers.
//! Used for the burst-from-zero measurement until `wisp bench` has it.
//!
//!   burst URL [N]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(url), n) = (args.next(), args.next()) else {
        eprintln!("usage: burst URL [N]");
        return std::process::ExitCode::FAILURE;
    };
    let n: usize = n.and_then(|n| n.parse().ok()).unwrap_or(100);
    let uri: http::Uri = match url.parse() {
        Ok(uri) => uri,
        Err(e) => {
            eprintln!("burst: invalid URL {url:?}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(n)
        .build_http();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, uri, barrier) = (client.clone(), uri.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let started = Instant::now();
                let status = match client.get(uri).await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.into_body().collect().await;
                        status
                    }
                    Err(_) => 0,
                };
                (status, started.elapsed())
            })
        })
        .collect();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut latencies: Vec<Duration> = Vec::new();
    for task in tasks {
        if let Ok((status, took)) = task.await {
            *statuses.entry(status).or_default() += 1;
            latencies.push(took);
        }
    }
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    let statuses: Vec<String> = statuses
        .iter()
        .map(|(s, c)| {
            format!(
                "{}: {c}",
                if *s == 0 {
                    "error".to_owned()
                } else {
                    s.to_string()
                }
            )
        })
        .collect();
    println!(
        "{n} concurrent requests: {}; p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        statuses.join(", "),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    std::process::ExitCode::SUCCESS
}
