# services.mcp-agent: the node side of mcp. Runs `mcp-agent serve` (drift monitor, restart
# policy, alerts) as a hardened systemd service, as its own user, with rootless podman and
# qemu available; optional authorized keys get `command="mcp-agent rpc",restrict`.
{ self }:
{ config, lib, pkgs, ... }:
let
  cfg = config.services.mcp-agent;
  inherit (lib) mkEnableOption mkOption mkIf types;
  agent = "${cfg.package}/bin/mcp-agent";
  rpc = "${agent} rpc --state-dir ${cfg.stateDir}";
  toml = pkgs.formats.toml { };
  # What the operator set, with [nanos] dir pointing at the toolchain unless set explicitly.
  settings = lib.recursiveUpdate (lib.optionalAttrs (cfg.nanos != null) { nanos.dir = "${cfg.nanos}"; }) cfg.settings;
in
{
  options.services.mcp-agent = {
    enable = mkEnableOption "the mcp node agent";
    package = mkOption {
      type = types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.mcp-agent;
      description = "The package providing mcp-agent.";
    };
    user = mkOption { type = types.str; default = "mcp"; description = "User the agent (and its containers and VMs) run as."; };
    group = mkOption { type = types.str; default = "mcp"; description = "Group of the agent's socket (mode 0660)."; };
    stateDir = mkOption { type = types.path; default = "/var/lib/mcp-agent"; description = "Registry, socket, VM dirs."; };
    authorizedKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "SSH public keys that may deploy; each is restricted to `mcp-agent rpc`.";
    };
    qemu = mkOption { type = types.bool; default = true; description = "Install QEMU for unikernel components."; };
    nanos = mkOption {
      type = types.nullOr types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.nanos or null;
      defaultText = lib.literalExpression "self.packages.\${system}.nanos (x86_64-linux), else null";
      description = "The Nanos toolchain (kernel.img, boot.img, mkfs) program-form unikernels are built with; sets [nanos] dir.";
    };
    settings = mkOption {
      type = toml.type;
      default = { };
      description = "agent.toml: [podman], [qemu], [nanos], [monitor], [events], [alert].";
      example = { monitor.sweep_secs = 30; alert.command = [ "/run/current-system/sw/bin/logger" "-t" "mcp" ]; };
    };
  };

  config = mkIf cfg.enable {
    users.groups.${cfg.group} = { };
    users.users.${cfg.user} = {
      isNormalUser = true;
      group = cfg.group;
      home = cfg.stateDir;
      createHome = true;
      # Rootless podman needs subordinate ids and a lingering user.
      autoSubUidGidRange = true;
      linger = true;
      openssh.authorizedKeys.keys = map (k: ''command="${rpc}",restrict ${k}'') cfg.authorizedKeys;
    };
    virtualisation.podman.enable = true;
    environment.systemPackages = [ cfg.package pkgs.podman ] ++ lib.optional cfg.qemu pkgs.qemu_kvm;

    systemd.services.mcp-agent = {
      description = "mcp agent: keeps this node's services as deployed";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      path = [ pkgs.podman pkgs.iproute2 pkgs.coreutils "/run/wrappers" ] ++ lib.optional cfg.qemu pkgs.qemu_kvm;
      environment.MCP_AGENT_STATE = cfg.stateDir;
      serviceConfig = {
        ExecStart = "${agent} serve --state-dir ${cfg.stateDir} --config ${toml.generate "agent.toml" settings}";
        User = cfg.user;
        Group = cfg.group;
        Restart = "on-failure";
        RestartSec = 2;
        KillMode = "process"; # containers and VMs outlive agent restarts
        UMask = "0077";
        NoNewPrivileges = false; # rootless podman uses newuidmap (setuid)
        ProtectSystem = "strict";
        ReadWritePaths = [ cfg.stateDir ];
        ProtectHome = "read-only";
        PrivateTmp = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = false; # podman manages cgroups
        RestrictSUIDSGID = false;
        LockPersonality = true;
        RestrictRealtime = true;
        SystemCallArchitectures = "native";
      };
    };
  };
}
