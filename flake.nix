{
  description = "mcp: a declarative deployer for small fleets (podman containers and unikernel VMs over SSH)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
      plan = import ./modules/plan.nix;
    in
    {
      # Needs no nixpkgs: evaluates offline.
      lib = {
        # The plan (attribute set, "version": 1) of one service definition (attrs or function).
        plan = file: value: plan.service file value;
        # Every plan of a definition file (one service or a fleet).
        plansOf = path: plan.plans (toString path) (import path);
        # A Nanos disk image from a program and files, built with nixpkgs' ops; the Nanos
        # kernel is the caller's (no Nanos kernel is packaged).
        mkNanosImage = import ./modules/nanos-image.nix;
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
