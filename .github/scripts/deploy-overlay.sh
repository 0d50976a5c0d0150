#!/usr/bin/env bash
# Deploys one environment from .github/workflows/deploy.yml:
#
#   IMAGES='{"user-service": "sha256:…", …}' REGISTRY=<account>.dkr.ecr.<region>.amazonaws.com \
#   REVISION=<git sha> .github/scripts/deploy-overlay.sh staging [--render-only]
#
# Renders deploy/k8s/overlays/<environment> with each service's image set to the built digest
# (a release overlay on top of it: kustomize `images:` with newName, the commit's tag and the
# digest), checks that every container of every service runs exactly that digest, then runs the
# migration Job, applies the result and waits for every workload: Deployments rolled out, Argo
# Rollouts Healthy (their canary steps and analysis done); a Rollout that aborts fails this at
# once. Each Deployment's revision before the apply is kept for abort-rollout.sh.
# --render-only stops after the check and prints the rendered file's path (no cluster needed).
set -euo pipefail

environment=${1:?usage: deploy-overlay.sh staging|production [--render-only]}
render_only=${2:-}
: "${IMAGES:?IMAGES, the digests as JSON, is not set}"
: "${REGISTRY:?REGISTRY (the ECR registry host) is not set}"
: "${REVISION:?REVISION (the git commit the images were built from) is not set}"
namespace=prog-$environment
overlays=deploy/k8s/overlays
overlay=$overlays/$environment
state=${RUNNER_TEMP:-${TMPDIR:-/tmp}}/deploy-$environment
ROLLOUT_TIMEOUT_SECONDS=${ROLLOUT_TIMEOUT_SECONDS:-1500}
mkdir -p "$state"

fail() {
    echo "deploy-overlay: $*" >&2
    exit 1
}

[[ -f $overlay/kustomization.yaml ]] || fail "no overlay $overlay"

# --- the digests, over the overlay ------------------------------------------------------------------
mapfile -t built < <(jq -r 'keys[]' <<<"$IMAGES")
((${#built[@]})) || fail "IMAGES names no service"
# Every service image the overlay runs was built: a service left out would keep running an old one.
mapfile -t running < <(grep -oE "/prognetwork/[a-z0-9-]+$" "$overlay/kustomization.yaml" | cut -d/ -f3)
for service in "${running[@]}"; do
    jq -e --arg s "$service" 'has($s)' <<<"$IMAGES" >/dev/null || fail "no digest for $service in IMAGES"
done
release=$overlays/.release-$environment
rm -rf "$release"
mkdir -p "$release"
trap 'rm -rf "$release"' EXIT
{
    echo "# Written by .github/scripts/deploy-overlay.sh: $environment with the images built from $REVISION."
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources: [../$environment]"
    echo "images:"
    for service in "${built[@]}"; do
        digest=$(jq -r --arg s "$service" '.[$s]' <<<"$IMAGES")
        [[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || fail "$service: not a digest: $digest"
        # The overlay's images: entry is keyed by the name the base manifests use.
        name=$(grep -oE "name: [^ ]+/prognetwork/$service\$" "$overlay/kustomization.yaml" | cut -d' ' -f2 || true)
        [[ -n $name ]] || fail "$overlay/kustomization.yaml has no images: entry for $service"
        echo "  - {name: $name, newName: $REGISTRY/prognetwork/$service, newTag: git-$REVISION, digest: $digest}"
    done
} >"$release/kustomization.yaml"

rendered=$state/rendered.yaml
kubectl kustomize "$release" >"$rendered"
for service in "${built[@]}"; do
    digest=$(jq -r --arg s "$service" '.[$s]' <<<"$IMAGES")
    # Every container of the service runs the built digest, and nothing runs another build of it.
    grep -oE "image: [^ ]*/prognetwork/${service}[:@][^ ]*" "$rendered" | sort -u >"$state/images"
    [[ -s $state/images ]] || fail "the rendered overlay runs no $service image"
    expected="image: $REGISTRY/prognetwork/$service:git-$REVISION@$digest"
    if grep -v -x -F "$expected" "$state/images" | grep -q .; then
        fail "$service: the rendered overlay runs $(tr '\n' ' ' <"$state/images")instead of only ${expected#image: }"
    fi
done
echo "deploy-overlay: $environment renders the built digests ($rendered)"
[[ $render_only == --render-only ]] && exit 0
[[ -z $render_only ]] || fail "unknown option $render_only"
: "${AWS_REGION:?AWS_REGION is not set}"
aws eks update-kubeconfig --name "prognetwork-$environment" --region "$AWS_REGION" >/dev/null

# --- apply ------------------------------------------------------------------------------------------
kubectl get deployments -n "$namespace" \
    -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.metadata.annotations.deployment\.kubernetes\.io/revision}{"\n"}{end}' \
    >"$state/revisions" 2>/dev/null || : >"$state/revisions"

# A Job's pod template cannot change: the previous release's migration Job goes first.
kubectl delete job prog-migrate -n "$namespace" --ignore-not-found --wait=true
kubectl apply -f "$rendered"
kubectl wait job/prog-migrate -n "$namespace" --for=condition=complete --timeout=10m

mapfile -t deployments < <(kubectl get -f "$rendered" -o name 2>/dev/null | grep '^deployment' || true)
for deployment in "${deployments[@]}"; do
    kubectl rollout status "$deployment" -n "$namespace" --timeout="${ROLLOUT_TIMEOUT_SECONDS}s"
done

mapfile -t rollouts < <(kubectl get -f "$rendered" -o name 2>/dev/null | grep '^rollout' || true)
deadline=$((SECONDS + ROLLOUT_TIMEOUT_SECONDS))
for rollout in "${rollouts[@]}"; do
    while :; do
        phase=$(kubectl get "$rollout" -n "$namespace" -o jsonpath='{.status.phase}')
        case $phase in
        Healthy) echo "deploy-overlay: $rollout Healthy"; break ;;
        Degraded) fail "$rollout aborted: $(kubectl get "$rollout" -n "$namespace" -o jsonpath='{.status.message}')" ;;
        esac
        ((SECONDS < deadline)) || fail "$rollout not Healthy within ${ROLLOUT_TIMEOUT_SECONDS}s (phase: ${phase:-none})"
        sleep 10
    done
done
echo "deploy-overlay: $environment runs the built digests"
