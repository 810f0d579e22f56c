# The Nanos unikernel toolchain built from source: kernel.img, boot.img, mkfs, dump and the
# klibs, the directory `[nanos] dir` in agent.toml names. The same steps as nanos' own
# Makefile (and shared/nanos/build, which the tests run): its vendored acpica, lwip and mbedtls
# placed under vendor/, each patched with patches/<name>.patch when there is one and marked
# .vendored, a git commit for the kernel's embedded version, then `make kernel tools`.
# x86_64-linux only. WRITTEN, NOT BUILT on the machines mcp is tested on (no nixpkgs there).
{ pkgs, src, acpica, lwip, mbedtls, rev }:
pkgs.stdenv.mkDerivation {
  pname = "nanos";
  version = builtins.substring 0 12 rev;
  inherit src;
  nativeBuildInputs = [ pkgs.nasm pkgs.git pkgs.which ];
  postUnpack = ''
    mkdir -p "$sourceRoot/vendor"
    for d in acpica lwip mbedtls; do rm -rf "$sourceRoot/vendor/$d"; done
    cp -r ${acpica} "$sourceRoot/vendor/acpica"
    cp -r ${lwip} "$sourceRoot/vendor/lwip"
    cp -r ${mbedtls} "$sourceRoot/vendor/mbedtls"
    chmod -R u+w "$sourceRoot/vendor"
  '';
  postPatch = ''
    for d in acpica lwip mbedtls; do
      if [ -f patches/$d.patch ]; then patch -s -p1 -d vendor/$d < patches/$d.patch; fi
      touch vendor/$d/.vendored
    done
    # The kernel embeds its git commit (gitversion.c depends on .git/index).
    git init -q && git add -A
    git -c user.name=nix -c user.email=nix@localhost commit -qm "nanos ${rev}"
  '';
  # The kernel is freestanding code: no hardening flags, no fortify.
  hardeningDisable = [ "all" ];
  enableParallelBuilding = true;
  buildPhase = ''
    runHook preBuild
    make -j$NIX_BUILD_CORES kernel
    make -j$NIX_BUILD_CORES tools
    runHook postBuild
  '';
  installPhase = ''
    runHook preInstall
    o=output/platform/pc
    mkdir -p $out/klibs
    cp $o/bin/kernel.img $o/boot/boot.img output/tools/bin/mkfs output/tools/bin/dump $out/
    find $o/bin -maxdepth 1 -type f ! -name '*.dbg' ! -name 'kernel.*' -exec cp {} $out/klibs/ \;
    runHook postInstall
  '';
  meta = {
    description = "Nanos unikernel kernel, boot loader and image tools (for mcp's program-form unikernels)";
    homepage = "https://github.com/nanovms/nanos";
    license = pkgs.lib.licenses.asl20;
    platforms = [ "x86_64-linux" ];
  };
}
