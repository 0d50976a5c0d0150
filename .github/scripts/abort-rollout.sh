#!/usr/bin/env bash
# After a failed deploy or smoke test (.github/workflows/deploy.yml): every Argo Rollout of the
# environment is aborted (status.abort, what `kubectl argo rollouts abort` sets: the stable pods
# take all traffic again, the canary's are scaled away), and every Deployment that
# deploy-overlay.sh changed is undone to the revision it had before.
set -euo pipefail

environment=${1:?usage: abort-rollout.sh staging|production}
: "${AWS_REGION:?AWS_REGION is not set}"
namespace=prog-$environment
state=${RUNNER_TEMP:-/tmp}/deploy-$environment

aws eks update-kubeconfig --name "prognetwork-$environment" --region "$AWS_REGION" >/dev/null

status=0
for rollout in $(kubectl get rollouts.argoproj.io -n "$namespace" -o name); do
    echo "abort-rollout: aborting $rollout"
    kubectl patch "$rollout" -n "$namespace" --type merge --subresource status \
        -p '{"status": {"abort": true}}' || status=1
done

while read -r name before; do
    [[ -n $name && -n $before ]] || continue
    now=$(kubectl get "deployment/$name" -n "$namespace" \
        -o jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}' 2>/dev/null || true)
    if [[ -n $now && $now != "$before" ]]; then
        echo "abort-rollout: deployment/$name back to revision $before (was $now)"
        kubectl rollout undo "deployment/$name" -n "$namespace" --to-revision="$before" || status=1
    fi
done <"$state/revisions" 2>/dev/null || true
exit "$status"
