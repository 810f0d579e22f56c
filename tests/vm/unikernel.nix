# Unikernel networking with Nanos program-form guests (the flake's Nanos toolchain, images
# built by the agent from tests/guest): one on QEMU user networking serving a baked dir through
# a forwarded port, then two on an isolated network (a bridge without a host address) where
# the friend reaches the web guest at its assigned address and a stranger on another network
# does not. x86_64-linux only (qemu-system-x86_64 guests).
{ pkgs, self }:
let common = import ./lib.nix { inherit pkgs self; }; in
pkgs.testers.nixosTest {
  name = "mcp-unikernel";
  nodes = {
    node = { ... }: {
      imports = [ common.agentNode ];
      virtualisation.memorySize = 3072;
      virtualisation.cores = 2;
      environment.systemPackages = [ common.guest ];
    };
    workstation = common.workstation;
  };
  testScript = ''
    import json
    start_all()
    node.wait_for_unit("mcp-agent.service")
    node.succeed("mkdir -p /srv/www && echo 'baked config' > /srv/www/index.html && chown -R mcp /srv/www")
    ${common.setupWorkstation [ "uk" "uk-web" "uk-friend" "uk-stranger" ]}
    workstation.succeed("mcp deploy uk")
    node.wait_until_succeeds("curl -sf http://127.0.0.1:18080/ | grep 'baked config'", timeout=300)

    workstation.succeed("mcp deploy uk-web")
    ps = json.loads(workstation.succeed("mcp ps --json"))
    web = next(c for c in ps["nodes"][0]["result"]["containers"] if c["service"] == "uk-web")
    ip = web["address"].split("/")[0]
    workstation.succeed(f"sed -i 's/@WEB@/{ip}/' /root/.config/mcp/services/uk-friend.toml /root/.config/mcp/services/uk-stranger.toml")
    workstation.succeed("mcp deploy uk-friend")
    workstation.succeed("mcp deploy uk-stranger")
    workstation.wait_until_succeeds("mcp logs uk-friend | grep 'probe ok: baked config'", timeout=300)
    workstation.wait_until_succeeds("test $(mcp logs uk-stranger | grep -c 'probe failed') -ge 3", timeout=300)
    workstation.fail("mcp logs uk-stranger | grep 'probe ok'")
  '';
}
