#!/usr/bin/env bash
# End-to-end scenarios against a REAL cluster (kind), for people who have Docker + kind.
# CI runs the same scenarios against the API emulator (tests/test_operator_e2e.py and
# tests/test_kubectl_story.py); this script checks what the emulator cannot: a real API
# server's admission and CEL, real RBAC, real kubelet probes, real leader election between
# pods.  Every step asserts its outcome: the script exits non-zero, naming the step, at the
# first one that does not hold (waits are bounded).
#
#   hack/e2e-kind.sh            create a kind cluster, build+load the image, run scenarios
#   KEEP=1 hack/e2e-kind.sh     keep the cluster afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${CLUSTER:-smtpctl-e2e}
IMAGE=ghcr.io/smtpctl/smtpctl:0.1.0
NS=e2e
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is required" >&2; exit 2; }
done
cleanup() { [ "${KEEP:-0}" = 1 ] || kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; }
trap cleanup EXIT

STEP="setup"
step() { STEP=$*; echo; echo "== $*"; }
fail() { echo "e2e-kind: FAILED in \"$STEP\": $*" >&2; exit 1; }
expect_eq() {  # expect_eq ACTUAL EXPECTED WHAT
  [ "$1" = "$2" ] || fail "$3: expected '$2', got '$1'"
  echo "ok: $3 = '$1'"
}
eventually() {  # eventually SECONDS WHAT COMMAND...: COMMAND succeeds within SECONDS
  local limit=$1 what=$2 i
  shift 2
  for ((i = 0; i < limit; i++)); do
    if "$@"; then echo "ok: $what"; return 0; fi
    sleep 1
  done
  fail "$what (not within ${limit}s)"
}
absent() {  # absent GET-ARGS...: kubectl get says NotFound (any other error is not "absent")
  local out
  if out=$(kubectl get "$@" 2>&1); then return 1; fi
  [[ $out == *NotFound* ]]
}
jp() {  # jp NAMESPACE RESOURCE JSONPATH
  kubectl -n "$1" get "$2" -o "jsonpath=$3"
}

kind create cluster --name "$CLUSTER" --wait 120s
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "install (kubectl apply -k, server-side validation) and rollout"
kubectl apply -k manifests/operator
kubectl wait --for=condition=Established --timeout=60s \
  crd/externalsmtps.smtp.reconciler.dev crd/oauth2providers.smtp.reconciler.dev
kubectl -n smtpctl-system rollout status deploy/smtpctl-operator --timeout=180s
kubectl create namespace "$NS"

step "a relay inside the cluster"
# The devservers relay from the same image (STARTTLS + AUTH); it listens on an ephemeral
# port, which it prints; the test connects to the pod IP.
kubectl -n "$NS" run relay --image="$IMAGE" --restart=Never --command -- python -c '
import time
from reconciler.devservers.smtp import RelayServer
relay = RelayServer(host="0.0.0.0", users={"demo": "demo-password"}).start()
print("relay-port", relay.port, flush=True)
time.sleep(10**9)'
kubectl -n "$NS" wait --for=condition=Ready pod/relay --timeout=120s
relay_port() { PORT=$(kubectl -n "$NS" logs relay | awk '/relay-port/ {print $2}'); [ -n "$PORT" ]; }
eventually 60 "the relay printed its port" relay_port
HOST=$(jp "$NS" pod/relay '{.status.podIP}')
[ -n "$HOST" ] || fail "the relay pod has no IP"
echo "relay at $HOST:$PORT"

step "Secret created after the ExternalSmtp (GitOps ordering race)"
cat <<YAML | kubectl -n "$NS" apply -f -
apiVersion: smtp.reconciler.dev/v1alpha1
kind: ExternalSmtp
metadata: {name: relay}
spec:
  host: $HOST
  port: $PORT
  startTLS: true
  authentication: UsernamePassword
  username: demo
  passwordFrom: {secretKeyRef: {name: relay-password, key: password}}
  tls: {verify: false}
  selected: true
YAML
kubectl -n "$NS" wait --for=condition=Ready=false externalsmtp/relay --timeout=60s
expect_eq "$(jp "$NS" externalsmtp/relay '{.status.conditions[?(@.type=="Ready")].reason}')" \
  SecretNotFound "Ready reason before the Secret exists"
kubectl -n "$NS" create secret generic relay-password --from-literal=password=demo-password
# (the relay's certificate is for localhost: this script tests with tls.verify=false)
kubectl -n "$NS" wait --for=condition=Ready externalsmtp/relay --timeout=60s
GEN=$(jp "$NS" externalsmtp/relay '{.metadata.generation}')
expect_eq "$(jp "$NS" externalsmtp/relay '{.status.activeGeneration}')" "$GEN" \
  "active generation once Ready"

step "published Secret"
published() { [ "$(jp "$NS" secret/smtp-active-relay '{.data.SMTP_HOST}' 2>/dev/null)" != "" ]; }
eventually 60 "the selected relay is published" published
expect_eq "$(jp "$NS" secret/smtp-active-relay '{.data.SMTP_HOST}' | base64 -d)" "$HOST" \
  "published SMTP_HOST"

step "rotation: a wrong password turns Ready False, the tested generation stays active"
kubectl -n "$NS" create secret generic relay-password --from-literal=password=wrong \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" wait --for=condition=Ready=false externalsmtp/relay --timeout=60s
expect_eq "$(jp "$NS" externalsmtp/relay '{.status.activeGeneration}')" "$GEN" \
  "active generation after a failed rotation"
expect_eq "$(jp "$NS" secret/smtp-active-relay '{.data.SMTP_HOST}' | base64 -d)" "$HOST" \
  "published SMTP_HOST kept (last known good)"

step "leader handover: delete the leader pod"
leader=$(jp smtpctl-system lease/smtpctl-operator '{.spec.holderIdentity}')
[ -n "$leader" ] || fail "no leader holds the Lease"
kubectl -n smtpctl-system delete pod "$leader" --wait=false
new_leader() {
  local holder
  holder=$(jp smtpctl-system lease/smtpctl-operator '{.spec.holderIdentity}')
  [ -n "$holder" ] && [ "$holder" != "$leader" ]
}
eventually 120 "another pod took the Lease over from $leader" new_leader

step "deletion with finalizer cleanup"
kubectl -n "$NS" delete externalsmtp relay --wait --timeout=60s
absent -n "$NS" externalsmtp/relay || fail "externalsmtp/relay still exists after delete --wait"
eventually 60 "the published Secret is removed" absent -n "$NS" secret/smtp-active-relay

step "uninstall as docs/operator.md says: resources first, then the install; nothing stuck"
kubectl delete externalsmtps,oauth2providers --all -A --wait --timeout=60s
kubectl delete -k manifests/operator --wait --timeout=120s
eventually 60 "the ExternalSmtp CRD is gone" absent crd/externalsmtps.smtp.reconciler.dev
eventually 60 "the operator namespace is gone" absent namespace/smtpctl-system
echo; echo "e2e-kind: all scenarios passed"
