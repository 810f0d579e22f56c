# A fleet file: several services from one Nix expression (`mcp sync` deploys each; `mcp plan
# examples/fleet.nix` prints them). Shared settings are plain Nix.
let
  web = port: {
    image = "localhost/mcp-hello:latest";
    restart = "unless-stopped";
    ports = [ "127.0.0.1:${toString port}:8080" ];
    cmd = [ "httpd" "-f" "-p" "8080" "-h" "/www" ];
  };
in
{
  services = [
    { name = "blue"; components.web = web 18081; }
    { name = "green"; components.web = web 18082; }
  ];
}
