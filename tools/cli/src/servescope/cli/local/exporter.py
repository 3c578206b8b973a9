"""The cAdvisor and kube-state-metrics series of a cluster, for local mode's processes.

In Kubernetes the kubelet's embedded cAdvisor (scraped by kube-prometheus-stack as job
`kubelet`, path /metrics/cadvisor) publishes each container's cgroup accounting, and
kube-state-metrics (job `kube-state-metrics`) publishes each container's spec and status from
the API server. The rules in deploy/prometheus/rules/kubernetes.alerts.yml, the pods dashboard
and the responder's saturation playbook read those series. This exporter serves the same names
and labels, computed from local mode's own cgroups and its supervisor, on two paths of one
port of 127.0.0.1, which deploy/local/prometheus.yml scrapes as jobs `kubelet` and
`kube-state-metrics`:

* /metrics/cadvisor: names from cAdvisor's metrics/prometheus.go (`container_memory_*`,
  `container_spec_memory_limit_bytes`, `container_cpu_usage_seconds_total{cpu="total"}`,
  `container_cpu_cfs_*` for containers with a CPU quota, `container_oom_events_total`), with
  the labels the kubelet gives them: `container`, `id` (the cgroup), `image`, `name`,
  `namespace`, `pod`. Values from cgroups.Usage (cAdvisor's libcontainer handler formulas).
* /metrics/kube-state-metrics: names from kube-state-metrics' internal/store/pod.go
  (`kube_pod_container_info`, `kube_pod_container_status_restarts_total`,
  `kube_pod_container_status_last_terminated_reason`,
  `kube_pod_container_status_last_terminated_exitcode`, `kube_pod_container_resource_limits`
  and `_requests` with `resource` and `unit`), labels `namespace`, `pod`, `uid`, `container`.

Names match what the chart produces (deploy/helm/servescope: container = component, namespace
`servescope` as skaffold deploys it, image `servescope-<component>`); the pod is
`servescope-<component>-local`, one stable name per process across restarts, like a pod whose
container the kubelet restarts. A process without a cgroup (none available, or not wanted) has
kube-state-metrics series only, as a container whose cAdvisor stats are missing.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from servescope.cli.local.cgroups import Cgroup, Limits
from servescope.cli.local.supervisor import ContainerStatus

NAMESPACE = "servescope"
REASONS = ("OOMKilled", "Error", "Completed")


@dataclass
class Container:
    """One local process as Kubernetes would name it."""

    name: str
    limits: Limits = field(default_factory=Limits)
    cgroup: Cgroup | None = None
    namespace: str = NAMESPACE
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def pod(self) -> str:
        return f"servescope-{self.name}-local"

    @property
    def image(self) -> str:
        return f"servescope-{self.name}:local"

    @property
    def cgroup_id(self) -> str:
        if self.cgroup is None:
            return ""
        return "/" + self.cgroup.dirs[0].name


def _labels(**labels: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def add(self, value: float, **labels: str) -> None:
        self.lines.append(f"{self.name}{_labels(**labels)} {value:.17g}")


def cadvisor_text(containers: Iterable[Container]) -> str:
    families = {
        name: _Family(name, kind, text)
        for name, kind, text in (
            (
                "container_memory_working_set_bytes",
                "gauge",
                "Current working set of the container in bytes",
            ),
            ("container_memory_rss", "gauge", "Size of RSS in bytes."),
            ("container_memory_cache", "gauge", "Number of bytes of page cache memory."),
            ("container_memory_mapped_file", "gauge", "Size of memory mapped files in bytes."),
            (
                "container_memory_usage_bytes",
                "gauge",
                "Current memory usage in bytes, including all memory regardless of when it was "
                "accessed",
            ),
            ("container_memory_max_usage_bytes", "gauge", "Maximum memory usage recorded in bytes"),
            ("container_spec_memory_limit_bytes", "gauge", "Memory limit for the container."),
            ("container_spec_cpu_quota", "gauge", "CPU quota of the container."),
            ("container_spec_cpu_period", "gauge", "CPU period of the container."),
            (
                "container_cpu_usage_seconds_total",
                "counter",
                "Cumulative cpu time consumed in seconds.",
            ),
            (
                "container_cpu_cfs_periods_total",
                "counter",
                "Number of elapsed enforcement period intervals.",
            ),
            (
                "container_cpu_cfs_throttled_periods_total",
                "counter",
                "Number of throttled period intervals.",
            ),
            (
                "container_cpu_cfs_throttled_seconds_total",
                "counter",
                "Total time duration the container has been throttled.",
            ),
            (
                "container_oom_events_total",
                "counter",
                "Count of out of memory events observed for the container",
            ),
        )
    }
    for c in containers:
        if c.cgroup is None:
            continue
        usage = c.cgroup.usage()
        labels = {
            "container": c.name,
            "id": c.cgroup_id,
            "image": c.image,
            "name": c.pod + "_" + c.name,
            "namespace": c.namespace,
            "pod": c.pod,
        }

        def put(name: str, value: float, labels: dict[str, str] = labels, **extra: str) -> None:
            families[name].add(value, **labels, **extra)

        put("container_memory_working_set_bytes", usage.working_set_bytes)
        put("container_memory_rss", usage.memory_rss_bytes)
        put("container_memory_cache", usage.memory_cache_bytes)
        put("container_memory_mapped_file", usage.memory_mapped_file_bytes)
        put("container_memory_usage_bytes", usage.memory_usage_bytes)
        put("container_memory_max_usage_bytes", usage.memory_max_usage_bytes)
        # cAdvisor's specMemoryValue: an unlimited container reports 0.
        put("container_spec_memory_limit_bytes", usage.memory_limit_bytes)
        put("container_cpu_usage_seconds_total", usage.cpu_usage_seconds, cpu="total")
        put("container_oom_events_total", usage.oom_kills)
        # cAdvisor publishes the CFS series only for containers with a quota.
        if c.limits.cpu_millicores is not None:
            period = 100_000
            put("container_spec_cpu_period", period)
            put("container_spec_cpu_quota", c.limits.cpu_millicores * period // 1000)
            put("container_cpu_cfs_periods_total", usage.cpu_periods)
            put("container_cpu_cfs_throttled_periods_total", usage.cpu_throttled_periods)
            put("container_cpu_cfs_throttled_seconds_total", usage.cpu_throttled_seconds)
    return "\n".join(line for f in families.values() for line in f.lines) + "\n"


def kube_state_text(containers: Iterable[Container], statuses: dict[str, ContainerStatus]) -> str:
    info = _Family(
        "kube_pod_container_info",
        "gauge",
        "Information about a container in a pod.",
    )
    restarts = _Family(
        "kube_pod_container_status_restarts_total",
        "counter",
        "The number of container restarts per container.",
    )
    reason = _Family(
        "kube_pod_container_status_last_terminated_reason",
        "gauge",
        "Describes the last reason the container was in terminated state.",
    )
    exitcode = _Family(
        "kube_pod_container_status_last_terminated_exitcode",
        "gauge",
        "Describes the exit code for the last container in terminated state.",
    )
    limits = _Family(
        "kube_pod_container_resource_limits",
        "gauge",
        "The number of requested limit resource by a container.",
    )
    requests = _Family(
        "kube_pod_container_resource_requests",
        "gauge",
        "The number of requested request resource by a container.",
    )
    for c in containers:
        base = {"namespace": c.namespace, "pod": c.pod, "uid": c.uid, "container": c.name}
        info.add(
            1,
            **base,
            image_spec=c.image,
            image=c.image,
            image_id="",
            container_id=f"local://{c.cgroup_id.lstrip('/') or c.name}",
        )
        status = statuses.get(c.name)
        restarts.add(status.restarts if status else 0, **base)
        if status is not None and status.last_reason is not None:
            reason.add(1, **base, reason=status.last_reason)
            exitcode.add(status.last_exit_code or 0, **base)
        # Requests default to limits when only limits are set (the API server's defaulting).
        for family in (limits, requests):
            if c.limits.memory_bytes is not None:
                family.add(
                    c.limits.memory_bytes, **base, node="local", resource="memory", unit="byte"
                )
            if c.limits.cpu_millicores is not None:
                family.add(
                    c.limits.cpu_millicores / 1000,
                    **base,
                    node="local",
                    resource="cpu",
                    unit="core",
                )
    families = (info, restarts, reason, exitcode, limits, requests)
    return "\n".join(line for f in families for line in f.lines) + "\n"


class Exporter:
    """The HTTP endpoint, on a thread of the `up` process."""

    def __init__(
        self,
        containers: list[Container],
        statuses: Callable[[], dict[str, ContainerStatus]],
        port: int,
    ) -> None:
        self.containers = containers
        self.statuses = statuses
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def render(self, path: str) -> str | None:
        if path == "/metrics/cadvisor":
            return cadvisor_text(self.containers)
        if path == "/metrics/kube-state-metrics":
            return kube_state_text(self.containers, self.statuses())
        return None

    def start(self) -> None:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path in ("/-/ready", "/"):
                    body: str | None = "ok\n"
                else:
                    body = exporter.render(path)
                if body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="exporter", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.shutdown()
                self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
