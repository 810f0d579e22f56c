//! A service as Kubernetes YAML (`podman kube play` runs it; `kubectl apply` takes it) or as
//! quadlet `.container` units, for those who outgrow SSH fan-out. Pure builders: a plan in,
//! text out, each component a Pod of its own (as mcp runs them: a network namespace each),
//! labelled with mcp's service, component and spec hash. What has no equivalent is said in a
//! comment, never dropped silently; unikernels are refused.

use serde_json::{json, Map, Value};

use super::health::show_duration;
use super::{binds, parse_port, spec_hash, Component, HealthCheck, Kind, Plan, Probe};

/// A Kubernetes object name for `<service>-<component>` (DNS-1123: `_` is not allowed).
fn kube_name(plan: &Plan, c: &Component) -> String {
    format!("{}-{}", plan.name, c.name).replace('_', "-")
}

fn refuse_unikernels(plan: &Plan) -> Result<(), String> {
    match plan.components.iter().find(|c| c.kind == Kind::Unikernel) {
        Some(c) => Err(format!(
            "{}/{} is a unikernel: Kubernetes and podman kube/quadlet run containers only; keep it on mcp",
            plan.name, c.name
        )),
        None => Ok(()),
    }
}

/// `uid[:gid]` when numeric.
fn numeric_user(user: &str) -> Option<(u32, Option<u32>)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid = u.parse().ok()?;
    match g {
        Some(g) => Some((uid, Some(g.parse().ok()?))),
        None => Some((uid, None)),
    }
}

fn restart_policy(restart: Option<&str>) -> &'static str {
    match restart.map(|r| r.split(':').next().unwrap_or(r)) {
        Some("always") | Some("unless-stopped") => "Always",
        Some("on-failure") => "OnFailure",
        _ => "Never",
    }
}

/// The YAML documents (a Secret for the environment, then the Pod) of one component, and
/// the notes on what did not carry over.
fn kube_objects(plan: &Plan, c: &Component) -> (Vec<Value>, Vec<String>) {
    let name = kube_name(plan, c);
    let mut notes = Vec::new();
    let labels = json!({ "mcp.service": plan.name, "mcp.component": c.name, "mcp.spec": spec_hash(c) });
    let mut container = Map::new();
    container.insert("name".into(), json!(c.name.replace('_', "-")));
    container.insert("image".into(), json!(c.image));
    if !c.cmd.is_empty() {
        // podman run's command replaces the image's CMD and keeps its ENTRYPOINT: `args`.
        container.insert("args".into(), json!(c.cmd));
    }
    let mut objects = Vec::new();
    if !c.env.is_empty() {
        let secret = format!("{name}-env");
        objects.push(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": secret, "labels": labels },
            "type": "Opaque",
            "stringData": c.env,
        }));
        container.insert("envFrom".into(), json!([{ "secretRef": { "name": secret } }]));
    }
    let mut ports = Vec::new();
    for p in &c.ports {
        match parse_port(p) {
            Ok(spec) => {
                let mut port = Map::new();
                port.insert("containerPort".into(), json!(spec.container_port));
                if let Some(h) = spec.host_port {
                    port.insert("hostPort".into(), json!(h));
                }
                if let Some(ip) = &spec.ip {
                    port.insert("hostIP".into(), json!(ip.to_string()));
                }
                port.insert("protocol".into(), json!(spec.proto.to_ascii_uppercase()));
                ports.push(Value::Object(port));
            }
            Err(e) => notes.push(format!("port {p:?} not carried over: {e}")),
        }
    }
    if !ports.is_empty() {
        container.insert("ports".into(), json!(ports));
    }
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (i, (b, v)) in binds(&c.volumes).iter().zip(&c.volumes).enumerate() {
        let vol = format!("vol{i}");
        volumes.push(json!({ "name": vol, "hostPath": { "path": b.host, "type": "Directory" } }));
        let read_only = v.split(':').nth(2).is_some_and(|o| o.split(',').any(|x| x == "ro"));
        let mut m = json!({ "name": vol, "mountPath": b.guest });
        if read_only {
            m["readOnly"] = json!(true);
        }
        mounts.push(m);
    }
    if !mounts.is_empty() {
        container.insert("volumeMounts".into(), json!(mounts));
    }
    if let Some(check) = c.health_check() {
        let probe = kube_probe(c, &check, &mut notes);
        container.insert("readinessProbe".into(), probe.clone());
        // Kubernetes restarts on a failed liveness probe: only where mcp would (restart policy).
        if restart_policy(c.restart.as_deref()) != "Never" {
            container.insert("livenessProbe".into(), probe);
        }
    }
    let mut spec = Map::new();
    if let Some(u) = &c.user {
        match numeric_user(u) {
            Some((uid, gid)) => {
                let mut sc = json!({ "runAsUser": uid });
                if let Some(g) = gid {
                    sc["runAsGroup"] = json!(g);
                }
                container.insert("securityContext".into(), sc);
            }
            None => notes.push(format!("user {u:?} is a name; Kubernetes takes a numeric runAsUser, set it by hand")),
        }
    }
    match c.network.as_deref() {
        Some("host") => {
            spec.insert("hostNetwork".into(), json!(true));
        }
        Some(n) => notes.push(format!("network {n:?} not carried over: a Pod has a network of its own (podman kube play --network {n})")),
        None => {}
    }
    spec.insert("restartPolicy".into(), json!(restart_policy(c.restart.as_deref())));
    if let Some(t) = c.stop_timeout {
        spec.insert("terminationGracePeriodSeconds".into(), json!(t));
    }
    spec.insert("containers".into(), json!([Value::Object(container)]));
    if !volumes.is_empty() {
        spec.insert("volumes".into(), json!(volumes));
    }
    objects.push(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": labels },
        "spec": Value::Object(spec),
    }));
    if name != format!("{}-{}", plan.name, c.name) {
        notes.push(format!("named {name} ('_' is not allowed in Kubernetes names)"));
    }
    (objects, notes)
}

