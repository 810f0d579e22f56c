//! A component's health check: what the agent probes (an HTTP(S) URL, a TCP port, or a command
//! run inside the container) and how often. Pure: parsing and checking only; the agent's
//! prober does the I/O.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[components.health]` as written in a service file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// `http://IP:PORT/path` or `https://...` (a 2xx or 3xx answer is healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// For https: the CA that signed the server's certificate (a PEM file on the node);
    /// without it, the node's system CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// `IP:PORT` that must accept a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// A command run inside the container; exit status 0 is healthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Between probes (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// One probe's limit (default 2s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Failed probes in a row that make it unhealthy (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// After a start, failures this long do not count (default 0s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
}

/// What one probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Http { tls: bool, host: Host, port: u16, path: String, ca: Option<String> },
    Tcp { host: Host, port: u16 },
    Cmd(Vec<String>),
}

/// Where a probe connects: an address on the node, `localhost`, or `self`: the instance's
/// own address, reached from inside its network (a VM on an isolated network, whose address
/// the agent assigns at deploy time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Localhost,
    Instance,
}

impl Host {
    /// The address on the node; `None` for `self`, known only once the instance exists.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Localhost => Some(IpAddr::from([127, 0, 0, 1])),
            Host::Instance => None,
        }
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Localhost => f.write_str("localhost"),
            Host::Instance => f.write_str("self"),
        }
    }
}

/// A checked health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

impl HealthCheck {
    /// How long a fresh instance has to become healthy: start_period + retries × interval.
    pub fn deadline(&self) -> Duration {
        self.start_period + self.interval * self.retries
    }
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_RETRIES: u32 = 3;
const MIN_INTERVAL: Duration = Duration::from_millis(200);
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// One probe at most this long (probes of a node run side by side, but a deploy waits).
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// A command probe starts `podman exec` first: less is never enough.
const MIN_CMD_TIMEOUT: Duration = Duration::from_secs(1);

impl Health {
    /// Parse and check; every problem as (field under `health`, what is wrong).
    pub fn check(&self) -> Result<HealthCheck, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut err = |field: &str, msg: String| errors.push((field.to_string(), msg));
        let set: Vec<&str> =
            [("http", self.http.is_some()), ("tcp", self.tcp.is_some()), ("cmd", !self.cmd.is_empty())].into_iter().filter_map(|(f, s)| s.then_some(f)).collect();
        let probe = match set.as_slice() {
            ["http"] => match parse_http(self.http.as_deref().unwrap_or_default()) {
                Ok((tls, host, port, path)) => Some(Probe::Http { tls, host, port, path, ca: self.ca.clone() }),
                Err(why) => {
                    err("http", why);
                    None
                }
            },
            ["tcp"] => match parse_host_port(self.tcp.as_deref().unwrap_or_default(), None) {
                Ok((host, port)) => Some(Probe::Tcp { host, port }),
                Err(why) => {
                    err("tcp", format!("{why}; expected IP:PORT such as \"127.0.0.1:8080\""));
                    None
                }
            },
            [_] => {
                if self.cmd.iter().any(|a| a.contains('\0')) {
                    err("cmd", "contains a NUL byte".into());
                }
                if self.cmd[0].is_empty() || self.cmd[0].starts_with('-') {
                    err("cmd", format!("{:?} is not a program; expected a path or name such as \"/bin/check\"", self.cmd[0]));
                }
                Some(Probe::Cmd(self.cmd.clone()))
            }
            [] => {
                err("", "says nothing to probe; set one of http, tcp or cmd".into());
                None
            }
            [first, second, ..] => {
                err(second, format!("set together with {first}; a health check probes one thing"));
                None
            }
        };
        if let Some(ca) = &self.ca {
            let is_https = self.http.as_deref().is_some_and(|u| u.starts_with("https://"));
            if !is_https {
                err("ca", "only with an https:// health check".into());
            } else if !ca.starts_with('/') || ca.split('/').any(|s| s == "..") || ca.chars().any(char::is_control) {
                err("ca", format!("{ca:?} is not a usable path; expected an absolute path on the node without '..'"));
            }
        }
        let mut duration = |field: &str, value: &Option<String>, default: Duration, min: Duration, max: Duration| match value {
            None => default,
            Some(v) => match parse_duration(v) {
                Ok(d) if d >= min && d <= max => d,
                Ok(_) => {
                    err(field, format!("{v:?} is out of range; expected {} to {}", show_duration(min), show_duration(max)));
                    default
                }
                Err(why) => {
                    err(field, why);
                    default
                }
            },
        };
        let min_timeout = if self.cmd.is_empty() { Duration::from_millis(100) } else { MIN_CMD_TIMEOUT };
        let interval = duration("interval", &self.interval, DEFAULT_INTERVAL, MIN_INTERVAL, MAX_DURATION);
        let timeout = duration("timeout", &self.timeout, DEFAULT_TIMEOUT, min_timeout, MAX_TIMEOUT);
        let start_period = duration("start_period", &self.start_period, Duration::ZERO, Duration::ZERO, MAX_DURATION);
        let retries = self.retries.unwrap_or(DEFAULT_RETRIES);
        if !(1..=100).contains(&retries) {
            errors.push(("retries".into(), format!("{retries} is out of range; expected 1-100")));
        } else if start_period + interval * retries > MAX_DURATION {
            // A deploy holds the service's lock while it waits.
            errors.push(("".into(), "start_period + retries × interval is over 1h; a deploy would wait that long".into()));
        }
        match probe {
            Some(probe) if errors.is_empty() => Ok(HealthCheck { probe, interval, timeout, retries, start_period }),
            _ => Err(errors),
        }
    }
}

