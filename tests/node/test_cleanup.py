"""Stopping the local cluster leaves nothing behind on the machine: the node's own start and stop, with
mounts, network links and namespaces, iptables rules, kernel switches, pod cgroups and processes listed
before and after (own_cluster: one node per machine, so it runs when the shared cluster is gone)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from hack.cluster import start_control_plane, stop_control_plane

pytestmark = pytest.mark.own_cluster

SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables")


def _run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def host_state(state_dir: Path) -> dict[str, object]:
    """What a node could leave behind, in a form that compares equal when nothing changed."""
    rules = [
        re.sub(r"\[\d+:\d+\]", "", line)  # chain counters move with any traffic
        for save in ("iptables-save", "ip6tables-save")
        for table in ("filter", "nat", "mangle")
        for line in _run(save, "-t", table).splitlines()
        if not line.startswith("#")
    ]
    processes = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(state_dir) in cmdline or "containerd-shim" in cmdline:
            processes.append(cmdline)
    return {
        # buildah's storage (hack/images.sh) mounts and unmounts itself as it likes: not the node's
        "mounts": sorted(
            line
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if "/var/lib/containers/" not in line
        ),
        "links": sorted(line.split(":")[1].strip() for line in _run("ip", "-o", "link", "show").splitlines()),
        "netns": sorted(_run("ip", "netns", "list").split()),
        "iptables": rules,
        "sysctls": {key: Path("/proc/sys", key).read_text().strip() for key in SYSCTLS},
        "pod cgroups": sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods*")),
        "processes": sorted(processes),
    }


def test_stop_removes_everything_the_node_made(tmp_path):
    state = tmp_path / "cluster"
    before = host_state(state)
    try:
        plane = start_control_plane(state, max_seconds=600, node=True)
        assert plane.node is not None
        running = host_state(state)
    finally:
        stop_control_plane(state)
    after = host_state(state)

    # The node did make all of these while it ran ...
    assert {"kt-node0", "kt-cni0"} <= {link.split("@")[0] for link in running["links"]}
    assert running["netns"] and running["processes"] and running["pod cgroups"]
    assert any("KAITO-TUNE-NODE" in rule for rule in running["iptables"])
    assert any("KUBE-SERVICES" in rule for rule in running["iptables"])
    assert len(running["mounts"]) > len(before["mounts"])
    # ... and stopping it took every one of them away again.
    for what, value in before.items():
        assert after[what] == value, f"{what} differ after stop"