/// A Kubernetes probe for a health check. mcp probes a port on the node; the kubelet probes
/// the Pod, so a published host port becomes its container port.
fn kube_probe(c: &Component, check: &HealthCheck, notes: &mut Vec<String>) -> Value {
    let container_port = |port: u16| {
        c.ports.iter().filter_map(|p| parse_port(p).ok()).find(|p| p.host_port == Some(port)).map_or(port, |p| p.container_port)
    };
    let secs = |d: std::time::Duration| d.as_secs_f64().ceil().max(1.0) as u64;
    let mut probe = match &check.probe {
        Probe::Http { tls, port, path, ca, .. } => {
            if ca.is_some() {
                notes.push("the health check's ca is not carried over: the kubelet does not verify an HTTPS probe's certificate".into());
            }
            json!({ "httpGet": { "path": path, "port": container_port(*port), "scheme": if *tls { "HTTPS" } else { "HTTP" } } })
        }
        Probe::Tcp { port, .. } => json!({ "tcpSocket": { "port": container_port(*port) } }),
        Probe::Cmd(argv) => json!({ "exec": { "command": argv } }),
    };
    probe["periodSeconds"] = json!(secs(check.interval));
    probe["timeoutSeconds"] = json!(secs(check.timeout));
    probe["failureThreshold"] = json!(check.retries);
    if !check.start_period.is_zero() {
        probe["initialDelaySeconds"] = json!(secs(check.start_period));
    }
    probe
}

/// The service as Kubernetes YAML: per component an optional Secret (its environment) and a
/// Pod, documents separated by `---`.
pub fn to_kube(plan: &Plan) -> Result<String, String> {
    refuse_unikernels(plan)?;
    let mut out = format!("# mcp service {} as Kubernetes objects (mcp service export --format kube)\n", plan.name);
    for c in &plan.components {
        let (objects, notes) = kube_objects(plan, c);
        for n in notes {
            out.push_str(&format!("# {}/{}: {n}\n", plan.name, c.name));
        }
        for o in objects {
            out.push_str("---\n");
            yaml(&o, 0, &mut out);
        }
    }
    Ok(out)
}

/// Block-style YAML of a JSON value (strings as JSON strings: valid YAML double-quoted scalars).
fn yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                match val {
                    Value::Object(inner) if !inner.is_empty() => {
                        out.push_str(&format!("{pad}{}:\n", scalar_key(k)));
                        yaml(val, indent + 2, out);
                    }
                    Value::Array(items) if !items.is_empty() => {
                        out.push_str(&format!("{pad}{}:\n", scalar_key(k)));
                        yaml(val, indent, out);
                    }
                    _ => out.push_str(&format!("{pad}{}: {}\n", scalar_key(k), scalar(val))),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(_) => {
                        let mut inner = String::new();
                        yaml(item, indent + 2, &mut inner);
                        // "- " takes the place of the first line's indentation.
                        out.push_str(&format!("{pad}- {}", &inner[indent + 2..]));
                    }
                    _ => out.push_str(&format!("{pad}- {}\n", scalar(item))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => other.to_string(),
    }
}

fn scalar_key(k: &str) -> String {
    if k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')) {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

/// A systemd-quoted word for `Exec=` (double quotes, `\` and `"` escaped, `%` doubled).
fn systemd_word(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"").replace('%', "%%"))
}

