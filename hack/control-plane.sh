#!/usr/bin/env bash
# A real, local Kubernetes cluster for tests and demos, built by hack/build-tools.sh: etcd,
# kube-apiserver (Node and RBAC authorization enforced), kube-controller-manager and kube-scheduler, and
# with --node a real node (hack/node.sh: kubelet, containerd + runc, CNI bridge, kube-proxy, CoreDNS,
# local-path-provisioner) running the project's images (hack/images.sh).
#
#   hack/control-plane.sh start [STATE_DIR] [--node]
#                                             start, wait until ready, print `export KUBECONFIG=...`
#                                             (eval "$(hack/control-plane.sh start)" works)
#   hack/control-plane.sh stop  STATE_DIR     stop everything started in STATE_DIR (by PID); with a node,
#                                             pods first, then kubelet and containerd, and remove the
#                                             mounts, network namespaces, bridges and iptables rules
#
# STATE_DIR (default: a new folder under ${TMPDIR:-/tmp}) holds certificates, the admin kubeconfig,
# etcd data, logs (logs/*.log, kept after stop for post-mortems) and PID files (pids/*.pid).
# Environment:
#   CONTROL_PLANE_OWNER_PID     stop automatically once this process is gone (the pytest process)
#   CONTROL_PLANE_MAX_SECONDS   stop automatically after this many seconds (default 14400)
# Without --node everything listens on 127.0.0.1 and pods stay Pending; with it the API server listens
# on the node address (pods reach it as the `kubernetes` Service) and the node needs root.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/node.sh
source "$HACK_DIR/node.sh"
# Controllers needed by Jobs, pods with service account tokens, namespace deletion, owner-reference
# garbage collection and the workloads an inference Workspace renders.
CONTROLLERS="job,garbagecollector,serviceaccount,serviceaccount-token,namespace,root-ca-cert-publisher"
CONTROLLERS+=",ttl-after-finished,deployment,replicaset,statefulset,podgc,nodelifecycle"
# Services (kube-proxy and CoreDNS read EndpointSlices) and claims bound to provisioned volumes.
CONTROLLERS+=",endpoint,endpointslice,persistentvolume-binder,pv-protection,pvc-protection"
SERVICE_CIDR="10.96.0.0/24"
READY_TIMEOUT_S=120

