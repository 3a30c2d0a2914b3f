//! The status listener as an operator's tools see it: JSON over HTTP/1.1
//! (ureq, run off the test's runtime) and the Prometheus text of /metrics.
use std::collections::BTreeMap;

use serde_json::Value;

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into()
}

fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut r = r.expect("HTTP request");
    let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    Reply { status: r.status().as_u16(), content_type, body: r.body_mut().read_to_string().expect("HTTP body") }
}

/// `GET url`, with `Authorization: Bearer token` when given.
pub async fn get(url: &str, token: Option<&str>) -> Reply {
    let (url, token) = (url.to_string(), token.map(str::to_string));
    tokio::task::spawn_blocking(move || {
        let mut req = agent().get(&url);
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        reply(req.call())
    })
    .await
    .unwrap()
}

/// `POST url` with a JSON body.
pub async fn post(url: &str, body: Value, token: Option<&str>) -> Reply {
    let (url, token) = (url.to_string(), token.map(str::to_string));
    tokio::task::spawn_blocking(move || {
        let mut req = agent().post(&url);
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        reply(req.send_json(body))
    })
    .await
    .unwrap()
}

/// Samples of a Prometheus text exposition: `name{labels}` → value, with
/// the labels sorted by name (`{code="OK",method="ByteStream/Write"}`).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let series = match series.split_once('{') {
                Some((name, labels)) => {
                    let mut labels: Vec<String> = labels
                        .trim_end_matches('}')
                        .split("\",")
                        .map(|l| format!("{}\"", l.trim_end_matches('"')))
                        .collect();
                    labels.sort();
                    format!("{name}{{{}}}", labels.join(","))
                }
                None => series.to_string(),
            };
            Some((series, value.parse().ok()?))
        })
        .collect()
}