/// Quadlet's health check runs a command inside the container (podman's, not mcp's agent):
/// a `cmd` check carries over, http/tcp are said in a comment.
fn quadlet_health(unit: String, check: &HealthCheck) -> String {
    let Some(at) = unit.find("\n[Service]") else { return unit };
    let (container, service) = unit.split_at(at);
    let lines = match &check.probe {
        Probe::Cmd(argv) => format!(
            "HealthCmd={}\nHealthInterval={}\nHealthTimeout={}\nHealthRetries={}\nHealthStartPeriod={}\n",
            serde_json::to_string(argv).expect("strings serialize").replace('%', "%%"),
            show_duration(check.interval),
            show_duration(check.timeout),
            check.retries,
            show_duration(check.start_period)
        ),
        _ => "# health: mcp's http/tcp check is not carried over (quadlet's HealthCmd runs inside the container: \
              a command such as curl -f, if the image has one)\n"
            .to_string(),
    };
    format!("{container}{lines}{service}")
}

/// Quadlet units: per component `<service>-<component>.container`, and when it has an
/// environment a `<service>-<component>.env` it reads (keep it 0600: it may hold secrets).
pub fn to_quadlet(plan: &Plan) -> Result<Vec<(String, String)>, String> {
    refuse_unikernels(plan)?;
    let mut files = Vec::new();
    for c in &plan.components {
        let name = crate::plan::instance_name(&plan.name, &c.name);
        let mut u = format!("# mcp service {} component {} (mcp service export --format quadlet)\n", plan.name, c.name);
        u.push_str(&format!("[Unit]\nDescription=mcp service {} component {}\n\n[Container]\n", plan.name, c.name));
        u.push_str(&format!("ContainerName={name}\nImage={}\n", c.image));
        for (k, v) in [("mcp.service", plan.name.clone()), ("mcp.component", c.name.clone()), ("mcp.spec", spec_hash(c))] {
            u.push_str(&format!("Label={k}={v}\n"));
        }
        for p in &c.ports {
            u.push_str(&format!("PublishPort={p}\n"));
        }
        for v in &c.volumes {
            u.push_str(&format!("Volume={v}\n"));
        }
        if let Some(n) = &c.network {
            u.push_str(&format!("Network={n}\n"));
        }
        if let Some(user) = &c.user {
            u.push_str(&format!("User={user}\n"));
        }
        if !c.env.is_empty() {
            // Relative: quadlet resolves it against the unit file's dir.
            u.push_str(&format!("EnvironmentFile={name}.env\n"));
            let env: String = c.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            files.push((format!("{name}.env"), env));
        }
        if !c.cmd.is_empty() {
            u.push_str(&format!("Exec={}\n", c.cmd.iter().map(|a| systemd_word(a)).collect::<Vec<_>>().join(" ")));
        }
        u.push_str("\n[Service]\n");
        let restart = match restart_policy(c.restart.as_deref()) {
            "Always" => "always",
            "OnFailure" => "on-failure",
            _ => "no",
        };
        u.push_str(&format!("Restart={restart}\n"));
        if let Some(t) = c.stop_timeout {
            u.push_str(&format!("TimeoutStopSec={t}\n"));
        }
        if let Some(check) = c.health_check() {
            u = quadlet_health(u, &check);
        }
        u.push_str("\n[Install]\nWantedBy=default.target\n");
        files.push((format!("{name}.container"), u));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PLAN_VERSION;

    fn plan() -> Plan {
        Plan {
            version: PLAN_VERSION,
            name: "shop".into(),
            node: None,
            active: true,
            components: vec![Component {
                name: "web".into(),
                image: "reg.example:8443/shop:v1".into(),
                restart: Some("on-failure:3".into()),
                ports: vec!["127.0.0.1:18080:8080".into(), "9000/udp".into()],
                volumes: vec!["/srv/shop:/data:ro".into()],
                cmd: vec!["server".into(), "--config".into(), "/data/app 100%.toml".into()],
                env: [("TOKEN".to_string(), "s3cret".to_string())].into(),
                user: Some("1000:1000".into()),
                network: Some("mcpnet".into()),
                stop_timeout: Some(5),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn kube_yaml_exact() {
        let y = to_kube(&plan()).unwrap();
        let hash = spec_hash(&plan().components[0]);
        let want = format!(
            r#"# mcp service shop as Kubernetes objects (mcp service export --format kube)
# shop/web: network "mcpnet" not carried over: a Pod has a network of its own (podman kube play --network mcpnet)
---
apiVersion: "v1"
kind: "Secret"
metadata:
  labels:
    mcp.component: "web"
    mcp.service: "shop"
    mcp.spec: "{hash}"
  name: "shop-web-env"
stringData:
  TOKEN: "s3cret"
type: "Opaque"
---
apiVersion: "v1"
kind: "Pod"
metadata:
  labels:
    mcp.component: "web"
    mcp.service: "shop"
    mcp.spec: "{hash}"
  name: "shop-web"
spec:
  containers:
  - args:
    - "server"
    - "--config"
    - "/data/app 100%.toml"
    envFrom:
    - secretRef:
        name: "shop-web-env"
    image: "reg.example:8443/shop:v1"
    name: "web"
    ports:
    - containerPort: 8080
      hostIP: "127.0.0.1"
      hostPort: 18080
      protocol: "TCP"
    - containerPort: 9000
      protocol: "UDP"
    securityContext:
      runAsGroup: 1000
      runAsUser: 1000
    volumeMounts:
    - mountPath: "/data"
      name: "vol0"
      readOnly: true
  restartPolicy: "OnFailure"
  terminationGracePeriodSeconds: 5
  volumes:
  - hostPath:
      path: "/srv/shop"
      type: "Directory"
    name: "vol0"
"#
        );
        assert_eq!(y, want);
        let mut vm = plan();
        vm.components[0].kind = Kind::Unikernel;
        assert!(to_kube(&vm).unwrap_err().contains("shop/web is a unikernel"));
    }

    #[test]
    fn quadlet_units_exact() {
        let files = to_quadlet(&plan()).unwrap();
        assert_eq!(files[0], ("shop-web.env".to_string(), "TOKEN=s3cret\n".to_string()));
        let hash = spec_hash(&plan().components[0]);
        assert_eq!(
            files[1].1,
            format!(
                "# mcp service shop component web (mcp service export --format quadlet)\n[Unit]\nDescription=mcp service shop component web\n\n\
                 [Container]\nContainerName=shop-web\nImage=reg.example:8443/shop:v1\nLabel=mcp.service=shop\nLabel=mcp.component=web\nLabel=mcp.spec={hash}\n\
                 PublishPort=127.0.0.1:18080:8080\nPublishPort=9000/udp\nVolume=/srv/shop:/data:ro\nNetwork=mcpnet\nUser=1000:1000\n\
                 EnvironmentFile=shop-web.env\nExec=\"server\" \"--config\" \"/data/app 100%%.toml\"\n\n[Service]\nRestart=on-failure\nTimeoutStopSec=5\n\n\
                 [Install]\nWantedBy=default.target\n"
            )
        );
    }

    #[test]
    fn health_checks_become_probes() {
        use crate::plan::Health;
        let mut p = plan();
        let timing = Health { interval: Some("1500ms".into()), timeout: Some("2s".into()), retries: Some(4), start_period: Some("10s".into()), ..Default::default() };
        p.components[0].health = Some(Health { http: Some("https://127.0.0.1:18080/healthz".into()), ca: Some("/srv/ca.pem".into()), ..timing.clone() });
        let y = to_kube(&p).unwrap();
        let probe = "      failureThreshold: 4\n      httpGet:\n        path: \"/healthz\"\n        port: 8080\n        scheme: \"HTTPS\"\n      \
                     initialDelaySeconds: 10\n      periodSeconds: 2\n      timeoutSeconds: 2\n";
        assert!(y.contains(&format!("    livenessProbe:\n{probe}")) && y.contains(&format!("    readinessProbe:\n{probe}")), "{y}");
        assert!(y.contains("# shop/web: the health check's ca is not carried over"), "{y}");
        // Without a restart policy, nothing restarts it: readiness only.
        p.components[0].restart = None;
        p.components[0].health = Some(Health { tcp: Some("127.0.0.1:9999".into()), ..timing.clone() });
        let y = to_kube(&p).unwrap();
        assert!(!y.contains("livenessProbe") && y.contains("      tcpSocket:\n        port: 9999\n"), "{y}");

        p.components[0].health = Some(Health { cmd: vec!["/bin/check".into(), "100%".into()], ..timing });
        let unit = &to_quadlet(&p).unwrap()[1].1;
        assert!(
            unit.contains("HealthCmd=[\"/bin/check\",\"100%%\"]\nHealthInterval=1500ms\nHealthTimeout=2s\nHealthRetries=4\nHealthStartPeriod=10s\n\n[Service]"),
            "{unit}"
        );
        assert!(to_kube(&p).unwrap().contains("      exec:\n        command:\n        - \"/bin/check\"\n"));
    }
}
