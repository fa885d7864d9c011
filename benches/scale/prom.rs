//! Prometheus text format: just enough to read both proxies' `/metrics`
//! (gauges, counters, histograms), and a histogram quantile computed the way
//! PromQL's `histogram_quantile` does (linear interpolation in the bucket).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::netns::Netns;

/// One sample.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Metric name (with `_bucket`/`_sum`/`_count` suffixes as exposed).
    pub name: String,
    /// Label pairs.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

/// A scrape.
#[derive(Clone, Debug, Default)]
pub struct Metrics(pub Vec<Sample>);

impl Metrics {
    /// Parses the text exposition format.
    pub fn parse(text: &str) -> Metrics {
        let mut out = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (head, value) = match line.rfind('}') {
                Some(close) => (&line[..=close], line[close + 1..].trim()),
                None => match line.split_once(' ') {
                    Some((h, v)) => (h, v.trim()),
                    None => continue,
                },
            };
            // A timestamp may follow the value.
            let value = value.split_whitespace().next().unwrap_or("");
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => match v.parse() {
                    Ok(x) => x,
                    Err(_) => continue,
                },
            };
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n.to_string(), parse_labels(rest.trim_end_matches('}'))),
                None => (head.to_string(), Vec::new()),
            };
            out.push(Sample { name, labels, value });
        }
        Metrics(out)
    }

    /// The first sample named `name` whose labels include `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|s| s.value)
    }

    /// The histogram `name` (buckets of `name_bucket`, plus `_sum`, `_count`).
    pub fn histogram(&self, name: &str) -> Option<Histogram> {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter(|s| s.name == bucket)
            .filter_map(|s| {
                let le = s.labels.iter().find(|(k, _)| k == "le")?.1.as_str();
                // JSON has no infinity: +Inf is kept as f64::MAX.
                let le = if le == "+Inf" { f64::MAX } else { le.parse().ok()? };
                Some((le, s.value))
            })
            .collect();
        if buckets.is_empty() {
            return None;
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(Histogram {
            buckets,
            sum: self.get(&format!("{name}_sum"), &[]).unwrap_or(0.0),
            count: self.get(&format!("{name}_count"), &[]).unwrap_or(0.0),
        })
    }
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((k.trim_start_matches(',').trim().to_string(), value));
        rest = &after[end..];
    }
    out
}

/// Cumulative buckets `(le, count)`, sorted by `le`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Histogram {
    /// `(upper bound, cumulative count)`; `+Inf` is `f64::MAX`.
    pub buckets: Vec<(f64, f64)>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: f64,
}

impl Histogram {
    /// `self - earlier` (observations made in between).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, c)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map(|(_, c)| *c)
                    .unwrap_or(0.0);
                (*le, c - before)
            })
            .collect();
        Histogram {
            buckets,
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// The `q` quantile as PromQL's `histogram_quantile` computes it: linear
    /// interpolation inside the bucket that holds it (lower bound 0 for the
    /// first bucket); `None` without observations; the highest finite bound
    /// if it falls in `+Inf`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le >= f64::MAX {
                    return Some(prev.0);
                }
                let in_bucket = c - prev.1;
                if in_bucket <= 0.0 {
                    return Some(le);
                }
                return Some(prev.0 + (le - prev.0) * (rank - prev.1) / in_bucket);
            }
            prev = (le, c);
        }
        Some(prev.0)
    }
}

/// `GET http://<addr><path>` from inside `ns` (HTTP/1.0, body returned).
pub fn http_get(ns: &Netns, addr: &str, path: &str, timeout: Duration) -> std::io::Result<String> {
    let (addr, path) = (addr.to_string(), path.to_string());
    ns.run(move || -> std::io::Result<String> {
        let sa: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
        let mut s = TcpStream::connect_timeout(&sa, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let resp = String::from_utf8_lossy(&resp).into_owned();
        match resp.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.") && head.split(' ').nth(1) == Some("200") => {
                Ok(body.to_string())
            }
            _ => Err(std::io::Error::other(format!(
                "GET {path}: {}",
                resp.lines().next().unwrap_or("")
            ))),
        }
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates() {
        let m = Metrics::parse(
            "# HELP x\nx_bucket{le=\"0.25\"} 0\nx_bucket{le=\"0.5\"} 10\nx_bucket{le=\"1\"} 20\nx_bucket{le=\"+Inf\"} 20\nx_sum 12\nx_count 20\n",
        );
        let h = m.histogram("x").unwrap();
        assert_eq!(h.quantile(0.5), Some(0.5));
        assert!((h.quantile(0.25).unwrap() - 0.375).abs() < 1e-9);
    }
}
