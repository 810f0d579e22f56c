{
  description = "mcp: a declarative deployer for small fleets (podman containers and unikernel VMs over SSH)";

  # nixos-25.11: its rustc (1.91) meets Cargo.toml's rust-version 1.89 (24.05 had 1.77,
  # 25.05 1.86). No flake.lock is committed: it cannot be made on the offline machines mcp is
  # developed on; `nix flake lock` writes one on first use.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
  # The Nanos unikernel and what its Makefile vendors, at the commits the tests build
  # (shared/nanos/SOURCES); flake.lock records their hashes on first use.
  inputs.nanos-src = { url = "github:nanovms/nanos/b9c3671d9b95cdab590e223b3b01a8f18c09483c"; flake = false; };
  inputs.acpica-src = { url = "github:acpica/acpica/bf9909ee0b224e8b023d240490b1f30318ff049a"; flake = false; };
  inputs.lwip-src = { url = "github:nanovms/lwip/dc15bc187f6fabeb301e85b39f2715b3ff4923a6"; flake = false; };
  inputs.mbedtls-src = { url = "github:nanovms/mbedtls/729a04f67c64363ded0ed8fc3a408fdf5c40797c"; flake = false; };

  outputs = { self, nixpkgs, ... }@inputs:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
      plan = import ./modules/plan.nix;
      nanosRev = "b9c3671d9b95cdab590e223b3b01a8f18c09483c";
    in
    {
      # Needs no nixpkgs: evaluates offline.
      lib = {
        # The plan (attribute set, "version": 1) of one service definition (attrs or function).
        plan = file: value: plan.service file value;
        # Every plan of a definition file (one service or a fleet).
        plansOf = path: plan.plans (toString path) (import path);
        # A Nanos disk image from a program, its arguments and environment and files, built by
        # `mcp-agent build-image` (the code a program-form deploy runs) with packages.nanos.
        # x86_64-linux.
        mkNanosImage = args@{ pkgs, ... }:
          (import ./modules/nanos-image.nix).build ({
            nanos = self.packages.${pkgs.stdenv.hostPlatform.system}.nanos;
            agent = self.packages.${pkgs.stdenv.hostPlatform.system}.mcp-agent;
          } // args);
      };

      packages = forAll (system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
          inherit (pkgs) lib;
          mcp = pkgs.rustPlatform.buildRustPackage {
            pname = "mcp";
            version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;
            # What the build reads (modules/plan.nix is compiled in): a change to README,
            # tests or scripts does not rebuild mcp.
            src = lib.fileset.toSource {
              root = ./.;
              fileset = lib.fileset.unions [ ./Cargo.toml ./Cargo.lock ./src ./benches ./modules/plan.nix ];
            };
            cargoLock.lockFile = ./Cargo.lock;
            # The integration tests need podman, sshd and qemu; they run in tests/vm.
            doCheck = false;
            meta.mainProgram = "mcp";
          };
        in
        {
          inherit mcp;
          mcp-agent = lib.addMetaAttrs { mainProgram = "mcp-agent"; } mcp;
          default = mcp;
        } // pkgs.lib.optionalAttrs (system == "x86_64-linux") {
          # The Nanos toolchain from source, for [nanos] dir (program-form unikernels).
          nanos = import ./modules/nanos.nix {
            inherit pkgs;
            src = inputs.nanos-src;
            acpica = inputs.acpica-src;
            lwip = inputs.lwip-src;
            mbedtls = inputs.mbedtls-src;
            rev = nanosRev;
          };
        });

      # `nix run .#deploy -- myservice` (from a flake that has services/ beside it, or any dir).
      apps = forAll (system: {
        deploy = {
          type = "app";
          meta.description = "mcp deploy: deploy services to their nodes";
          program = toString (nixpkgs.legacyPackages.${system}.writeShellScript "mcp-deploy" ''
            exec ${self.packages.${system}.mcp}/bin/mcp deploy "$@"
          '');
        };
        default = self.apps.${system}.deploy;
      });

      # With a key: importing it twice declares nothing twice; errors name the file.
      nixosModules.mcp-agent = {
        _file = ./modules/nixos.nix;
        key = "mcp-agent";
        imports = [ (import ./modules/nixos.nix { inherit self; }) ];
      };
      nixosModules.default = self.nixosModules.mcp-agent;

      checks = forAll (system:
        let pkgs = nixpkgs.legacyPackages.${system}; in
        {
          deploy = import ./tests/vm/deploy.nix { inherit pkgs self; };
          drift = import ./tests/vm/drift.nix { inherit pkgs self; };
        } // (if system == "x86_64-linux" then {
          # qemu-system-x86_64 guests and the Nanos toolchain: x86_64 only.
          unikernel = import ./tests/vm/unikernel.nix { inherit pkgs self; };
        } else { }));
    };
}
