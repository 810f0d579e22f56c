//! The wire protocol between `mcp` and `mcp-agent rpc`: JSON lines over stdio (a child's pipes
//! locally, an SSH exec channel remotely). Shared by both ends.
//!
//! Client -> agent: `{"id":1,"method":"deploy","params":{...}}`.
//! Agent -> client: zero or more `{"id":1,"progress":{...}}`, then exactly one of
//! `{"id":1,"result":...}` or `{"id":1,"error":{"code":"...","message":"..."}}`.
//! The first request of a session must be `hello`, which checks [`PROTOCOL_VERSION`].

pub mod lines;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plan::{FieldError, Plan, Target};

/// Bump on any incompatible change of methods, params or results.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub method: String,
    #[serde(default)]
    pub params: Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
    /// A line of output, streamed by `logs` before its result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogLine>,
}

/// One line a component printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub component: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub line: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsParams {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// Only the last N lines (of each component).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u32>,
    /// Keep streaming new lines until the client goes away.
    #[serde(default)]
    pub follow: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsResult {
    pub lines: u64,
}

/// A step of long work, streamed before the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    pub message: String,
}

/// Error codes: what went wrong, for scripts and for the CLI's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The two ends speak different protocol versions.
    ProtocolMismatch,
    /// The request was not understood (bad JSON, unknown method, bad params, no hello).
    BadRequest,
    /// The plan failed validation; nothing was touched.
    InvalidPlan,
    /// No such service (or component) in the agent's registry.
    NotFound,
    /// A runtime operation failed and the previous state was restored.
    RolledBack,
    /// A runtime operation failed (podman could not be run or returned an error).
    Runtime,
    /// The agent's registry (SQLite) failed.
    Registry,
    /// A name conflict with something mcp does not manage.
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
    /// Field errors for `invalid_plan`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into(), fields: Vec::new() }
    }
}

// ---- methods ----

pub const HELLO: &str = "hello";
pub const DEPLOY: &str = "deploy";
pub const STOP: &str = "stop";
pub const START: &str = "start";
pub const RESTART: &str = "restart";
pub const LIST: &str = "list";
pub const PS: &str = "ps";
pub const STATUS: &str = "status";
/// The plan the agent holds for a service.
pub const SHOW: &str = "show";
/// Stop and delete a service's containers and forget it (sync --prune).
pub const REMOVE: &str = "remove";
/// Take over containers named `<service>-*` that mcp did not create, without restarting them.
pub const ADOPT: &str = "adopt";
/// Bring every service back as the registry holds it (after a lost podman database, a reboot
/// that lost containers): missing components recreated, exited ones started, whatever their
/// restart policy; nothing else changes. Added in protocol 1 like `login`: an older agent
/// answers "unknown method".
pub const RECOVER: &str = "recover";
/// push: begin, chunks, end (atomic rename after the hash checks).
pub const PUT_BEGIN: &str = "put_begin";
pub const PUT_CHUNK: &str = "put_chunk";
pub const PUT_END: &str = "put_end";
/// pull: begin, chunks by offset, end.
pub const GET_BEGIN: &str = "get_begin";
pub const GET_CHUNK: &str = "get_chunk";
pub const GET_END: &str = "get_end";
/// A service's output: `log` lines, then the result; with `follow` until the client goes away.
pub const LOGS: &str = "logs";
/// Registry credentials on the node (added in protocol 1; an older agent answers "unknown
/// method").
pub const REGISTRY_LOGIN: &str = "registry_login";
pub const REGISTRY_LOGOUT: &str = "registry_logout";
pub const REGISTRY_LIST: &str = "registry_list";

