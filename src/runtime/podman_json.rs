//! What podman prints, read: `podman ps --format json` and `podman inspect --format json`
//! into [`Observed`] and (for `mcp adopt`) a component spec. Pure; tested in
//! [`super::podman`]'s tests.

use serde::Deserialize;

use super::{Made, Observed, Published, LABEL_COMPONENT, LABEL_DIGEST, LABEL_SERVICE, LABEL_SPEC};
use crate::plan::Component;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PsJson {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    image: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    started_at: i64,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    ports: Option<Vec<PortJson>>,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    mounts: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct PortJson {
    #[serde(default)]
    host_ip: String,
    container_port: u16,
    host_port: u16,
    /// Consecutive ports are listed as one entry.
    #[serde(default = "one")]
    range: u16,
    #[serde(default)]
    protocol: String,
}

fn one() -> u16 {
    1
}

/// Parse `podman ps --format json` output.
pub fn parse_ps(json: &str) -> Result<Vec<Observed>, String> {
    let text = json.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<PsJson> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let labels = r.labels.unwrap_or_default();
            let label = |k: &str| labels.get(k).cloned();
            let ports = r.ports.unwrap_or_default();
            let made = Made {
                command: r.command.unwrap_or_default(),
                mounts: r.mounts.unwrap_or_default(),
                ports: ports
                    .iter()
                    .flat_map(|p| {
                        (0..p.range.max(1)).map(move |i| Published {
                            host_ip: p.host_ip.clone(),
                            host_port: p.host_port.saturating_add(i),
                            container_port: p.container_port.saturating_add(i),
                            protocol: p.protocol.clone(),
                        })
                    })
                    .collect(),
            };
            Observed {
                name: r.names.first().cloned().unwrap_or_default(),
                service: label(LABEL_SERVICE).unwrap_or_default(),
                component: label(LABEL_COMPONENT).unwrap_or_default(),
                spec: label(LABEL_SPEC),
                image: r.image,
                started_at: (r.state == "running" && r.started_at > 0).then_some(r.started_at),
                // "stopped": exited, podman's cleanup not yet run; the exit code is known.
                exit_code: (r.state == "exited" || r.state == "stopped").then_some(r.exit_code).flatten(),
                state: r.state,
                ports: ports
                    .iter()
                    .map(|p| {
                        let ip = if p.host_ip.is_empty() { String::new() } else { format!("{}:", p.host_ip) };
                        let span = |first: u16| match p.range {
                            0 | 1 => first.to_string(),
                            n => format!("{first}-{}", first.saturating_add(n - 1)),
                        };
                        format!("{ip}{}->{}/{}", span(p.host_port), span(p.container_port), p.protocol)
                    })
                    .collect(),
                managed: labels.contains_key(LABEL_SERVICE),
                id: r.id,
                restarts: 0,
                made: Some(made),
                address: None,
                digest: label(LABEL_DIGEST),
            }
        })
        .collect())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectJson {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    image_name: String,
    state: InspectState,
    #[serde(default)]
    restart_count: u32,
    #[serde(default)]
    config: Option<InspectConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectState {
    #[serde(default)]
    status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

/// Parse `podman inspect --format json` of one container (state and restart count).
pub fn parse_inspect(json: &str) -> Result<Option<Observed>, String> {
    let rows: Vec<InspectJson> = serde_json::from_str(json.trim()).map_err(|e| e.to_string())?;
    Ok(rows.into_iter().next().map(|r| {
        let labels = r.config.and_then(|c| c.labels).unwrap_or_default();
        Observed {
            id: r.id,
            name: r.name,
            service: labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
            component: labels.get(LABEL_COMPONENT).cloned().unwrap_or_default(),
            spec: labels.get(LABEL_SPEC).cloned(),
            image: r.image_name,
            state: r.state.status,
            restarts: r.restart_count,
            managed: labels.contains_key(LABEL_SERVICE),
            digest: labels.get(LABEL_DIGEST).cloned(),
            ..Default::default()
        }
    }))
}

/// What `podman inspect` says a container was created with, as a component spec (for
/// `mcp adopt`). Environment the runtime adds itself (PATH, HOSTNAME, ...) is left out.
pub fn component_from_inspect(json: &str, name: &str) -> Result<Component, String> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).map_err(|e| e.to_string())?;
    let c = v.get(0).ok_or("no such container")?;
    let cfg = &c["Config"];
    let host = &c["HostConfig"];
    let strs = |x: &serde_json::Value| -> Vec<String> {
        x.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
    };
    let mut comp = Component { name: name.to_string(), image: c["ImageName"].as_str().unwrap_or_default().to_string(), ..Default::default() };
    comp.cmd = strs(&cfg["Cmd"]);
    for kv in strs(&cfg["Env"]) {
        if let Some((k, v)) = kv.split_once('=') {
            if !["PATH", "TERM", "container", "HOSTNAME", "HOME"].contains(&k) {
                comp.env.insert(k.to_string(), v.to_string());
            }
        }
    }
    comp.user = cfg["User"].as_str().filter(|u| !u.is_empty()).map(str::to_string);
    let restart = host["RestartPolicy"]["Name"].as_str().unwrap_or("");
    comp.restart = match (restart, host["RestartPolicy"]["MaximumRetryCount"].as_u64().unwrap_or(0)) {
        ("" | "no", _) => None,
        ("on-failure", n) if n > 0 => Some(format!("on-failure:{n}")),
        (r, _) => Some(r.to_string()),
    };
    if let Some(bindings) = host["PortBindings"].as_object() {
        for (ctr, binds) in bindings {
            let (port, proto) = ctr.split_once('/').unwrap_or((ctr.as_str(), "tcp"));
            for b in binds.as_array().into_iter().flatten() {
                let ip = b["HostIp"].as_str().unwrap_or("");
                let hp = b["HostPort"].as_str().unwrap_or("");
                let ip = if ip.is_empty() { String::new() } else { format!("{ip}:") };
                let suffix = if proto == "tcp" { String::new() } else { format!("/{proto}") };
                comp.ports.push(format!("{ip}{hp}:{port}{suffix}"));
            }
        }
        comp.ports.sort();
    }
    for b in strs(&host["Binds"]) {
        let mut parts = b.splitn(3, ':');
        let (src, dst, opts) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let ro = opts.split(',').any(|o| o == "ro");
        comp.volumes.push(if ro { format!("{src}:{dst}:ro") } else { format!("{src}:{dst}") });
    }
    let mode = host["NetworkMode"].as_str().unwrap_or("bridge");
    comp.network = match mode {
        "bridge" => c["NetworkSettings"]["Networks"]
            .as_object()
            .and_then(|n| if n.len() == 1 { n.keys().next().cloned() } else { None })
            .filter(|n| n != "podman"),
        "" | "default" => None,
        other => Some(other.to_string()),
    };
    comp.stop_timeout = cfg["StopTimeout"].as_u64().filter(|t| *t != 10).map(|t| t as u32);
    Ok(comp)
}
