# The Nix twin of hello.toml: `mcp plan examples/hello.nix` prints the same plan, and
# `mcp deploy examples/hello.nix` deploys it. Evaluated with plain builtins (modules/plan.nix):
# no nixpkgs needed.
{ ... }:
{
  name = "hello";
  active = true;
  components = [
    {
      name = "web";
      image = "localhost/mcp-hello:latest";
      restart = "unless-stopped";
      ports = [ "127.0.0.1:18080:8080" ];
      stop_timeout = 2;
      cmd = [ "httpd" "-f" "-p" "8080" "-h" "/www" ];
      health = { http = "http://127.0.0.1:18080/"; interval = "5s"; retries = 3; };
    }
  ];
}
