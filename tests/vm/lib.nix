# Shared by the VM tests: a workstation that holds a deploy key and an agent node that runs
# services.mcp-agent with that key authorized. The files the workstation writes and the agent
# settings come from ./files.nix (also loaded by tests/nix.rs with the real binaries).
{ pkgs, self }:
let
  system = pkgs.stdenv.hostPlatform.system;
  files = import ./files.nix { program = guestProgram; };
  image = pkgs.dockerTools.buildImage {
    name = "localhost/mcp-test";
    tag = "latest";
    copyToRoot = pkgs.buildEnv { name = "root"; paths = [ pkgs.busybox ]; };
    extraCommands = "mkdir -p www && echo 'hello from mcp' > www/index.html";
  };
  # The Nanos guest of tests/nanos.rs (serve / probe), dynamically linked: the agent bakes its
  # interpreter and libraries into the image.
  guest = pkgs.rustPlatform.buildRustPackage {
    pname = "mcp-guest";
    version = "0.1.0";
    src = ../guest;
    cargoLock.lockFile = ../guest/Cargo.lock;
  };
  guestProgram = "${guest}/bin/mcp-guest";
  copyFile = dest: name: text: ''workstation.succeed("cp ${pkgs.writeText name text} ${dest}")'';
in
{
  inherit image files guest;
  agentNode = { lib, ... }: {
    imports = [ self.nixosModules.mcp-agent ];
    services.openssh.enable = true;
    services.mcp-agent = {
      enable = true;
      # A throwaway key pair committed for these tests only (no import-from-derivation).
      authorizedKeys = [ (builtins.readFile ./keys/id_ed25519.pub) ];
      settings = files.agentSettings;
    };
    # The deploy test publishes 8080 on the node's address.
    networking.firewall.allowedTCPPorts = [ 8080 ];
    virtualisation.memorySize = lib.mkDefault 2048;
    environment.etc."mcp-test-image.tar".source = image;
  };
  workstation = { ... }: {
    environment.systemPackages = [ self.packages.${system}.mcp pkgs.curl ];
  };
  # The workstation's key, mcp.toml and the named service files (as root, whose shell runs in
  # /tmp), once both machines are up and the node's sshd listens (it makes its host keys first).
  # Only the named services are rendered: deploy and drift do not build the Nanos guest.
  setupWorkstation = services: ''
    workstation.wait_for_unit("multi-user.target")
    node.wait_for_unit("sshd.service")
    node.wait_for_open_port(22)
    workstation.succeed("mkdir -p /root/.ssh /root/.config/mcp/services")
    workstation.succeed("install -m 600 ${./keys/id_ed25519} /root/.ssh/id_ed25519")
    ${copyFile "/root/.config/mcp/mcp.toml" "mcp.toml" files.mcpToml}
    ${builtins.concatStringsSep "\n" (map (n: copyFile "/root/.config/mcp/services/${n}.toml" "${n}.toml" files.services.${n}) services)}
    workstation.succeed("mcp login --yes")
  '';
}
