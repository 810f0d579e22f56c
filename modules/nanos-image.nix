# mkNanosImage { pkgs, name, program, kernel, files ? {}, args ? [], env ? {} }: a Nanos disk
# image built with nixpkgs' `ops`. `files` maps guest dirs to store paths (baked like mcp's
# volumes: a staging tree mirroring guest paths, its top-level dirs in `Dirs`). `kernel` is the
# Nanos kernel image, supplied by the caller.
{ pkgs, name, program, kernel, files ? { }, args ? [ ], env ? { } }:
let
  staging = pkgs.runCommand "${name}-staging" { } (''
    mkdir -p $out
  '' + builtins.concatStringsSep "\n" (map (guest: ''
    mkdir -p "$out${guest}"
    cp -r --no-preserve=mode "${files.${guest}}/." "$out${guest}/"
  '') (builtins.attrNames files)));
  dirs = builtins.attrNames (builtins.listToAttrs (map (g: {
    name = builtins.head (builtins.filter (s: s != "") (builtins.split "/" g));
    value = null;
  }) (builtins.attrNames files)));
  config = pkgs.writeText "${name}-ops.json" (builtins.toJSON {
    Args = [ (baseNameOf (toString program)) ] ++ args;
    Dirs = dirs;
    Env = env;
    Kernel = toString kernel;
  });
in
pkgs.runCommand "${name}.img" { nativeBuildInputs = [ pkgs.ops ]; } ''
  export HOME=$TMPDIR OPS_HOME=$TMPDIR/ops
  cp -r ${staging}/. work/ 2>/dev/null || { mkdir work; cp -r ${staging}/. work/; }
  chmod -R u+w work
  cd work
  ops build ${program} -c ${config} -i ${name}
  cp $OPS_HOME/images/${name} $out
''
