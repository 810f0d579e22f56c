# Unikernel networking: a kernel-form VM with user-mode networking serves a baked config dir
# through hostfwd on the agent node.
{ pkgs, self }:
let
  common = import ./lib.nix { inherit pkgs self; };
  init = pkgs.writeScript "init" ''
    #!/bin/sh
    mount -t proc proc /proc; mount -t sysfs sysfs /sys
    ip link set lo up; ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
    httpd -f -p 8080 -h /srv/www &
    while true; do sleep 3600; done
  '';
  initrd = pkgs.makeInitrd {
    contents = [
      { object = "${pkgs.pkgsStatic.busybox}/bin"; symlink = "/bin"; }
      { object = init; symlink = "/init"; }
    ];
  };
in
pkgs.testers.nixosTest {
  name = "mcp-unikernel";
  nodes = {
    node = { ... }: { imports = [ common.agentNode ]; virtualisation.memorySize = 3072; };
    workstation = common.workstation;
  };
  testScript = ''
    start_all()
    node.wait_for_unit("mcp-agent.service")
    node.succeed("mkdir -p /srv/www && echo 'baked config' > /srv/www/index.html && chown -R mcp /srv/www")
    ${common.setupWorkstation}
    workstation.succeed("""cat > /root/.config/mcp/services/uk.toml <<'EOS'
    name = "uk"
    node = "node"
    [[components]]
    name = "vm"
    kind = "unikernel"
    kernel = "${pkgs.linuxPackages.kernel}/bzImage"
    initrd = "${initrd}/initrd"
    network = "user"
    ports = ["127.0.0.1:18080:8080"]
    volumes = ["/srv/www:/srv/www"]
    EOS""")
    workstation.succeed("mcp deploy uk")
    node.wait_until_succeeds("curl -sf http://127.0.0.1:18080/ | grep 'baked config'", timeout=180)
  '';
}