/// `registry_login`: the password travels only inside this request (over the SSH channel or
/// the local pipe) and reaches podman on stdin; Debug never shows it.
#[derive(Clone, Serialize, Deserialize)]
pub struct RegistryLoginParams {
    pub registry: String,
    pub username: String,
    pub password: String,
    /// PEM of the CA that signed the registry's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for RegistryLoginParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLoginParams")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"***")
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| format!("{} bytes", p.len())))
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryParams {
    pub registry: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryLogoutResult {
    pub registry: String,
    /// False when the node had no credentials for it.
    pub logged_out: bool,
}

/// A registry the node has credentials for (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEntry {
    pub registry: String,
    /// A CA for it is in podman's certs dir.
    pub ca: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryListResult {
    pub registries: Vec<RegistryEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutBeginParams {
    pub service: String,
    /// Relative to the first volume dir, or absolute inside one; default `name`.
    #[serde(default)]
    pub path: Option<String>,
    /// The file's own name (used when `path` is absent or a directory).
    pub name: String,
    pub mode: u32,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutChunkParams {
    pub token: u64,
    /// Base64.
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutEndParams {
    pub token: u64,
    /// Hex SHA-256 of the whole file.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetBeginParams {
    pub service: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetChunkParams {
    pub token: u64,
    pub offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenParams {
    pub token: u64,
}

/// What a transferred file's mode may carry, both ways: permission bits only, never
/// setuid/setgid/sticky.
pub const MODE_BITS: u32 = 0o777;

/// `get_end`: the hash of what the client received (checked against what was served; an
/// older client sends none).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetEndParams {
    pub token: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// An open transfer: where, how big, which mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferInfo {
    pub token: u64,
    pub path: String,
    pub size: u64,
    pub mode: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloParams {
    pub protocol: u32,
    pub client: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloResult {
    pub protocol: u32,
    pub agent: String,
    pub plan_version: u32,
    /// Answered by the `mcp-agent serve` daemon (through `mcp-agent rpc`), not by a
    /// standalone `mcp-agent rpc`.
    #[serde(default)]
    pub daemon: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployParams {
    pub plan: Plan,
    /// Only this component; the others are left exactly as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
}

/// `plan`: what a deploy of `DeployParams` would do, nothing done.
pub const PLAN: &str = "plan";
/// `deploy_many`: several services' plans for this node ([`DeployManyParams`]), one answer
/// each ([`DeployManyItem`]); each service all-or-nothing on its own.
pub const DEPLOY_MANY: &str = "deploy_many";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployManyParams {
    pub plans: Vec<Plan>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployManyItem {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ApplyResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

/// `plan_many`: the same for several services ([`PlanManyParams`]), one answer each.
pub const PLAN_MANY: &str = "plan_many";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanManyParams {
    pub plans: Vec<Plan>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanManyItem {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<PlanResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

/// A field that a replace would change (`env.KEY` values are always "***").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDiff {
    pub field: String,
    /// Compact JSON of the deployed value; absent when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
}

/// What a deploy would do to one component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedChange {
    pub component: String,
    /// create, replace, start, stop, restart, remove or keep.
    pub action: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diff: Vec<FieldDiff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanResult {
    pub service: String,
    pub changes: Vec<PlannedChange>,
}

impl PlanResult {
    /// Anything but "keep".
    pub fn pending(&self) -> usize {
        self.changes.iter().filter(|c| c.action != "keep").count()
    }
}

/// What happened to one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Created,
    Replaced,
    Started,
    Stopped,
    Restarted,
    Removed,
    Adopted,
    Unchanged,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Replaced => "replaced",
            ChangeKind::Started => "started",
            ChangeKind::Stopped => "stopped",
            ChangeKind::Restarted => "restarted",
            ChangeKind::Removed => "removed",
            ChangeKind::Adopted => "adopted",
            ChangeKind::Unchanged => "unchanged",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub component: String,
    pub change: ChangeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
}

/// Result of deploy, stop, start and restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResult {
    pub service: String,
    pub changes: Vec<Change>,
}

impl ApplyResult {
    pub fn changed(&self) -> bool {
        self.changes.iter().any(|c| c.change != ChangeKind::Unchanged)
    }
}

/// The boot stage of services agent.toml puts in no stage (always the last).
pub const REST_STAGE: &str = "rest";

/// What `recover` did on a node: its boot stages in the order they ran, and service by
/// service (in stage order) what was done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverResult {
    #[serde(default)]
    pub stages: Vec<RecoveredStage>,
    pub services: Vec<RecoveredService>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveredStage {
    pub name: String,
    pub required: bool,
    pub state: StageState,
    /// Why it failed or did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub services: Vec<String>,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    /// Every service of it came back (or was as registered already) within its timeout.
    Up,
    Failed,
    /// Not run: a required stage before it failed.
    Blocked,
}

impl StageState {
    pub fn as_str(self) -> &'static str {
        match self {
            StageState::Up => "up",
            StageState::Failed => "failed",
            StageState::Blocked => "blocked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveredService {
    pub service: String,
    /// The boot stage it came back in.
    #[serde(default)]
    pub stage: String,
    pub changes: Vec<Change>,
    /// Why this service could not be brought back (the others still were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub type TargetParams = Target;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceParams {
    pub service: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// How many recent events per service.
    #[serde(default = "default_events")]
    pub events: u32,
    /// Ask each container's registry what its tag points at now (a round trip per image).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub check_registry: bool,
}

/// What a container's tag points at in its registry now (`status --check-registry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagCheck {
    /// The digest the tag points at now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// It differs from the digest the container runs.
    pub moved: bool,
    /// Why the registry could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn default_events() -> u32 {
    10
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub name: String,
    pub active: bool,
    pub components: Vec<ComponentSummary>,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentSummary {
    pub name: String,
    pub kind: String,
    pub image: String,
    pub desired: String,
    pub spec: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListResult {
    pub services: Vec<ServiceSummary>,
}

/// One runtime object as the runtime sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsEntry {
    pub service: String,
    pub component: String,
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: String,
    /// Seconds since start, when running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    pub spec: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// The static address the agent assigned it (`A.B.C.D/N`: VMs on isolated networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The registry digest of the image it runs (`sha256:...`), when the agent knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Its routes with their assigned ports (`rest 127.0.0.1:10001 -> api.example:8443 (l7)`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// `starting`, `healthy` or `unhealthy`, when it has a health check the daemon probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PsResult {
    pub containers: Vec<PsEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    /// Unix milliseconds.
    pub time: i64,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub desired: String,
    pub spec: String,
    /// `running`, `exited`, ... or `missing`.
    pub observed: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_spec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    /// Why observed differs from desired, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
    /// `missing`, `stopped`, `running`, `spec`, `orphan` or `unmanaged`, with `drift`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_kind: Option<String>,
    /// How often the agent's monitor brought it back (restart policy).
    #[serde(default)]
    pub repairs: u32,
    /// Unix milliseconds of the last repair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_repair: Option<i64>,
    /// The static address the agent assigned it (`A.B.C.D/N`: VMs on isolated networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The registry digest of the image it runs (`sha256:...`), when the agent knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// With `check_registry`: what its tag points at now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<TagCheck>,
    /// Its routes with their assigned ports, as in [`PsEntry::routes`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// `starting`, `healthy` or `unhealthy`, when it has a health check the daemon probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Why it is not healthy: the last failed probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub active: bool,
    pub components: Vec<ComponentStatus>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResult {
    pub services: Vec<ServiceStatus>,
}