log() { echo "[control-plane] $*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

tool() {
  "$HACK_DIR/build-tools.sh" --print-path "$1" 2>/dev/null \
    || die "$1 is not built: run hack/build-tools.sh (binaries are cached under \${KAITO_TUNE_CACHE:-\$HOME/.cache/kaito-tune}/tools)"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---- certificates -------------------------------------------------------------------------------

gen_cert() { # NAME SUBJECT EXTENSIONS...: an EC key and a cert signed by the local CA
  local name="$1" subject="$2"
  shift 2
  local ext=()
  for e in "$@"; do ext+=(-addext "$e"); done
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -CA pki/ca.crt -CAkey pki/ca.key -subj "$subject" "${ext[@]}" \
    -keyout "pki/$name.key" -out "pki/$name.crt" 2>/dev/null
}

gen_pki() {
  mkdir -p pki
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -subj "/CN=kaito-tune-local-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -keyout pki/ca.key -out pki/ca.crt 2>/dev/null
  # 10.96.0.1 is the `kubernetes` Service that in-cluster clients dial.
  gen_cert apiserver "/CN=kube-apiserver" \
    "subjectAltName=IP:$API_HOST,IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
    "extendedKeyUsage=serverAuth" "keyUsage=critical,digitalSignature,keyEncipherment"
  # system:masters bypasses RBAC: only the admin has it; every other identity is checked by RBAC.
  gen_cert admin "/O=system:masters/CN=kaito-tune-admin" "extendedKeyUsage=clientAuth"
  gen_cert controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
  gen_cert kcm-serving "/CN=kube-controller-manager" "subjectAltName=IP:127.0.0.1" "extendedKeyUsage=serverAuth"
  gen_cert scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
  gen_cert scheduler-serving "/CN=kube-scheduler" "subjectAltName=IP:127.0.0.1" "extendedKeyUsage=serverAuth"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out pki/sa.key 2>/dev/null
  openssl pkey -in pki/sa.key -pubout -out pki/sa.pub 2>/dev/null
}

write_kubeconfig() { # FILE CERT_NAME USER
  local file="$1" cert="$2" user="$3"
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://$API_HOST:$API_PORT
    certificate-authority-data: $(base64 -w0 pki/ca.crt)
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "pki/$cert.crt")
    client-key-data: $(base64 -w0 "pki/$cert.key")
contexts:
- name: $user@local
  context: {cluster: local, user: $user, namespace: default}
current-context: $user@local
EOF
  chmod 600 "$file"
}

# ---- processes ----------------------------------------------------------------------------------

launch() { # NAME CMD...: detached (own session), no inherited stdio, PID in pids/NAME.pid
  local name="$1"
  shift
  setsid "$@" </dev/null >>"logs/$name.log" 2>&1 &
  echo $! >"pids/$name.pid"
}

alive() { [[ -f "pids/$1.pid" ]] && kill -0 "$(cat "pids/$1.pid")" 2>/dev/null; }

wait_until() { # NAME WHAT CMD...: until CMD succeeds; dies when NAME exited or after READY_TIMEOUT_S
  local name="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + READY_TIMEOUT_S))
  until "$@" >/dev/null 2>&1; do
    alive "$name" || die "$name exited during start-up; last lines of $PWD/logs/$name.log:
$(tail -n 25 "logs/$name.log")"
    ((SECONDS < deadline)) || die "$what not ready after ${READY_TIMEOUT_S}s; see $PWD/logs/$name.log"
    sleep 0.2
  done
}

wait_for() { # NAME URL [CURL ARGS...]: until URL answers 200 or NAME exited
  local name="$1" url="$2"
  shift 2
  wait_until "$name" "$name at $url" curl -sf -o /dev/null --max-time 2 "$@" "$url"
}

# Stops the control plane when the owner process is gone or the time limit passes, so an aborted
# test session never leaves servers behind.
start_watchdog() {
  local owner="${CONTROL_PLANE_OWNER_PID:-}" max="${CONTROL_PLANE_MAX_SECONDS:-14400}"
  setsid bash -c '
    end=$((SECONDS + $2))
    while ((SECONDS < end)); do
      if [[ -n "$3" ]] && ! kill -0 "$3" 2>/dev/null; then break; fi
      sleep 2
    done
    [[ -d "$1/pids" ]] && exec "$0" stop "$1" --from-watchdog
    # The state folder is gone (pytest rotates its temporary folders): find the servers by the
    # folder in their command lines, the same test stop_one makes before it signals a PID.
    pkill -TERM -f -- "$1/" ; sleep 10 ; pkill -KILL -f -- "$1/"
  ' "$HACK_DIR/control-plane.sh" "$PWD" "$max" "$owner" </dev/null >>logs/watchdog.log 2>&1 &
  echo $! >pids/watchdog.pid
}

stop_one() { # NAME...: TERM all together, then KILL after 10 s; only PIDs still running what we started
  local name pid pids=()
  for name in "$@"; do
    [[ -f "pids/$name.pid" ]] || continue
    pid="$(cat "pids/$name.pid")"
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$PWD"; then
      kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    fi
    rm -f "pids/$name.pid"
  done
  local running
  for _ in $(seq 100); do
    running=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
    ((running)) || return 0
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

cmd_start() {
  local state="" with_node=""
  for arg in "$@"; do
    case "$arg" in
      --node) with_node=1 ;;
      *) state="$arg" ;;
    esac
  done
  [[ -n "$state" ]] || state="$(mktemp -d "${TMPDIR:-/tmp}/kaito-control-plane.XXXXXX")"
  mkdir -p "$state"
  cd "$state"
  [[ -z "$(ls pids/*.pid 2>/dev/null)" ]] || die "$state already has a running control plane: run '$0 stop $state' first"
  local etcd apiserver kcm scheduler
  etcd="$(tool etcd)"
  apiserver="$(tool kube-apiserver)"
  kcm="$(tool kube-controller-manager)"
  scheduler="$(tool kube-scheduler)"
  API_HOST=127.0.0.1
  if [[ -n "$with_node" ]]; then
    [[ $EUID -eq 0 ]] || die "--node needs root (bridges, iptables, mounts); run without --node for an API-only cluster"
    API_HOST="$NODE_IP"
  fi
  local t0=$EPOCHREALTIME
  # Each start is a fresh cluster: new certificates, ports and an empty etcd (logs are appended).
  rm -rf etcd-data pki node
  mkdir -p logs pids etcd-data
  # A failed start stops what it had started, keeping the logs.
  trap 'cmd_stop "$PWD" >/dev/null 2>&1' EXIT
  if [[ -n "$with_node" ]]; then
    node_lock
    node_network_up
  fi
  gen_pki
  [[ -z "$with_node" ]] || gen_node_pki
  ETCD_PORT="$(free_port)"
  ETCD_PEER_PORT="$(free_port)"
  API_PORT="$(free_port)"
  KCM_PORT="$(free_port)"
  SCHEDULER_PORT="$(free_port)"
  write_kubeconfig kubeconfig admin kaito-tune-admin
  write_kubeconfig controller-manager.kubeconfig controller-manager system:kube-controller-manager
  write_kubeconfig scheduler.kubeconfig scheduler system:kube-scheduler
  start_watchdog

  launch etcd "$etcd" --name local --data-dir "$PWD/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --quota-backend-bytes 2147483648 --log-level warn
  wait_for etcd "http://127.0.0.1:$ETCD_PORT/health"

  # With a node the `kubernetes` Service's endpoint is the node address (kube-proxy routes 10.96.0.1
  # there); without one no endpoint is kept, since Endpoints may not point at loopback.
  local api_flags=(--authorization-mode RBAC --endpoint-reconciler-type none)
  if [[ -n "$with_node" ]]; then
    api_flags=(--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction
      --kubelet-client-certificate "$PWD/pki/apiserver-kubelet-client.crt"
      --kubelet-client-key "$PWD/pki/apiserver-kubelet-client.key"
      --kubelet-certificate-authority "$PWD/pki/ca.crt" --kubelet-preferred-address-types InternalIP)
  fi
  launch kube-apiserver "$apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$API_HOST" --advertise-address "$API_HOST" --secure-port "$API_PORT" \
    --tls-cert-file "$PWD/pki/apiserver.crt" --tls-private-key-file "$PWD/pki/apiserver.key" \
    --client-ca-file "$PWD/pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PWD/pki/sa.pub" --service-account-signing-key-file "$PWD/pki/sa.key" \
    "${api_flags[@]}" --service-cluster-ip-range "$SERVICE_CIDR" \
    --allow-privileged --profiling=false \
    --storage-media-type application/vnd.kubernetes.protobuf --v 1
  wait_for kube-apiserver "https://$API_HOST:$API_PORT/readyz" --cacert pki/ca.crt \
    --cert pki/admin.crt --key pki/admin.key

  launch kube-controller-manager "$kcm" \
    --kubeconfig "$PWD/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$PWD/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$PWD/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
    --tls-cert-file "$PWD/pki/kcm-serving.crt" --tls-private-key-file "$PWD/pki/kcm-serving.key" \
    --controllers "$CONTROLLERS" --leader-elect=false \
    --use-service-account-credentials --service-account-private-key-file "$PWD/pki/sa.key" \
    --root-ca-file "$PWD/pki/ca.crt" --cluster-name local --v 1
  wait_for kube-controller-manager "https://127.0.0.1:$KCM_PORT/healthz" --cacert pki/ca.crt

  launch kube-scheduler "$scheduler" \
    --kubeconfig "$PWD/scheduler.kubeconfig" \
    --authentication-kubeconfig "$PWD/scheduler.kubeconfig" \
    --authorization-kubeconfig "$PWD/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" \
    --tls-cert-file "$PWD/pki/scheduler-serving.crt" --tls-private-key-file "$PWD/pki/scheduler-serving.key" \
    --leader-elect=false --v 1
  wait_for kube-scheduler "https://127.0.0.1:$SCHEDULER_PORT/healthz" --cacert pki/ca.crt

  NODE_READY_S=""
  [[ -z "$with_node" ]] || start_node

  cat >env <<EOF
KUBECONFIG=$PWD/kubeconfig
API_SERVER=https://$API_HOST:$API_PORT
ETCD=http://127.0.0.1:$ETCD_PORT
STATE_DIR=$PWD
EOF
  [[ -z "$with_node" ]] || cat >>env <<EOF
NODE_NAME=$NODE_NAME
NODE_IP=$NODE_IP
IMAGE_REGISTRY=$IMAGE_REGISTRY
NODE_READY_S=$NODE_READY_S
EOF
  trap - EXIT
  # stdout can be eval'ed: one export, then a comment line with the figures.
  echo "export KUBECONFIG=$PWD/kubeconfig"
  echo "# control plane ready in $(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $t0}")s at https://$API_HOST:$API_PORT;" \
    "${NODE_READY_S:+node $NODE_NAME Ready ${NODE_READY_S}s after kubelet started;}" \
    "logs in $PWD/logs; stop with: $HACK_DIR/control-plane.sh stop $PWD"
}

cmd_stop() {
  local state="${1:-}"
  [[ -n "$state" && -d "$state" ]] || die "usage: $0 stop STATE_DIR (the folder 'start' used)"
  cd "$state"
  [[ "${2:-}" == --from-watchdog ]] && log "watchdog: owner gone or time limit reached, stopping"
  stop_node
  stop_one kube-scheduler kube-controller-manager kube-apiserver
  stop_one etcd # after the API server, which removes its lease on the way out
  stop_node_network
  [[ "${2:-}" == --from-watchdog ]] || stop_one watchdog
  rm -f pids/watchdog.pid
  log "stopped (logs kept in $PWD/logs)"
}

case "${1:-}" in
  start) cmd_start "${@:2}" ;;
  stop) cmd_stop "${2:-}" "${3:-}" ;;
  *) die "usage: $0 start [STATE_DIR] [--node] | stop STATE_DIR" ;;
esac
