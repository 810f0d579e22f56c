{
  description = "mcp: a declarative deployer for small fleets (podman containers and unikernel VMs over SSH)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";
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
          mcp = pkgs.rustPlatform.buildRustPackage {
            pname = "mcp";
            version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;
            src = pkgs.lib.cleanSource ./.;
            cargoLock.lockFile = ./Cargo.lock;
            # The integration tests need podman, sshd and qemu; they run in tests/vm.
            doCheck = false;
            meta.mainProgram = "mcp";
          };
        in
        {
          inherit mcp;
          mcp-agent = mcp // { meta = mcp.meta // { mainProgram = "mcp-agent"; }; };
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
          program = toString (nixpkgs.legacyPackages.${system}.writeShellScript "mcp-deploy" ''
            exec ${self.packages.${system}.mcp}/bin/mcp deploy "$@"
          '');
        };
        default = self.apps.${system}.deploy;
      });

      nixosModules.mcp-agent = import ./modules/nixos.nix { inherit self; };
      nixosModules.default = self.nixosModules.mcp-agent;

      checks = forAll (system:
        let pkgs = nixpkgs.legacyPackages.${system}; in
        {
          deploy = import ./tests/vm/deploy.nix { inherit pkgs self; };
          drift = import ./tests/vm/drift.nix { inherit pkgs self; };
          unikernel = import ./tests/vm/unikernel.nix { inherit pkgs self; };
        });
    };
}
