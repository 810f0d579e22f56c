# Shared by the VM tests: a workstation that holds a deploy key and an agent node that runs
# services.mcp-agent with that key authorized.
{ pkgs, self }:
let
  keys = pkgs.runCommand "mcp-test-keys" { nativeBuildInputs = [ pkgs.openssh ]; } ''
    mkdir $out
    ssh-keygen -q -t ed25519 -N "" -C mcp-test -f $out/id_ed25519
  '';
  image = pkgs.dockerTools.buildImage {
    name = "localhost/mcp-test";
    tag = "latest";
    copyToRoot = pkgs.buildEnv { name = "root"; paths = [ pkgs.busybox ]; };
    extraCommands = "mkdir -p www && echo 'hello from mcp' > www/index.html";
  };
in
{
  inherit keys image;
  agentNode = { ... }: {
    imports = [ self.nixosModules.mcp-agent ];
    services.openssh.enable = true;
    services.mcp-agent = {
      enable = true;
      authorizedKeys = [ (builtins.readFile "${keys}/id_ed25519.pub") ];
      settings.monitor.sweep_secs = 5;
    };
    virtualisation.memorySize = 2048;
    environment.etc."mcp-test-image.tar".source = image;
  };
  workstation = { ... }: {
    environment.systemPackages = [ self.packages.${pkgs.stdenv.hostPlatform.system}.mcp pkgs.curl ];
  };
  # mcp.toml + services on the workstation (as root).
  setupWorkstation = ''
    workstation.succeed("mkdir -p /root/.ssh /root/.config/mcp/services")
    workstation.succeed("cp ${keys}/id_ed25519 /root/.ssh/id_ed25519 && chmod 600 /root/.ssh/id_ed25519")
    workstation.succeed("printf '[[nodes]]\\nname = \"node\"\\naddress = \"node\"\\nuser = \"mcp\"\\nagent = \"mcp-agent rpc --state-dir /var/lib/mcp-agent\"\\n' > /root/.config/mcp/mcp.toml")
    workstation.succeed("mcp login --yes")
  '';
}
