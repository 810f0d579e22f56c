# Nanos disk images built by the same code an agent runs for a program-form deploy: the
# component is rendered as plan JSON (the versioned contract both ends check) and handed to
# `mcp-agent build-image` with the Nanos toolchain (the flake's packages.nanos). No `ops` (it
# downloads a kernel at build time, which the Nix sandbox forbids).
#
# build { pkgs, name, program, args ? [], env ? {}, files ? {}, nanos, agent }:
#   program  an x86-64 ELF (a store path; a dynamic one brings its interpreter and libraries)
#   args     its arguments (argv[1..])
#   env      its environment, baked into the image: it lands in the world-readable store, so
#            no secrets here (deploy secrets with the agent's program form instead)
#   files    guest dir -> store path, baked like a deploy's volumes
# component { program, args, env, files }: the plan component JSON build hands the agent
# (plain builtins: tests/nix.rs renders it with nix and builds and boots the image).
let
  component = { program, args ? [ ], env ? { }, files ? { } }: {
    name = "image";
    kind = "unikernel";
    # "${...}" (not toString): a path literal is copied to the store and becomes an input.
    program = "${program}";
    cmd = args;
    inherit env;
    volumes = map (guest: "${files.${guest}}:${guest}") (builtins.attrNames files);
  };
in
{
  inherit component;
  build = { pkgs, name, program, args ? [ ], env ? { }, files ? { }, nanos, agent }:
    pkgs.runCommand "${name}.img" { } ''
      ${agent}/bin/mcp-agent build-image --nanos-dir ${nanos} \
        --component ${pkgs.writeText "${name}-component.json" (builtins.toJSON (component { inherit program args env files; }))} \
        --out $out
    '';
}
