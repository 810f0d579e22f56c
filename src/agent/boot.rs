//! Boot order: the stages a node's services come back in (`[[boot.sequence]]` in agent.toml),
//! used by recovery ([`Agent::recover_node`](super::Agent::recover_node)) at the daemon's
//! start and on `mcp recover`. Each stage's services come back together; a required stage must
//! be up before the next begins, an optional one is noted and passed. Services in no stage
//! come last. The decisions here are pure: [`plan_stages`] orders, [`StageConfig`] checks.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plan::health::parse_duration;

/// How long a stage may take when its config says nothing.
pub const DEFAULT_STAGE_TIMEOUT: Duration = Duration::from_secs(300);
/// The stage of services no configured stage names.
pub const REST: &str = crate::proto::REST_STAGE;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// The stages, first to last.
    #[serde(default)]
    pub sequence: Vec<StageConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    pub name: String,
    /// Services of this stage; ones not deployed on this node are passed over.
    #[serde(default)]
    pub services: Vec<String>,
    /// How long the stage may take to be up (`"90s"`, `"2m"`; default 5m).
    #[serde(default)]
    pub timeout: Option<String>,
    /// A required stage that does not come up stops the later stages.
    #[serde(default)]
    pub required: bool,
}

impl BootConfig {
    /// Names unique and not [`REST`], each service in one stage at most, timeouts readable.
    pub fn check(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        let mut staged = BTreeSet::new();
        for s in &self.sequence {
            let valid = !s.name.is_empty()
                && s.name.len() <= 64
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !valid {
                return Err(format!(
                    "[[boot.sequence]] name {:?}: use 1-64 letters, digits, '-', '_' or '.'",
                    s.name
                ));
            }
            if s.name == REST {
                return Err(format!("[[boot.sequence]] name {REST:?} is taken by the services in no stage; pick another"));
            }
            if !names.insert(s.name.as_str()) {
                return Err(format!("[[boot.sequence]] name {:?} is used twice", s.name));
            }
            for service in &s.services {
                if !staged.insert(service.as_str()) {
                    return Err(format!("service {service:?} is in two [[boot.sequence]] stages (the second: {:?}); a service comes back once", s.name));
                }
            }
            if let Some(t) = &s.timeout {
                match parse_duration(t) {
                    Ok(d) if !d.is_zero() => {}
                    Ok(_) => {
                        return Err(format!(
                            "[[boot.sequence]] {:?}: timeout must be more than 0",
                            s.name
                        ))
                    }
                    Err(e) => {
                        return Err(format!(
                            "[[boot.sequence]] {:?}: timeout {t:?}: {e}",
                            s.name
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

/// One stage as recovery runs it: only services registered on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub name: String,
    pub services: Vec<String>,
    pub timeout: Duration,
    pub required: bool,
    /// Written in agent.toml (its progress is recorded as events), not the implicit [`REST`].
    pub configured: bool,
}

/// The stages, in order, of the `registered` services: each configured stage with the
/// services it names that are registered (in its order; a stage left with none is dropped),
/// then [`REST`] (optional) with every other registered service, if any.
pub fn plan_stages(config: &BootConfig, registered: &[String]) -> Vec<Stage> {
    let known: BTreeSet<&str> = registered.iter().map(String::as_str).collect();
    let mut staged = BTreeSet::new();
    let mut stages: Vec<Stage> = config
        .sequence
        .iter()
        .map(|s| {
            let services: Vec<String> = s
                .services
                .iter()
                .filter(|n| known.contains(n.as_str()))
                .cloned()
                .collect();
            staged.extend(services.iter().cloned());
            Stage {
                name: s.name.clone(),
                services,
                timeout: s
                    .timeout
                    .as_deref()
                    .and_then(|t| parse_duration(t).ok())
                    .unwrap_or(DEFAULT_STAGE_TIMEOUT),
                required: s.required,
                configured: true,
            }
        })
        .filter(|s| !s.services.is_empty())
        .collect();
    let rest: Vec<String> = registered
        .iter()
        .filter(|n| !staged.contains(*n))
        .cloned()
        .collect();
    if !rest.is_empty() {
        stages.push(Stage {
            name: REST.into(),
            services: rest,
            timeout: DEFAULT_STAGE_TIMEOUT,
            required: false,
            configured: false,
        });
    }
    stages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, services: &[&str], timeout: Option<&str>, required: bool) -> StageConfig {
        StageConfig {
            name: name.into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.map(Into::into),
            required,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn stages_keep_their_order_and_the_rest_comes_last() {
        let config = BootConfig {
            sequence: vec![
                stage("foundation", &["dns", "registry"], Some("90s"), true),
                stage("absent", &["elsewhere"], None, true),
                stage("core", &["db", "elsewhere2", "auth"], None, false),
            ],
        };
        let got = plan_stages(&config, &names(&["web", "auth", "dns", "db", "blog"]));
        let summary: Vec<(&str, Vec<&str>, u64, bool, bool)> = got
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.services.iter().map(String::as_str).collect(),
                    s.timeout.as_secs(),
                    s.required,
                    s.configured,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("foundation", vec!["dns"], 90, true, true),
                ("core", vec!["db", "auth"], 300, false, true),
                (REST, vec!["web", "blog"], 300, false, false),
            ]
        );
        assert_eq!(plan_stages(&BootConfig::default(), &[]), vec![]);
        assert_eq!(
            plan_stages(&BootConfig::default(), &names(&["a"]))[0].services,
            names(&["a"])
        );
    }

    #[test]
    fn bad_sequences_are_named() {
        let check = |sequence: Vec<StageConfig>| BootConfig { sequence }.check().unwrap_err();
        assert!(check(vec![
            stage("a", &["x"], None, true),
            stage("a", &[], None, false)
        ])
        .contains("used twice"));
        assert!(check(vec![
            stage("a", &["x"], None, true),
            stage("b", &["x"], None, false)
        ])
        .contains("\"x\" is in two"));
        assert!(check(vec![stage("rest", &[], None, true)]).contains("taken"));
        assert!(check(vec![stage("a b", &[], None, true)]).contains("letters"));
        assert!(check(vec![stage("a", &[], Some("soon"), true)]).contains("timeout \"soon\""));
        assert!(check(vec![stage("a", &[], Some("0s"), true)]).contains("more than 0"));
        assert_eq!(
            BootConfig {
                sequence: vec![stage("a", &["x"], Some("2m"), true)]
            }
            .check(),
            Ok(())
        );
    }
}
