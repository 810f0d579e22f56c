# services.mcp-agent: the node side of mcp. Runs `mcp-agent serve` (drift monitor, restart
# policy, alerts) as a system service of its own lingering user, whose rootless podman and
# QEMU run the workloads; deploy keys get `command="mcp-agent rpc ...",restrict`.
#
# One podman for everyone: the daemon, an SSH session of a deploy key (forced command) and an
# admin (`mcp-podman`) all run podman as that user with HOME = stateDir (storage under
# stateDir/.local/share/containers) and XDG_RUNTIME_DIR = /run/user/<uid> (runroot, the user's
# systemd bus for cgroups), the way pam_systemd sets up an SSH login of that user. So the unit
# pins the uid, starts after user@<uid>.service and keeps no mount-namespace hardening: rootless
# podman's pause process and conmon outlive the process that started them, and must see the
# same /run, /tmp and /home as an SSH session does (see README "With Nix").
# The strings handed to the binaries come from ./agent-contract.nix (tested against them).
{ self }:
{ config, lib, pkgs, ... }:
let
  cfg = config.services.mcp-agent;
  contract = import ./agent-contract.nix;
  inherit (lib) mkEnableOption mkOption mkIf types;
  isX86 = pkgs.stdenv.hostPlatform.isx86_64;
  podman = config.virtualisation.podman.package;
  runtimeDir = "/run/user/${toString cfg.uid}";
  configFile = (pkgs.formats.toml { }).generate "agent.toml" (contract.settings { inherit (cfg) settings nanos policy; });
  paths = { agent = "${cfg.package}/bin/mcp-agent"; inherit (cfg) stateDir; config = configFile; };
  # podman as the agent's user, in the daemon's environment (for admins and the VM tests).
  # The environment every podman of the agent's user gets (the daemon's unit sets the same).
  podmanEnv = { HOME = cfg.stateDir; XDG_RUNTIME_DIR = runtimeDir; DBUS_SESSION_BUS_ADDRESS = "unix:path=${runtimeDir}/bus"; };
  mcpPodman = pkgs.writeShellScriptBin "mcp-podman" ''
    exec ${pkgs.util-linux}/bin/runuser -u ${cfg.user} -- ${pkgs.coreutils}/bin/env -i -C ${cfg.stateDir} \
      PATH=/run/wrappers/bin:/run/current-system/sw/bin ${lib.concatStringsSep " " (lib.mapAttrsToList (k: v: "${k}=${v}") podmanEnv)} \
      ${podman}/bin/podman "$@"
  '';
