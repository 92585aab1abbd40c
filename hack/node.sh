# shellcheck shell=bash
# The local cluster's node, sourced by hack/control-plane.sh (start --node): a real kubelet with
# containerd + runc, pods on a CNI bridge, kube-proxy (iptables), CoreDNS and local-path-provisioner as
# the cluster add-ons, and the project's images served by a registry on the node address.
#
# Network (every address is internal to this machine; nothing is routed out or masqueraded):
#   NODE_IP        on an empty bridge: kubelet, the API server and the local registries listen here,
#                  reachable from the host and from pods (kubelet refuses a loopback node IP)
#   POD_CIDR       the CNI bridge; FORWARD drops anything between it and any other interface
#   10.96.0.0/24   Services (kube-proxy), 10.96.0.1 the API server, 10.96.0.10 CoreDNS
# One node per machine: kubelet hard-codes /var/lib/kubelet/device-plugins and /var/log/containers,
# so a second start fails with the state folder of the node that runs (NODE_LOCK).
# Images and their unpacked layers live in a cache that survives the node (as a real node keeps its
# images): ${KAITO_TUNE_CACHE:-$HOME/.cache/kaito-tune}/node/. Everything else is under STATE/node.

NODE_NAME="local-node"
NODE_IP="10.250.0.1"
NODE_BRIDGE="kt-node0"
POD_BRIDGE="kt-cni0"
POD_CIDR="10.244.0.0/24"
CLUSTER_DNS="10.96.0.10"
KUBELET_PORT=10250
IMAGE_REGISTRY_PORT=25000
NODE_LOCK="/run/kaito-tune-node"
FORWARD_CHAIN="KAITO-TUNE-NODE"
# Labels and one GPU: Workspaces in the tests and examples select apps=phi-3 or kaito-tune/local-node.
NODE_LABELS="apps=phi-3,kaito-tune/local-node=true"
NODE_GPUS=1
NODE_CACHE="${KAITO_TUNE_CACHE:-$HOME/.cache/kaito-tune}/node"
# Sockets, runtime state and kubelet's root: a short fixed path, since unix socket paths may not exceed
# 104 bytes (a test's temporary folder does); removed at stop.
NODE_RUN="/var/lib/kaito-tune-node"

ctr_() { "$(tool ctr)" --address "$NODE_RUN/containerd.sock" -n k8s.io "$@"; }
kubectl_() { "$(tool kubectl)" --kubeconfig "$PWD/kubeconfig" "$@"; }

# ---- lock: one node per machine ---------------------------------------------------------------------

node_lock() {
  if ! mkdir "$NODE_LOCK" 2>/dev/null; then
    local other
    other="$(cat "$NODE_LOCK/state" 2>/dev/null || true)"
    if [[ -n "$other" && -f "$other/pids/kubelet.pid" ]] && kill -0 "$(cat "$other/pids/kubelet.pid")" 2>/dev/null; then
      die "a local node already runs from $other: stop it first ($HACK_DIR/control-plane.sh stop $other)"
    fi
    log "removing the leftovers of a node that did not stop ($other)"
    [[ -n "$other" && -d "$other" ]] && (cmd_stop "$other" >/dev/null 2>&1 || true)
    node_network_down
    rm -rf "$NODE_LOCK"
    mkdir "$NODE_LOCK"
  fi
  echo "$PWD" >"$NODE_LOCK/state"
}

node_unlock() {
  [[ "$(cat "$NODE_LOCK/state" 2>/dev/null)" == "$PWD" ]] && rm -rf "$NODE_LOCK"
  return 0
}

# ---- network ----------------------------------------------------------------------------------------

sysctl_set() { # KEY VALUE: remember the old value once (restored by node_network_down)
  local key="$1" file="/proc/sys/${1//.//}"
  grep -q "^$key=" "$NODE_LOCK/sysctl" 2>/dev/null || echo "$key=$(cat "$file")" >>"$NODE_LOCK/sysctl"
  echo "$2" >"$file"
}

