#!/usr/bin/env bash
# End-to-end scenarios against a REAL cluster (kind), for people who have Docker + kind.
# CI runs the same scenarios against the API emulator (tests/test_operator_e2e.py); this
# script checks what the emulator cannot: real RBAC, real admission/CEL, real kubelet
# probes, real leader election between pods.
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

kind create cluster --name "$CLUSTER" --wait 120s
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

kubectl apply -k manifests/operator
kubectl -n smtpctl-system rollout status deploy/smtpctl-operator --timeout=180s
kubectl create namespace "$NS"

# A relay inside the cluster: the devservers relay from the same image (STARTTLS + AUTH).
# It listens on an ephemeral port, which it prints; the test connects to the pod IP.
kubectl -n "$NS" run relay --image="$IMAGE" --restart=Never --command -- python -c '
import time
from reconciler.devservers.smtp import RelayServer
relay = RelayServer(host="0.0.0.0", users={"demo": "demo-password"}).start()
print("relay-port", relay.port, flush=True)
time.sleep(10**9)'
kubectl -n "$NS" wait --for=condition=Ready pod/relay --timeout=120s
for _ in $(seq 60); do
  PORT=$(kubectl -n "$NS" logs relay | awk '/relay-port/ {print $2}')
  [ -n "$PORT" ] && break; sleep 1
done
HOST=$(kubectl -n "$NS" get pod relay -o jsonpath='{.status.podIP}')
echo "relay at $HOST:$PORT"

step() { echo; echo "== $*"; }

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
sleep 5
kubectl -n "$NS" get externalsmtp relay -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}'; echo
kubectl -n "$NS" create secret generic relay-password --from-literal=password=demo-password
# (the relay's certificate is for localhost: this script tests with tls.verify=false)
kubectl -n "$NS" wait --for=condition=Ready externalsmtp/relay --timeout=60s

step "published Secret"
kubectl -n "$NS" get secret smtp-active-relay -o jsonpath='{.data.SMTP_HOST}' | base64 -d; echo

step "rotation: a wrong password turns Ready False, generation stays active"
kubectl -n "$NS" create secret generic relay-password --from-literal=password=wrong \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" wait --for=condition=Ready=false externalsmtp/relay --timeout=60s
kubectl -n "$NS" get externalsmtp relay -o jsonpath='{.status.activeGeneration}'; echo

step "leader handover: delete the leader pod"
leader=$(kubectl -n smtpctl-system get lease smtpctl-operator -o jsonpath='{.spec.holderIdentity}')
kubectl -n smtpctl-system delete pod "$leader" --wait=false
sleep 20
kubectl -n smtpctl-system get lease smtpctl-operator -o jsonpath='{.spec.holderIdentity}'; echo

step "deletion with finalizer cleanup"
kubectl -n "$NS" delete externalsmtp relay --timeout=60s
! kubectl -n "$NS" get secret smtp-active-relay 2>/dev/null

step "uninstall as docs/operator.md says: resources first, then the install; nothing stuck"
kubectl delete externalsmtps,oauth2providers --all -A --wait --timeout=60s
kubectl delete -k manifests/operator --wait --timeout=120s
! kubectl get crd externalsmtps.smtp.reconciler.dev 2>/dev/null
echo; echo "e2e-kind: all scenarios passed"
