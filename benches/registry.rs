//! `cargo bench --bench registry`: deploys that pull from a private registry (docker-registry
//! on 127.0.0.1 with TLS and htpasswd, started here) against podman by hand.
//!
//! Prints one table: `mcp deploy` of a service whose ~20 MiB image is not on the node vs
//! `podman pull` + `podman run -d` of the same image, and a no-op deploy with
//! `pull = "always"` (one registry round trip) vs `podman pull` of an image already present.
//! Asserts nothing about speed.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/stats.rs"]
mod stats;

use std::process::{Command, Stdio};

use common::registry::Registry;
use common::*;
use stats::{median, ms, time};

const ROUNDS: usize = 5;




fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env = Env::new();
    env.write_config(&format!("{AGENT} rpc --state-dir {}", env.state.display()));
    let reg = Registry::start(&env.dir.path().join("registry"));
    let local = format!("localhost/{}-big:latest", env.prefix);
    // IMAGE plus 20 MiB of random bytes (they do not compress: the layer stays ~20 MiB).
    common::registry::derived_image(&local, "/blob", &common::registry::random_bytes(20 << 20));
    let image = reg.push(&local, &format!("mcp/{}-big:v1", env.prefix));
    // Nothing of it stays on the node: every round pulls all of it.
    podman_ok(&["rmi", &local]);
    let (auth, certs) = reg.client();
    let r = env.mcp_stdin(
        &["registry", "login", &reg.address(), "--ca-file", reg.ca.to_str().unwrap(), "-u", &reg.user, "--password-stdin"],
        &reg.password,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let port = free_port();
    let pull = |quiet: bool| {
        let st = Command::new("podman")
            .arg("pull")
            .arg("--authfile")
            .arg(&auth)
            .arg("--cert-dir")
            .arg(&certs)
            .arg(&image)
            .stdout(Stdio::null())
            .stderr(if quiet { Stdio::null() } else { Stdio::inherit() })
            .status()
            .unwrap();
        assert!(st.success());
    };

    let (mut raw, mut deploy, mut raw_noop, mut noop) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let name = format!("{}-raw{round}-web", env.prefix);
        raw.push(time(|| {
            pull(true);
            podman_run_http(&name, port, &image);
        }));
        podman_ok(&["rm", "-f", "-t", "0", &name]);
        // An image present: what `pull = "always"` costs when nothing moved.
        raw_noop.push(time(|| pull(true)));
        podman_ok(&["rmi", &image]);

        let svc = env.svc(&format!("r{round}"));
        env.define(&svc, &http_service(&svc, port, "pull = \"always\"").replace(IMAGE, &image));
        deploy.push(time(|| {
            env.ok(&["deploy", &svc, "--quiet"]);
        }));
        noop.push(time(|| {
            let r = env.ok(&["deploy", &svc, "--quiet"]);
            assert!(r.stdout.contains("unchanged"), "{}", r.stdout);
        }));
        podman_ok(&["rm", "-f", "-t", "0", &format!("{svc}-web")]);
        podman_ok(&["rmi", &image]);
    }
    let (r, d, rn, n) = (median(raw), median(deploy.clone()), median(raw_noop), median(noop));
    println!("registry benchmark: a ~20 MiB image from docker-registry on 127.0.0.1 (TLS, htpasswd), median of {ROUNDS} (ms)");
    println!("{:<58} {:>10} {:>10}", "what", "median", "ratio");
    println!("{:<58} {:>10} {:>10}", "podman pull + podman run -d (by hand)", ms(r), "1.00x");
    println!("{:<58} {:>10} {:>9.2}x", "mcp deploy, image not on the node (target <= 1.1x)", ms(d), d.as_secs_f64() / r.as_secs_f64());
    println!("{:<58} {:>10} {:>10}", "podman pull, image present", ms(rn), "1.00x");
    println!("{:<58} {:>10} {:>9.2}x", "mcp deploy, pull = \"always\", nothing moved (no-op)", ms(n), n.as_secs_f64() / rn.as_secs_f64());
    println!("deploy samples: {:?}", deploy.iter().map(|d| ms(*d)).collect::<Vec<_>>());
    let _ = env.mcp(&["registry", "logout", &reg.address()]);
}