node_network_up() {
  ip link add "$NODE_BRIDGE" type bridge 2>/dev/null || true
  ip addr replace "$NODE_IP/32" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Pod traffic stays on the pod bridge or goes to this machine's own addresses (INPUT): whatever would
  # be forwarded to or from another interface is dropped, before kube-proxy's and CNI's rules.
  iptables -w -N "$FORWARD_CHAIN" 2>/dev/null || iptables -w -F "$FORWARD_CHAIN"
  iptables -w -A "$FORWARD_CHAIN" -s "$POD_CIDR" ! -o "$POD_BRIDGE" -j DROP
  iptables -w -A "$FORWARD_CHAIN" -d "$POD_CIDR" ! -i "$POD_BRIDGE" -j DROP
  iptables -w -C FORWARD -j "$FORWARD_CHAIN" 2>/dev/null || iptables -w -I FORWARD 1 -j "$FORWARD_CHAIN"
  # The bridge plugin turns forwarding on; kube-proxy's Service rules need bridged traffic in iptables.
  sysctl_set net.ipv4.ip_forward 1
  sysctl_set net.bridge.bridge-nf-call-iptables 1
}

node_network_down() {
  ip link del "$POD_BRIDGE" 2>/dev/null || true
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  while iptables -w -D FORWARD -j "$FORWARD_CHAIN" 2>/dev/null; do :; done
  iptables -w -F "$FORWARD_CHAIN" 2>/dev/null && iptables -w -X "$FORWARD_CHAIN" 2>/dev/null
  local line
  if [[ -f "$NODE_LOCK/sysctl" ]]; then
    while IFS='=' read -r key value; do
      echo "$value" >"/proc/sys/${key//.//}" || true
    done <"$NODE_LOCK/sysctl"
    rm -f "$NODE_LOCK/sysctl"
  fi
  for line in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do ip netns del "$line" || true; done
  return 0
}

# ---- certificates and configuration -------------------------------------------------------------------

gen_node_pki() {
  gen_cert kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth"
  gen_cert kubelet-serving "/CN=$NODE_NAME" "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME" "extendedKeyUsage=serverAuth"
  gen_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
  gen_cert kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
}

write_node_config() {
  local n="$PWD/node"
  node_unmount # what a node that was killed outright left
  mkdir -p "$n"/{certs.d,cni/net.d,cni/ipam,pod-logs,local-path,local-path-shared} "$NODE_CACHE/containerd" "$NODE_RUN"
  write_kubeconfig "$n/kubelet.kubeconfig" kubelet-client "system:node:$NODE_NAME"
  write_kubeconfig "$n/kube-proxy.kubeconfig" kube-proxy system:kube-proxy
  : >"$n/resolv.conf" # pods resolve cluster names only: CoreDNS forwards nothing out of the machine
  cat >"$n/containerd.toml" <<EOF
version = 3
root = "$NODE_CACHE/containerd"
state = "$NODE_RUN/containerd-state"
[grpc]
  address = "$NODE_RUN/containerd.sock"
[ttrpc]
  address = "$NODE_RUN/containerd.sock.ttrpc"
[metrics]
  address = ""
[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "$PAUSE_IMAGE"
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = "$n/certs.d"
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    # This machine's root lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below its parent's.
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "$(command -v runc)"
          SystemdCgroup = false
          Root = "$NODE_RUN/runc"
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = "$n/cni/net.d"
  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
EOF
  cat >"$n/cni/net.d/10-kaito-tune.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "kaito-tune", "plugins": [
  {"type": "bridge", "bridge": "$POD_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$n/cni/ipam"}},
  {"type": "loopback"}]}
EOF
  cat >"$n/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$NODE_RUN/containerd.sock
imageServiceEndpoint: unix://$NODE_RUN/containerd.sock
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTH_PORT
tlsCertFile: $PWD/pki/kubelet-serving.crt
tlsPrivateKeyFile: $PWD/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PWD/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$CLUSTER_DNS]
resolvConf: $n/resolv.conf
maxPods: 60
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
makeIPTablesUtilChains: false
# Images are pulled from the node's registry only; no preloaded image is shared between two names.
imagePullCredentialsVerificationPolicy: NeverVerify
podLogsDir: $n/pod-logs
EOF
  cat >"$n/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $n/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$PROXY_HEALTH_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
mode: iptables
clusterCIDR: $POD_CIDR
nodePortAddresses: ["$NODE_IP/32"]
conntrack: {maxPerCore: 0, min: 0}
iptables: {localhostNodePorts: false}
EOF
}

# Registry mirrors: image names the chart uses (ghcr.io/...) and the add-ons' (localhost/...) resolve to
# the node's registry, so nothing is pulled from outside and the rendered image names stay as they are;
# and the node's registry by its own name (plain HTTP): the local model mirror, mounted as image volumes.
write_registry_hosts() {
  local host
  for host in ghcr.io localhost "$IMAGE_REGISTRY"; do
    mkdir -p "node/certs.d/$host"
    printf 'server = "http://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
      "$IMAGE_REGISTRY" "$IMAGE_REGISTRY" >"node/certs.d/$host/hosts.toml"
  done
}