/// `500ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration; expected a number and a unit, such as \"500ms\", \"5s\", \"2m\" or \"1h\"");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    };
    ms.map(Duration::from_millis).ok_or_else(bad)
}

/// A duration as [`parse_duration`] reads it back.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        _ if !ms.is_multiple_of(1000) => format!("{ms}ms"),
        _ if ms > 0 && ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms > 0 && ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ => format!("{}s", ms / 1000),
    }
}

/// `http://HOST[:PORT][/path]` -> (tls, host, port, path). The path goes into a request line:
/// no spaces or control characters.
fn parse_http(url: &str) -> Result<(bool, Host, u16, String), String> {
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (false, r),
        (_, Some(r)) => (true, r),
        _ => return Err(format!("{url:?} is not an http:// or https:// URL")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) || path.contains('#') {
        return Err(format!("{url:?}: the path must have no spaces, control characters or '#'"));
    }
    let (host, port) = parse_host_port(authority, Some(if tls { 443 } else { 80 })).map_err(|why| format!("{url:?}: {why}"))?;
    Ok((tls, host, port, path.to_string()))
}

/// `IP:PORT`, `[IPv6]:PORT`, `localhost:PORT` or `self:PORT` (the port optional when `default`
/// is given).
/// Only addresses: the agent probes from the node, and a name would need DNS at every probe.
fn parse_host_port(s: &str, default: Option<u16>) -> Result<(Host, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or("an unclosed '['")?;
        if !tail.is_empty() && !tail.starts_with(':') {
            return Err(format!("{s:?}: expected ]:PORT after an IPv6 address"));
        }
        (h, tail.strip_prefix(':'))
    } else if s.matches(':').count() == 1 {
        let (h, p) = s.split_once(':').unwrap_or((s, ""));
        (h, Some(p))
    } else {
        (s, None)
    };
    let port = match (port, default) {
        (Some(p), _) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{p:?} is not a port (1-65535)"))?,
        (None, Some(d)) => d,
        (None, None) => return Err(format!("{s:?} has no port")),
    };
    let host = match host {
        "localhost" => Host::Localhost,
        "self" => Host::Instance,
        _ => Host::Ip(host.parse().map_err(|_| {
            format!("{host:?} is not an IP address, localhost or self (the agent probes from the node, without DNS)")
        })?),
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(url: &str) -> Health {
        Health { http: Some(url.into()), ..Default::default() }
    }

    #[test]
    fn defaults_and_deadline() {
        let c = http("http://127.0.0.1:8080/healthz").check().unwrap();
        assert_eq!(
            c.probe,
            Probe::Http { tls: false, host: Host::Ip([127, 0, 0, 1].into()), port: 8080, path: "/healthz".into(), ca: None }
        );
        assert_eq!((c.interval, c.timeout, c.retries, c.start_period), (DEFAULT_INTERVAL, DEFAULT_TIMEOUT, 3, Duration::ZERO));
        let h = Health { interval: Some("500ms".into()), retries: Some(4), start_period: Some("10s".into()), ..http("https://localhost") };
        let c = h.check().unwrap();
        assert_eq!(c.deadline(), Duration::from_secs(12));
        assert!(matches!(c.probe, Probe::Http { tls: true, host: Host::Localhost, port: 443, .. }));
        let c = Health { tcp: Some("[::1]:5432".into()), ..Default::default() }.check().unwrap();
        assert_eq!(c.probe, Probe::Tcp { host: Host::Ip("::1".parse().unwrap()), port: 5432 });
        let c = http("http://self:8080/up").check().unwrap();
        assert!(matches!(&c.probe, Probe::Http { host: Host::Instance, port: 8080, .. }));
        assert_eq!(Host::Instance.to_string(), "self");
        assert_eq!(Host::Instance.ip(), None);
    }

    #[test]
    fn every_problem_is_named() {
        let fields = |h: Health| h.check().unwrap_err().into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        assert_eq!(fields(Health::default()), vec![""]);
        assert_eq!(fields(Health { tcp: Some("127.0.0.1:1".into()), ..http("http://127.0.0.1/") }), vec!["tcp"]);
        assert_eq!(fields(http("ftp://x/")), vec!["http"]);
        assert_eq!(fields(http("http://example.com/")), vec!["http"], "names need DNS");
        assert_eq!(fields(http("http://127.0.0.1/a b")), vec!["http"]);
        assert_eq!(fields(http("http://127.0.0.1:0/")), vec!["http"]);
        assert_eq!(fields(Health { tcp: Some("127.0.0.1".into()), ..Default::default() }), vec!["tcp"]);
        assert_eq!(fields(http("http://[::1]8080/")), vec!["http"], "not port 80");
        assert_eq!(fields(Health { cmd: vec!["true".into()], timeout: Some("500ms".into()), ..Default::default() }), vec!["timeout"]);
        assert_eq!(fields(Health { timeout: Some("2m".into()), ..http("http://127.0.0.1/") }), vec!["timeout"]);
        assert_eq!(fields(Health { interval: Some("1h".into()), retries: Some(2), ..http("http://127.0.0.1/") }), vec![""]);
        assert_eq!(fields(Health { ca: Some("/ca.pem".into()), ..http("http://127.0.0.1/") }), vec!["ca"]);
        assert_eq!(fields(Health { ca: Some("ca.pem".into()), ..http("https://127.0.0.1/") }), vec!["ca"]);
        assert_eq!(
            fields(Health { interval: Some("5".into()), timeout: Some("10ms".into()), retries: Some(0), ..http("http://127.0.0.1/") }),
            vec!["interval", "timeout", "retries"]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "s", "5", "1.5s", "-1s", "5 s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(show_duration(Duration::from_secs(3)), "3s");
        assert_eq!(show_duration(Duration::from_secs(120)), "2m");
        assert_eq!(show_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(show_duration(Duration::ZERO), "0s");
    }
}
