# Full deploy over SSH: the workstation deploys a container service to the agent node and
# fetches it over HTTP (the port is published on the node's address, open in its firewall).
{ pkgs, self }:
let common = import ./lib.nix { inherit pkgs self; }; in
pkgs.testers.nixosTest {
  name = "mcp-deploy";
  nodes = {
    # Containers only: the Nanos toolchain is not built for this test.
    node = { imports = [ common.agentNode ]; services.mcp-agent.nanos = null; };
    workstation = common.workstation;
  };
  testScript = ''
    start_all()
    node.wait_for_unit("mcp-agent.service")
    node.succeed("mcp-podman load -i /etc/mcp-test-image.tar")
    ${common.setupWorkstation [ "hello" ]}
    workstation.succeed("mcp deploy hello")
    workstation.wait_until_succeeds("curl -sf http://node:8080/ | grep 'hello from mcp'", timeout=120)
    workstation.succeed("mcp status hello --json | grep '\"observed\": \"running\"'")
    # The deploy waited for its health check; the daemon keeps probing it.
    workstation.wait_until_succeeds("mcp status hello --json | grep '\"health\": \"healthy\"'", timeout=60)
    out = workstation.succeed("mcp deploy hello")
    assert "unchanged" in out, out
    # The daemon, the SSH session and an admin see one podman: the container is in mcp-podman's list.
    node.succeed("mcp-podman ps --format '{{.Names}}' | grep -x hello-web")
  '';
}
