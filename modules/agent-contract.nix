# What the NixOS module (modules/nixos.nix) hands to mcp-agent and to sshd, in plain builtins
# so that tests/nix.rs renders it with the real nix and feeds it to the real binaries: the
# agent.toml settings (`mcp-agent config --config`), the daemon's argv (the unit's ExecStart,
# run by the test), and an authorized_keys line with the forced command (used by a real sshd).
#
# Contract version 1. The Rust side: src/bin/mcp-agent.rs (flags), src/agent/config.rs
# (agent.toml keys, unknown keys refused). A flag or key changed on one side only fails
# tests/nix.rs `module_contract_*`.
let
  # A path sshd, systemd and a shell all take as one word.
  safePath = what: p:
    if builtins.isString p && builtins.match "/[A-Za-z0-9._/+@-]*" p != null then p
    else throw "${what}: `${toString p}` must be an absolute path of letters, digits and ._/+@- (it goes unquoted into ExecStart and authorized_keys)";
  # Key options may not break out of the line or the command="..." option.
  safeOption = o:
    if builtins.match "[^\n\r]*" o != null && builtins.match ".*command=.*" o == null then o
    else throw "services.mcp-agent.authorizedKeys: option `${o}` is refused (one line, and the forced command is the module's own)";
  bareKey = k:
    if builtins.match "(ssh|ecdsa|sk)-[A-Za-z0-9@.-]+ [A-Za-z0-9+/=]+( [^\n\r]*)?\n?" k != null then
      builtins.head (builtins.match "([^\n\r]*)\n?" k)
    else throw "services.mcp-agent.authorizedKeys: `${k}` is not a bare public key (\"ssh-ed25519 AAAA... comment\"); put options such as from=\"...\" in { key = ...; options = [ ... ]; }";
in
rec {
  version = 1;

  # agent.toml as an attribute set: the operator's settings, with [nanos] dir set to the
  # toolchain when one is given and [policy] set to `policy` when given; keys the settings
  # name themselves win.
  settings = { settings ? { }, nanos ? null, policy ? null }:
    let
      withNanos = if nanos == null then { } else { nanos = { dir = "${nanos}"; } // (settings.nanos or { }); };
      withPolicy = if policy == null then { } else { policy = policy // (settings.policy or { }); };
    in
    settings // withNanos // withPolicy;

  # The daemon: `mcp-agent serve`, its state dir and config.
  serveArgv = { agent, stateDir, config }:
    [ agent "serve" "--state-dir" (safePath "services.mcp-agent.stateDir" stateDir) "--config" "${config}" ];
  execStart = args: builtins.concatStringsSep " " (serveArgv args);

  # What an SSH session of a deploy key runs, whatever the client asked for: the same state
  # dir and config as the daemon (it forwards to the daemon's socket, or works alone).
  rpcCommand = { agent, stateDir, config }:
    "${agent} rpc --state-dir ${safePath "services.mcp-agent.stateDir" stateDir} --config ${config}";

  # One authorized_keys line: a bare key string, or { key; options ? [ ]; } whose options
  # (e.g. from="10.0.0.0/8") join the module's.
  authorizedKey = command: k:
    let
      key = if builtins.isString k then k else k.key;
      options = if builtins.isString k then [ ] else map safeOption (k.options or [ ]);
    in
    builtins.concatStringsSep "," ([ ''command="${command}"'' "restrict" ] ++ options) + " " + bareKey key;
}
