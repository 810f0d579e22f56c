# tests/nix.rs evaluates the real modules/nixos.nix with this stand-in for nixpkgs' `lib` and
# `pkgs` (nixpkgs cannot be fetched here). The stand-in applies option defaults and `mkIf`
# and nothing else of the module system: no type checks, no merging with other modules. What
# the module hands to the binaries (agent.toml's value, ExecStart, the unit's environment,
# authorized_keys lines) comes out as plain values for the real binaries to take.
#   given      services.mcp-agent values the test sets (the rest: the module's defaults)
#   agentDir   a dir with bin/mcp-agent (the package the module's default would name)
#   configPath where the test writes the TOML rendering of `settings` (formats.toml's file)
{ given, agentDir, nanosDir ? null, configPath, system ? "x86_64-linux" }:
let
  mkOption = o: o;
  lib = {
    inherit mkOption;
    mkEnableOption = what: mkOption { default = false; description = "Whether to enable ${what}."; };
    mkIf = cond: value: if cond then value else { };
    concatStringsSep = builtins.concatStringsSep;
    mapAttrsToList = f: attrs: map (n: f n attrs.${n}) (builtins.attrNames attrs);
    optional = cond: x: if cond then [ x ] else [ ];
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    types = let t = name: { inherit name; }; in {
      package = t "package"; str = t "str"; bool = t "bool"; singleLineStr = t "singleLineStr";
      ints.between = lo: hi: t "intBetween"; strMatching = re: t "strMatching";
      listOf = e: t "listOf"; either = a: b: t "either"; submodule = m: t "submodule"; nullOr = e: t "nullOr";
    };
  };
  pkgs = {
    stdenv.hostPlatform = { inherit system; isx86_64 = system == "x86_64-linux"; };
    formats.toml = { }: {
      type = lib.types.str;
      generate = name: value: { outPath = configPath; inherit value; };
    };
    writeShellScriptBin = name: text: { outPath = "/stub/${name}"; inherit text; };
    util-linux = "/stub/util-linux"; coreutils = "/stub/coreutils"; iproute2 = "/stub/iproute2"; qemu_kvm = "/stub/qemu";
  };
  self.packages.${system} = { mcp-agent = agentDir; } // (if nanosDir == null then { } else { nanos = nanosDir; });
  module = import ../modules/nixos.nix { inherit self; };
  evaluated = module { inherit lib pkgs config; };
  defaults = builtins.mapAttrs (n: o: o.default or null) evaluated.options.services.mcp-agent;
  cfg = defaults // given;
  config = { services.mcp-agent = cfg; virtualisation.podman.package = "/stub/podman"; };
  out = evaluated.config;
  unit = out.systemd.services.mcp-agent;
  user = out.users.users.${cfg.user};
in
{
  settings = out.environment.etc."mcp-agent/agent.toml".source.value;
  execStart = unit.serviceConfig.ExecStart;
  environment = unit.environment;
  wants = unit.wants;
  ambientCapabilities = unit.serviceConfig.AmbientCapabilities;
  authorizedKeys = user.openssh.authorizedKeys.keys;
  inherit (user) uid home linger extraGroups;
  assertions = map (a: { inherit (a) assertion message; }) out.assertions;
}
