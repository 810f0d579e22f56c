# Service definitions in Nix -> mcp plans (JSON, "version": 1). Plain builtins only: no
# nixpkgs, so plans evaluate offline with any `nix`. Used by the `mcp` CLI (embedded, run with
# nix-instantiate) and by the flake's `lib.plan` / `lib.plans`.
#
# A service is an attribute set (or a function `{ mcp, ... }: { ... }` returning one):
#   { name = "hello"; node = "local"; components = [ { name = "web"; image = "..."; } ]; }
# `components` is a list (order kept) or an attribute set keyed by component name (sorted).
# A fleet file returns a list of services, or { services = [ ... ]; }.
#
# Every option is typed; a wrong type or an unknown option fails with
#   "<file>: <option path>: <what is wrong; expected ...>".
let
  inherit (builtins)
    all attrNames concatStringsSep elem filter foldl' isAttrs isBool isFunction isInt isList
    isPath isString listToAttrs map mapAttrs toJSON typeOf;

  describe = v:
    let t = typeOf v; in
    if t == "string" then "the string ${toJSON v}"
    else if t == "int" then "the integer ${toString v}"
    else if t == "bool" then (if v then "true" else "false")
    else if t == "set" then "an attribute set"
    else if t == "list" then "a list"
    else if t == "lambda" then "a function"
    else t;

  # A path is accepted where a string is expected (kernel = ./vmlinuz;): its absolute name.
  strOf = v: if isPath v then toString v else v;
  isStr = v: isString v || isPath v;

  types = {
    str = { what = "a string"; check = isStr; norm = strOf; };
    bool = { what = "a boolean"; check = isBool; norm = v: v; };
    int = { what = "an integer"; check = isInt; norm = v: v; };
    listOfStr = {
      what = "a list of strings";
      check = v: isList v && all isStr v;
      norm = map strOf;
      got = v:
        if !isList v then describe v
        else let bad = filter (x: !isStr (builtins.elemAt v x)) (builtins.genList (i: i) (builtins.length v)); in
          "a list whose item ${toString (builtins.head bad)} is ${describe (builtins.elemAt v (builtins.head bad))}";
    };
    attrsOfStr = {
      what = "an attribute set of strings";
      check = v: isAttrs v && all (k: isString v.${k}) (attrNames v);
      norm = v: v;
    };
    attrs = { what = "an attribute set"; check = isAttrs; norm = v: v; };
    enum = values: {
      what = "one of ${concatStringsSep ", " (map toJSON values)}";
      check = v: elem v values;
      norm = v: v;
    };
  };

  componentOptions = with types; {
    name = str; kind = enum [ "container" "unikernel" ]; image = str; network = str; user = str;
    restart = str; ports = listOfStr; volumes = listOfStr; cmd = listOfStr; env = attrsOfStr;
    stop_timeout = int; pull = enum [ "missing" "always" ]; program = str; kernel = str; initrd = str; append = str; memory = str; cpus = int;
    health = attrs;
  };

  # [components.health]: one of http, tcp, cmd; durations as "500ms", "5s", "2m", "1h".
  healthOptions = with types; {
    http = str; ca = str; tcp = str; cmd = listOfStr; interval = str; timeout = str; retries = int; start_period = str;
  };

  serviceOptions = with types; { version = int; name = str; node = str; active = bool; };

  # Check every attribute of `v` against `options`; drop nulls and empty lists/sets (the
  # plan's defaults), so the JSON matches what mcp writes for the same TOML file.
  checked = file: path: options: v:
    let
      bad = name: msg: throw "${file}: ${path}${name}: ${msg}";
      one = name:
        let x = v.${name}; in
        if !(options ? ${name}) then
          bad name "unknown option; expected one of ${concatStringsSep ", " (attrNames options)}"
        else if x == null then null
        else if !(options.${name}.check x) then
          bad name "expected ${options.${name}.what}, got ${(options.${name}.got or describe) x}"
        else options.${name}.norm x;
      kept = filter (n: let x = one n; in x != null && x != [ ] && x != { }) (attrNames v);
    in
    listToAttrs (map (n: { name = n; value = one n; }) kept);

  component = file: at: c:
    if !isAttrs c then throw "${file}: ${at}: expected an attribute set, got ${describe c}"
    else if !(c ? name) then throw "${file}: ${at}.name: missing; every component needs a name"
    else
      let base = { kind = "container"; image = ""; } // checked file "${at}." componentOptions c; in
      base // (if base ? health then { health = checked file "${at}.health." healthOptions base.health; } else { });

  components = file: cs:
    if isList cs then
      (foldl' (acc: c: { i = acc.i + 1; out = acc.out ++ [ (component file "components[${toString acc.i}]" c) ]; })
        { i = 0; out = [ ]; } cs).out
    else if isAttrs cs then
      map (n:
        let c = cs.${n}; in
        if isAttrs c && c ? name && c.name != n then
          throw "${file}: components.${n}.name: is ${toJSON c.name} but the attribute is ${toJSON n}; drop one"
        else component file "components.${n}" (if isAttrs c then c // { name = n; } else c))
        (attrNames cs)
    else throw "${file}: components: expected a list or an attribute set of components, got ${describe cs}";

  service = file: s0:
    let s = if isFunction s0 then s0 { mcp = { version = 1; }; } else s0; in
    if !isAttrs s then throw "${file}: expected a service (an attribute set), got ${describe s}"
    else if !(s ? name) then throw "${file}: name: missing; a service needs a name"
    else
      { version = 1; active = true; }
      // checked file "" serviceOptions (removeAttrs s [ "components" ])
      // { components = components file (s.components or [ ]); };

  # Every service a file defines (one, or a fleet).
  plans = file: v0:
    let v = if isFunction v0 then v0 { mcp = { version = 1; }; } else v0; in
    if isList v then map (service file) v
    else if isAttrs v && v ? services && !(v ? name) then map (service file) v.services
    else [ (service file v) ];
in
{
  inherit plans service;
  # nix-instantiate --eval --strict --json modules/plan.nix -A fromFile --argstr file /abs/x.nix
  fromFile = { file }: plans file (import (/. + file));
}
