# Drift: a container killed behind mcp's back is recorded and brought back by the agent's
# monitor (restart = "always"; `podman kill` marks it stopped by the user, so podman's own
# restart policy would not).
{ pkgs, self }:
let common = import ./lib.nix { inherit pkgs self; }; in
pkgs.testers.nixosTest {
  name = "mcp-drift";
  nodes = {
    # Containers only: the Nanos toolchain is not built for this test.
    node = { imports = [ common.agentNode ]; services.mcp-agent.nanos = null; };
    workstation = common.workstation;
  };
  testScript = ''
    start_all()
    node.wait_for_unit("mcp-agent.service")
    node.succeed("mcp-podman load -i /etc/mcp-test-image.tar")
    ${common.setupWorkstation [ "sticky" ]}
    workstation.succeed("mcp deploy sticky")
    node.succeed("mcp-podman kill sticky-web")
    workstation.wait_until_succeeds("mcp status sticky --json | grep drift.stopped", timeout=60)
    workstation.wait_until_succeeds("mcp status sticky --json | grep '\"repairs\": 1'", timeout=60)
    node.wait_until_succeeds("mcp-podman ps --filter name=sticky-web --format {{.State}} | grep -i running", timeout=60)
  '';
}
