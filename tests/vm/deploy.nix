# Full deploy over SSH: the workstation deploys a container service to the agent node and
# fetches it over HTTP (the port is published on the node's address).
{ pkgs, self }:
let common = import ./lib.nix { inherit pkgs self; }; in
pkgs.testers.nixosTest {
  name = "mcp-deploy";
  nodes = { node = common.agentNode; workstation = common.workstation; };
  testScript = ''
    start_all()
    node.wait_for_unit("mcp-agent.service")
    node.wait_for_unit("sshd.service")
    node.succeed("su - mcp -c 'podman load -i /etc/mcp-test-image.tar'")
    ${common.setupWorkstation}
    workstation.succeed("""cat > /root/.config/mcp/services/hello.toml <<'EOS'
    name = "hello"
    node = "node"
    [[components]]
    name = "web"
    image = "localhost/mcp-test:latest"
    ports = ["0.0.0.0:8080:8080"]
    cmd = ["httpd", "-f", "-p", "8080", "-h", "/www"]
    EOS""")
    workstation.succeed("mcp deploy hello")
    workstation.wait_until_succeeds("curl -sf http://node:8080/ | grep 'hello from mcp'")
    workstation.succeed("mcp status hello --json | grep '\"observed\": \"running\"'")
    out = workstation.succeed("mcp deploy hello")
    assert "unchanged" in out, out
  '';
}
