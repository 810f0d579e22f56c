# What the VM tests write on the workstation and hand the agent, in plain builtins so that
# tests/nix.rs loads the very same text with the real `mcp` (from another working directory)
# and the real `mcp-agent`:
#   mcpToml        ~/.config/mcp/mcp.toml (services in the dir beside it, whatever the cwd)
#   services.<n>   ~/.config/mcp/services/<n>.toml
#   agentSettings  the node's services.mcp-agent.settings
# image: the container image the node has loaded; program: the Nanos guest (an x86-64 ELF on
# the node); www: the node dir baked into the guests. "@WEB@" in uk-friend and uk-stranger is
# the address the agent assigned to uk-web (known only after its deploy).
{ image ? "localhost/mcp-test:latest", program ? "/run/current-system/sw/bin/mcp-guest", www ? "/srv/www" }:
let
  container = name: extra: ''
    name = "${name}"
    node = "node"
    [[components]]
    name = "web"
    image = "${image}"
    cmd = ["httpd", "-f", "-p", "8080", "-h", "/www"]
  '' + extra;
  guest = name: extra: ''
    name = "${name}"
    node = "node"
    [[components]]
    name = "vm"
    kind = "unikernel"
    program = "${program}"
    memory = "256M"
  '' + extra;
  probe = name: network: guest name ''
    cmd = ["probe", "@WEB@:8080"]
  '' + network;
in
{
  mcpToml = ''
    [services]
    dir = "services"

    [[nodes]]
    name = "node"
    address = "node"
    user = "mcp"
  '';
  services = {
    hello = container "hello" ''
      ports = ["0.0.0.0:8080:8080"]
      [components.health]
      http = "http://127.0.0.1:8080/"
      start_period = "60s"
    '';
    sticky = container "sticky" ''
      restart = "always"
    '';
    # Nanos on QEMU user networking, its port forwarded on the node's loopback.
    uk = guest "uk" ''
      cmd = ["serve", "8080", "/srv/www"]
      network = "user"
      ports = ["127.0.0.1:18080:8080"]
      volumes = ["${www}:/srv/www"]
    '';
    # Nanos guests on isolated networks (bridges without a host address): the friend shares
    # uk-web's network and reaches it, the stranger is on its own and does not.
    uk-web = guest "uk-web" ''
      cmd = ["serve", "8080", "/srv/www"]
      network = "shared"
      volumes = ["${www}:/srv/www"]
    '';
    uk-friend = probe "uk-friend" ''
      network = "shared"
    '';
    uk-stranger = probe "uk-stranger" "";
  };
  # After a reboot the container comes back first (a required stage), the VMs after it.
  agentSettings = {
    monitor.sweep_secs = 5;
    boot.sequence = [
      { name = "foundation"; services = [ "hello" ]; required = true; timeout = "2m"; }
      { name = "guests"; services = [ "uk" "uk-web" ]; }
    ];
  };
}