# ---- start ------------------------------------------------------------------------------------------

start_image_registry() {
  local storage="$NODE_CACHE/image-registry"
  mkdir -p "$storage"
  # A fixed address: containers/image remembers which layers it pushed where, so an unchanged layer is
  # neither recompressed nor uploaded again (a new port each start would re-push gigabytes).
  IMAGE_REGISTRY="$NODE_IP:$IMAGE_REGISTRY_PORT"
  cat >node/image-registry.yml <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $storage}, delete: {enabled: true}}
http: {addr: $IMAGE_REGISTRY}
EOF
  # Layers of images that were rebuilt since are no longer referenced: free their space first.
  docker-registry garbage-collect --delete-untagged "$PWD/node/image-registry.yml" >>logs/image-registry-gc.log 2>&1 \
    || log "registry garbage collection failed (see $PWD/logs/image-registry-gc.log); going on"
  launch image-registry docker-registry serve "$PWD/node/image-registry.yml"
  wait_for image-registry "http://$IMAGE_REGISTRY/v2/"
  # Unchanged images cost a manifest check; a rebuilt one uploads its new layers.
  "$HACK_DIR/images.sh" push "$IMAGE_REGISTRY" >>logs/image-push.log 2>&1 \
    || die "pushing the project's images to $IMAGE_REGISTRY failed; see $PWD/logs/image-push.log"
}

# Pull every image once at start so a rebuilt image replaces the node's copy of the same tag (kubelet's
# IfNotPresent would keep the old one); layers the node has are not fetched again.
pull_images() {
  local source start current=() ref digest
  while read -r source _; do
    start=$EPOCHREALTIME
    ctr_ images pull --hosts-dir "$PWD/node/certs.d" "$source" >>logs/image-pull.log 2>&1 \
      || die "containerd could not pull $source from $IMAGE_REGISTRY; see $PWD/logs/image-pull.log"
    echo "$source $(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $start}")s" >>logs/image-pull-times.log
    current+=("$(ctr_ images ls "name==$source" | awk 'NR == 2 {print $3}')")
  done < <("$HACK_DIR/images.sh" list)
  # Names of earlier builds (CRI also names an image by its digest and ID) keep gigabytes alive:
  # drop every name that points at none of today's images, and containerd collects what they held.
  while read -r ref _ digest; do
    [[ " ${current[*]} " == *" $digest "* ]] || ctr_ images rm --sync "$ref" >>logs/image-pull.log 2>&1 || true
  done < <(ctr_ images ls | awk 'NR > 1 {print $1, $2, $3}')
}