in
{
  options.services.mcp-agent = {
    enable = mkEnableOption "the mcp node agent";
    package = mkOption {
      type = types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.mcp-agent;
      defaultText = lib.literalExpression "mcp.packages.\${system}.mcp-agent";
      description = "The package providing mcp-agent.";
    };
    user = mkOption { type = types.str; default = "mcp"; description = "User the agent, its containers (rootless podman) and its VMs run as."; };
    group = mkOption { type = types.str; default = "mcp"; description = "Group of the agent's socket (mode 0660)."; };
    uid = mkOption {
      type = types.ints.between 1000 60000;
      # Outside 1000-29999, where NixOS picks uids for normal users on its own (and past the
      # nixbld users at 30000-30032): a user added later never takes it first.
      default = 34947;
      description = ''
        The agent user's uid, pinned: the unit needs /run/user/<uid> (its XDG_RUNTIME_DIR) at
        evaluation time, and rootless podman's storage, subordinate id mapping and every file
        under the state dir belong to it. NEVER change it once podman has run as this user: a
        uid change leaves podman's database and storage owned by the old uid (an outage of the
        system mcp descends from began that way). On a node where the user already exists, set
        this to its uid (`id -u mcp`); NixOS never changes an existing user's uid.
      '';
    };
    stateDir = mkOption {
      type = types.strMatching "/[A-Za-z0-9._/+@-]*";
      default = "/var/lib/mcp-agent";
      description = "The user's home: registry, socket, VM dirs, podman storage (.local/share/containers).";
    };
    authorizedKeys = mkOption {
      type = types.listOf (types.either types.singleLineStr (types.submodule {
        options.key = mkOption { type = types.singleLineStr; description = "A bare public key."; };
        options.options = mkOption { type = types.listOf types.singleLineStr; default = [ ]; description = "authorized_keys options, e.g. from=\"10.0.0.0/8\"."; };
      }));
      default = [ ];
      example = lib.literalExpression ''[ "ssh-ed25519 AAAA... ops@laptop" { key = "ssh-ed25519 AAAA... ci"; options = [ "from=\"10.0.0.0/8\"" ]; } ]'';
      description = "SSH public keys that may deploy; each is restricted to `mcp-agent rpc` (forced command, `restrict`).";
    };
    qemu = mkOption {
      type = types.bool;
      default = isX86;
      defaultText = lib.literalExpression "pkgs.stdenv.hostPlatform.isx86_64";
      description = "QEMU for unikernel components (x86_64 guests: x86_64 nodes only).";
    };
    isolatedNetworks = mkOption {
      type = types.bool;
      default = cfg.qemu;
      defaultText = lib.literalExpression "config.services.mcp-agent.qemu";
      description = "Let the agent create bridges and taps for VMs on isolated networks (CAP_NET_ADMIN as an ambient capability of the unit).";
    };
    nanos = mkOption {
      type = types.nullOr types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.nanos or null;
      defaultText = lib.literalExpression "mcp.packages.\${system}.nanos (x86_64-linux), else null";
      description = "The Nanos toolchain (kernel.img, boot.img, mkfs) program-form unikernels are built with; sets [nanos] dir.";
    };
    policy = mkOption {
      type = (pkgs.formats.toml { }).type;
      # Rootless podman: a container's root is the agent's user on the host, so root_user
      # stays allowed (images mostly run as root); what a key could reach is what that user
      # can, narrowed further to /srv for volumes and the host network refused.
      default = { volume_roots = [ "/srv" ]; host_network = false; vm_file_roots = [ "/nix/store" "/srv" ]; };
      description = ''
        agent.toml [policy]: what a deploy key may ask of this node (volume roots, root as the
        container user, the host network, unikernels and where their files come from, registry
        logins). `{ }` allows everything valid.
      '';
    };
    settings = mkOption {
      type = (pkgs.formats.toml { }).type;
      default = { };
      description = "agent.toml: [podman], [qemu], [nanos], [monitor], [events], [alert] (unknown keys stop the agent at start).";
      example = { monitor.sweep_secs = 30; alert.command = [ "/run/current-system/sw/bin/logger" "-t" "mcp" ]; };
    };
  };

  config = mkIf cfg.enable {
    assertions = [{
      assertion = cfg.qemu -> isX86;
      message = "services.mcp-agent.qemu: mcp runs x86_64 guests with qemu-system-x86_64; set it to false on ${pkgs.stdenv.hostPlatform.system}.";
    }];
    users.groups.${cfg.group} = { };
    users.users.${cfg.user} = {
      # A login shell for the forced command; isNormalUser also allots subordinate uid/gid
      # ranges (rootless podman's user namespace).
      isNormalUser = true;
      inherit (cfg) uid group;
      home = cfg.stateDir;
      createHome = true;
      linger = true;
      # systemd-journal: `podman logs` of containers logging to journald; kvm: /dev/kvm.
      extraGroups = [ "systemd-journal" ] ++ lib.optional cfg.qemu "kvm";
      openssh.authorizedKeys.keys = map (contract.authorizedKey (contract.rpcCommand paths)) cfg.authorizedKeys;
    };
    virtualisation.podman.enable = true;
    environment.systemPackages = [ cfg.package mcpPodman ] ++ lib.optional cfg.qemu pkgs.qemu_kvm;
    # For admins: `mcp-agent config --config /etc/mcp-agent/agent.toml`.
    environment.etc."mcp-agent/agent.toml".source = configFile;

    systemd.services.mcp-agent = {
      description = "mcp agent: keeps this node's services as deployed";
      wantedBy = [ "multi-user.target" ];
      # The user's manager (started at boot for a lingering user) owns /run/user/<uid>, the
      # bus podman's systemd cgroup manager talks to, and the scopes containers run in.
      # Wants, not Requires: `loginctl terminate-user` must not stop the agent for good.
      wants = [ "network-online.target" "linger-users.service" "user@${toString cfg.uid}.service" ];
      after = [ "network-online.target" "linger-users.service" "user@${toString cfg.uid}.service" ];
      path = [ podman pkgs.iproute2 pkgs.coreutils "/run/wrappers" ] ++ lib.optional cfg.qemu pkgs.qemu_kvm;
      environment = podmanEnv // { MCP_AGENT_STATE = cfg.stateDir; };
      # A crash loop at boot keeps retrying instead of ending in "failed" after 5 starts.
      startLimitIntervalSec = 0;
      serviceConfig = {
        ExecStart = contract.execStart paths;
        User = cfg.user;
        Group = cfg.group;
        Restart = "on-failure";
        RestartSec = 5;
        KillMode = "process"; # VMs outlive agent restarts (containers live in the user's own scopes)
        UMask = "0077";
        # newuidmap/newgidmap are setuid wrappers: no NoNewPrivileges, and none of the options
        # that imply it for a User= unit (seccomp-based: LockPersonality, RestrictRealtime,
        # SystemCallArchitectures, ProtectKernel*, MemoryDenyWriteExecute, SystemCallFilter ...).
        NoNewPrivileges = false;
        RestrictSUIDSGID = false;
        AmbientCapabilities = lib.optional cfg.isolatedNetworks "CAP_NET_ADMIN";
      };
    };
  };
}
