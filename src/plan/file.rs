//! Service definition files: the seed's TOML format, loaded into a validated [`Plan`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{validate, Component, Plan, PlanErrors, PLAN_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read service definition {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot parse service definition {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: unsupported service definition format; expected a .toml or .nix file")]
    Format { path: PathBuf },
    #[error("{path} is a Nix service definition, but nix-instantiate cannot be run ({why}); install Nix (e.g. apt-get install nix-bin) or write the service as TOML")]
    NixMissing { path: PathBuf, why: String },
    #[error("{message}")]
    Nix { path: PathBuf, message: String },
    #[error("{path} defines {count} services ({names}); deploy them with `mcp sync`, or put one service per file")]
    Fleet { path: PathBuf, count: usize, names: String },
    #[error(transparent)]
    Invalid(#[from] PlanErrors),
}

/// The TOML file as written by operators: the plan minus `version` (optional, defaults to the
/// current one) so that seed-era files load unchanged.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    version: Option<u32>,
    name: String,
    node: Option<String>,
    #[serde(default = "super::yes")]
    active: bool,
    #[serde(default)]
    components: Vec<Component>,
    /// The service's source dir under `[build] workspace` (mcp.toml): for `mcp build`.
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    build: Option<BuildSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildSection {
    /// Image name -> Dockerfile (relative to the service's `path`).
    #[serde(default)]
    images: std::collections::BTreeMap<String, String>,
}

/// What `mcp build` needs of a service file (not part of the plan: the node never sees it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    pub path: Option<String>,
    pub images: Vec<(String, String)>,
}

/// The `path` and `[build.images]` of a TOML service file, checked: relative paths that stay
/// below the workspace (no `..`).
pub fn build_info(text: &str, source: &Path) -> Result<BuildInfo, LoadError> {
    let file: ServiceFile =
        toml::from_str(text).map_err(|e| LoadError::Parse { path: source.to_path_buf(), message: toml_error(text, &e) })?;
    let below = |what: &str, p: &str| -> Result<(), LoadError> {
        let bad = p.is_empty() || Path::new(p).is_absolute() || Path::new(p).components().any(|c| matches!(c, std::path::Component::ParentDir));
        if bad {
            return Err(LoadError::Parse { path: source.to_path_buf(), message: format!("{what} {p:?} must be a relative path without '..'") });
        }
        Ok(())
    };
    if let Some(p) = &file.path {
        below("path", p)?;
    }
    let images: Vec<(String, String)> = file.build.unwrap_or_default().images.into_iter().collect();
    for (name, dockerfile) in &images {
        below(&format!("[build.images] {name}"), dockerfile)?;
    }
    Ok(BuildInfo { path: file.path, images })
}

/// The service file as written out (`service export`): the plan minus `version`.
#[derive(serde::Serialize)]
struct ServiceFileOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    active: bool,
    components: &'a [Component],
}

/// Render a plan in the seed's TOML format; [`parse_service_toml`] reads it back unchanged.
pub fn to_toml(plan: &Plan) -> String {
    let out = ServiceFileOut { name: &plan.name, node: plan.node.as_deref(), active: plan.active, components: &plan.components };
    toml::to_string(&out).expect("plans render as TOML")
}

/// A TOML error as position and reason only: never the source line, which may carry a secret
/// (a typo inside `env = { ... }` would otherwise print the password beside it).
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let reason = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
            format!("line {line}, column {column}: {reason}")
        }
        None => reason.to_string(),
    }
}

/// Parse (not yet validate) TOML text into a plan.
pub fn parse_service_toml(text: &str, source: &Path) -> Result<Plan, LoadError> {
    let file: ServiceFile =
        toml::from_str(text).map_err(|e| LoadError::Parse { path: source.to_path_buf(), message: toml_error(text, &e) })?;
    Ok(Plan {
        version: file.version.unwrap_or(PLAN_VERSION),
        name: file.name,
        node: file.node,
        active: file.active,
        components: file.components,
    })
}

/// Read, parse and validate a service definition file that defines one service.
pub fn load_service_file(path: &Path) -> Result<Plan, LoadError> {
    let mut plans = load_service_files(path)?;
    if plans.len() != 1 {
        let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
        return Err(LoadError::Fleet { path: path.to_path_buf(), count: plans.len(), names: names.join(", ") });
    }
    Ok(plans.remove(0))
}

/// Every service a definition file defines, validated: one for TOML, one or more (a fleet)
/// for Nix.
pub fn load_service_files(path: &Path) -> Result<Vec<Plan>, LoadError> {
    let plans = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => {
            let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
            vec![parse_service_toml(&text, path)?]
        }
        Some("nix") => super::nix::eval_file(path)?,
        _ => return Err(LoadError::Format { path: path.to_path_buf() }),
    };
    for plan in &plans {
        validate(plan, &path.display().to_string())?;
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_example_loads() {
        let text = r#"
name = "myservice"
node = "rift"
active = true

[[components]]
name = "api"
image = "mcr.svc.mcp.metacircular.net:8443/myservice:v1.0.0"
network = "mcpnet"
user = "0:0"
restart = "unless-stopped"
ports = ["127.0.0.1:8443:8443"]
volumes = ["/srv/myservice:/srv/myservice"]
cmd = ["server", "--config", "/srv/myservice/myservice.toml"]
"#;
        let plan = parse_service_toml(text, Path::new("s.toml")).unwrap();
        validate(&plan, "s.toml").unwrap();
        assert_eq!(plan.version, PLAN_VERSION);
        assert_eq!(plan.node.as_deref(), Some("rift"));
        assert_eq!(plan.components[0].cmd.len(), 3);
    }

    #[test]
    fn toml_roundtrip() {
        let mut comp = Component { name: "a".into(), image: "i".into(), cmd: vec!["x".into()], ..Default::default() };
        comp.env.insert("K".into(), "v".into());
        comp.ports = vec!["127.0.0.1:1:2".into()];
        let plan = Plan { version: PLAN_VERSION, name: "s".into(), node: Some("n".into()), active: false, components: vec![comp] };
        let text = to_toml(&plan);
        assert!(!text.contains("version"), "{text}");
        assert_eq!(parse_service_toml(&text, Path::new("x.toml")).unwrap(), plan);
    }

    #[test]
    fn unknown_field_names_file_and_field() {
        let err = parse_service_toml("name = \"a\"\n[[components]]\nname = \"b\"\nimage = \"i\"\nport = [\"80\"]\n", Path::new("svc/a.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("svc/a.toml") && err.contains("unknown field `port`"), "{err}");
    }
}