node_ready() {
  [[ "$(kubectl_ get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

start_node() {
  local containerd kubelet proxy
  containerd="$(tool containerd)"
  kubelet="$(tool kubelet)"
  proxy="$(tool kube-proxy)"
  tool ctr >/dev/null
  tool kubectl >/dev/null
  # containerd finds its runc shim on PATH.
  PATH="$(dirname "$(tool containerd-shim-runc-v2)"):$PATH"
  export PATH
  command -v runc >/dev/null || die "runc is not installed: apt-get install runc"
  KUBELET_HEALTH_PORT="$(free_port)"
  PROXY_HEALTH_PORT="$(free_port)"
  PROXY_METRICS_PORT="$(free_port)"
  PAUSE_IMAGE="localhost/kaito-tune/pause:3.10"
  write_node_config
  start_image_registry
  write_registry_hosts

  launch containerd "$containerd" --config "$PWD/node/containerd.toml"
  READY_TIMEOUT_S=30 wait_until containerd containerd ctr_ version
  # A node that did not stop cleanly may have left containers in the cache's store.
  local stale
  stale="$(ctr_ containers ls -q 2>/dev/null || true)"
  [[ -z "$stale" ]] || ctr_ containers rm $stale >/dev/null 2>&1 || true
  pull_images

  local t_kubelet=$EPOCHREALTIME
  launch kubelet "$kubelet" --config "$PWD/node/kubelet.yaml" --kubeconfig "$PWD/node/kubelet.kubeconfig" \
    --root-dir "$NODE_RUN/kubelet" --cert-dir "$PWD/node/kubelet-pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --node-labels "$NODE_LABELS" --v 1
  wait_until kubelet "node $NODE_NAME" node_ready
  NODE_READY_S="$(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $t_kubelet}")"
  # A GPU count the scheduler and kubelet admit pods against (there is no device to hand out here).
  # Allocatable too, so the scheduler sees it at once rather than after kubelet's next status update.
  local gpu="nvidia.com~1gpu"
  kubectl_ patch node "$NODE_NAME" --subresource=status --type=json -p "[
    {\"op\": \"add\", \"path\": \"/status/capacity/$gpu\", \"value\": \"$NODE_GPUS\"},
    {\"op\": \"add\", \"path\": \"/status/allocatable/$gpu\", \"value\": \"$NODE_GPUS\"}]" >/dev/null

  launch kube-proxy "$proxy" --config "$PWD/node/kube-proxy.yaml" --v 1
  wait_for kube-proxy "http://127.0.0.1:$PROXY_HEALTH_PORT/healthz"
  start_addons
}

start_addons() {
  sed -e "s#@CLUSTER_DNS@#$CLUSTER_DNS#g" -e "s#@NODE_PATH@#$PWD/node/local-path#g" \
    "$HACK_DIR/addons.yaml" >node/addons.yaml
  kubectl_ apply --server-side --field-manager kaito-tune-local -f node/addons.yaml >>logs/addons.log
  launch local-path-provisioner "$(tool local-path-provisioner)" start --kubeconfig "$PWD/kubeconfig" \
    --namespace kube-system --configmap-name local-path-config --service-account-name local-path-provisioner \
    --helper-image localhost/kaito-tune/busybox:1.35 --provisioner-name rancher.io/local-path
  kubectl_ -n kube-system rollout status deployment/coredns --timeout "${READY_TIMEOUT_S}s" >>logs/addons.log \
    || die "CoreDNS did not become ready; see $PWD/logs/kubelet.log and: kubectl -n kube-system describe pods"
}

# ---- stop -------------------------------------------------------------------------------------------

# Mounts kubelet and containerd made (volumes, rootfs, sandbox shm), deepest first; then NODE_RUN.
node_unmount() {
  awk -v a="$PWD/node/" -v b="$NODE_CACHE/" -v c="$NODE_RUN/" \
    'index($2, a) == 1 || index($2, b) == 1 || index($2, c) == 1 {print $2}' /proc/self/mounts \
    | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$NODE_RUN"
}

stop_node() {
  [[ -d node ]] || return 0
  # No controller may replace the pods deleted below.
  stop_one kube-controller-manager kube-scheduler
  if alive kubelet && alive kube-apiserver; then
    # Pods first, while kubelet can still stop them gracefully and release their volumes and IPs.
    kubectl_ delete pods --all --all-namespaces --grace-period 2 --wait=false >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 40))
    while ((SECONDS < deadline)) && [[ -n "$(kubectl_ get pods -A -o name 2>/dev/null)" ]]; do sleep 0.5; done
  fi
  stop_one local-path-provisioner kube-proxy
  [[ -x "$(tool kube-proxy 2>/dev/null)" ]] && "$(tool kube-proxy)" --cleanup >>logs/kube-proxy.log 2>&1
  stop_one kubelet
  # kubelet's own chain (it guards 127.0.0.0/8 from routed packets); kube-proxy --cleanup leaves it.
  local ipt
  for ipt in iptables ip6tables; do
    while "$ipt" -w -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    while "$ipt" -w -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    "$ipt" -w -F KUBE-FIREWALL 2>/dev/null && "$ipt" -w -X KUBE-FIREWALL 2>/dev/null
  done
  if alive containerd; then
    local ids
    ids="$(ctr_ tasks ls -q 2>/dev/null || true)"
    for id in $ids; do ctr_ tasks kill -s KILL "$id" >/dev/null 2>&1 || true; done
    for id in $ids; do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
    ids="$(ctr_ containers ls -q 2>/dev/null || true)"
    [[ -z "$ids" ]] || ctr_ containers rm $ids >/dev/null 2>&1 || true
  fi
  stop_one containerd image-registry
  pkill -TERM -f -- "containerd-shim-runc-v2 -namespace k8s.io -id .* -address $NODE_RUN/" 2>/dev/null || true
  node_unmount
  find /sys/fs/cgroup/*/kubepods -depth -type d -exec rmdir {} \; 2>/dev/null || true
  find /var/log/containers -maxdepth 1 -lname "$PWD/node/*" -delete 2>/dev/null || true
  rm -rf /var/lib/cni/results/kaito-tune-* /var/lib/kubelet/device-plugins/kubelet.sock
}

# After the control plane: the API server listens on NODE_IP until it has stopped.
stop_node_network() {
  [[ -d node ]] || return 0
  node_network_down
  node_unlock
}
