#!/usr/bin/env bash
# Releases one image to the cluster of the current kubeconfig through a kustomize overlay:
#   bash deploy/k8s/release.sh <overlay> <deployment> <image>
#   e.g. bash deploy/k8s/release.sh canary catalog-canary ghcr.io/dockyard/catalog:<sha>
# The pipeline (.github/workflows/service-pipeline.yml) runs it for staging and production.
#  1. Every other Deployment keeps the image it runs now: the overlays' tags are placeholders,
#     and releasing the catalog must not move the order service, the gateway or the console
#     anywhere.
#  2. The release's Jobs (migrations, seed) are recreated, since a Job's pod template is
#     immutable, and awaited: the schema is migrated before a pod of the new release starts.
#  3. Then the Deployments roll, and the command waits for the released one.
# The placeholder Secrets of the base are never applied: the cluster's own `dockyard-secrets`
# and `dockyard-auth` (from its secret store) must exist.
# Needs kubectl and kustomize (both are on GitHub's Ubuntu runners).
set -euo pipefail

if (($# != 3)); then
  echo "usage: $0 <overlay> <deployment> <image>" >&2
  exit 2
fi
overlay=$1 deployment=$2 image=$3
namespace=dockyard
k8s_dir=$(cd "$(dirname "$0")" && pwd)
if [[ ! -f $k8s_dir/overlays/$overlay/kustomization.yaml ]]; then
  echo "$0: no overlay named $overlay" >&2
  exit 2
fi

# `kustomize edit` rewrites kustomization.yaml: work on a copy, never on the checkout.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -R "$k8s_dir/." "$work/"
cd "$work/overlays/$overlay"

for secret in dockyard-secrets dockyard-auth; do
  if ! kubectl -n "$namespace" get secret "$secret" >/dev/null; then
    echo "$0: create the Secret $secret in namespace $namespace first" >&2
    exit 1
  fi
done

# 1. In the manifests, every Deployment's image is named ghcr.io/dockyard/<deployment>.
#    Captured first so that a failing kubectl stops the release (set -e).
running=$(kubectl -n "$namespace" get deployments \
  -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.template.spec.containers[0].image}{"\n"}{end}')
while read -r name current; do
  if [[ -n $name && $name != "$deployment" ]]; then
    kustomize edit set image "ghcr.io/dockyard/$name=$current"
  fi
done <<<"$running"
kustomize edit set image "ghcr.io/dockyard/$deployment=$image"
kubectl kustomize . >"$work/release.yaml"

# 2. Everything but the long-running servers (namespace, config, Services, autoscalers,
#    budgets, Ingress, Jobs), then wait for the Jobs.
kubectl -n "$namespace" delete jobs --ignore-not-found -l app.kubernetes.io/component=migration
kubectl apply -f "$work/release.yaml" \
  -l 'app.kubernetes.io/component!=server,dockyard.dev/placeholder!=true'
kubectl -n "$namespace" wait --for=condition=complete --timeout=600s \
  jobs -l app.kubernetes.io/component=migration

# 3. The servers: a rolling update, old pods drain (preStop sleep, then SIGTERM).
kubectl apply -f "$work/release.yaml" -l 'dockyard.dev/placeholder!=true'
kubectl -n "$namespace" rollout status "deployment/$deployment" --timeout=600s
