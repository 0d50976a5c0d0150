"""A real Prometheus (and Pushgateway) for tests, fake scrape targets, and the scrape configs
Kubernetes would give it.

Debian's Prometheus has no Kubernetes discovery: pods are described to it through file discovery
with the `__meta_kubernetes_*` labels the pod discovery would set, so the relabelling under test
(prometheus.yml's, or the one the Prometheus Operator generates from a PodMonitor) runs in
Prometheus itself.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from tests.helpers.http import http_status
from tests.helpers.polling import eventually
from tests.helpers.ports import free_port


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen
    log_path: Path

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))["data"]["result"]

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:  # noqa: S310 (a local URL)
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body

    def scraped(self, job: str) -> bool:
        """Whether `job` has been scraped and is up (its first scrape waits for discovery's first
        update, a few seconds after start)."""
        return any(sample["value"][1] == "1" for sample in self.query(f'up{{job="{job}"}}'))

    def state(self) -> str:
        """What this Prometheus scrapes and evaluates, for a failure message."""
        targets = [(t["scrapeUrl"], t["health"], t["lastError"])
                   for t in self.get("/api/v1/targets")["data"]["activeTargets"]]
        rules = [(r["name"], r["state"], r["health"], r.get("lastError", ""))
                 for g in self.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        return f"targets {targets}; rules {rules}"

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def start_prometheus(config: dict, directory: Path, port: int | None = None) -> Prometheus:
    """Prometheus with `config`, its data in `directory`, on `port` (a free one unless given);
    returned once ready and proven to be this process (its config file is ours), so a port
    taken meanwhile by another Prometheus fails here instead of answering for it."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = port or free_port()
    log_path = directory / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["prometheus", f"--config.file={config_path}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log_path)

    def ready_and_ours() -> bool:
        if process.poll() is not None:
            return True
        if http_status(prometheus.url + "/-/ready") != 200:
            return False
        return prometheus.get("/api/v1/status/flags")["data"]["config.file"] == str(config_path)

    try:
        eventually(ready_and_ours, timeout=30, what=f"prometheus to become ready on port {port}")
        assert process.poll() is None, log_path.read_text()
    except BaseException:
        prometheus.stop()
        raise
    return prometheus


@contextmanager
def running_prometheus(config: dict, directory: Path, port: int | None = None) -> Iterator[Prometheus]:
    """`start_prometheus`, stopped on exit."""
    prometheus = start_prometheus(config, directory, port)
    try:
        yield prometheus
    finally:
        prometheus.stop()


@contextmanager
def running_pushgateway(directory: Path) -> Iterator[str]:
    """A Pushgateway on a free port that starts empty and keeps what is pushed in memory only; its URL.

    Debian's build persists to /var/lib/prometheus/pushgateway.data unless told otherwise (upstream
    persists nowhere by default): every Pushgateway started with that default loads the groups the
    last one held at its exit, so a test would begin with another run's pushes.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = directory / "pushgateway.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        eventually(lambda: process.poll() is not None or http_status(url + "/-/ready") == 200,
                   timeout=30, what=f"the pushgateway to become ready on port {port}")
        assert process.poll() is None, log_path.read_text()
        with urllib.request.urlopen(url + "/api/v1/metrics", timeout=5) as response:  # noqa: S310 (a local URL)
            groups = json.loads(response.read())["data"]
        assert groups == [], f"the pushgateway on port {port} did not start empty: {groups}"
        yield url
    finally:
        stop_process(process)


# --- fake targets ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Traffic:
    """What a fake pod has answered: `ok` requests a second with 200, `failed` with 503."""

    service: str
    ok: float
    failed: float = 0.0


class FakeTarget:
    """A pod's /metrics, as the kit exports them (requests_total, errors_total with service,
    method, route, status), counting up with the time since it started."""

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic
        self.started = time.monotonic()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = target.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def exposition(self) -> str:
        elapsed = time.monotonic() - self.started
        service = self.traffic.service
        ok, failed = int(elapsed * self.traffic.ok), int(elapsed * self.traffic.failed)
        labels = f'service="{service}",method="GET",route="/v1/things"'
        return (
            "# TYPE requests_total counter\n"
            f'requests_total{{{labels},status="200"}} {ok}\n'
            f'requests_total{{{labels},status="503"}} {failed}\n'
            "# TYPE errors_total counter\n"
            f'errors_total{{{labels},status="503"}} {failed}\n'
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# --- what Kubernetes discovery would say --------------------------------------------------------

def sanitize(label: str) -> str:
    """A Kubernetes label name as Prometheus' discovery spells it in `__meta_*` names."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def discovered_pod(*, namespace: str, name: str, address: str, labels: dict[str, str],
                   annotations: dict[str, str] | None = None, port_name: str = "ops",
                   container: str = "app") -> dict:
    """A file-discovery target group carrying the labels Kubernetes pod discovery would give one
    container port of a running pod."""
    ip, _, port = address.rpartition(":")
    meta = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_container_name": container,
        "__meta_kubernetes_pod_container_port_name": port_name,
        "__meta_kubernetes_pod_container_port_number": port,
    }
    for key, value in labels.items():
        meta[f"__meta_kubernetes_pod_label_{sanitize(key)}"] = value
        meta[f"__meta_kubernetes_pod_labelpresent_{sanitize(key)}"] = "true"
    for key, value in (annotations or {}).items():
        meta[f"__meta_kubernetes_pod_annotation_{sanitize(key)}"] = value
    return {"targets": [address], "labels": meta}


def _relabel(rule: dict) -> dict:
    """A monitoring.coreos.com RelabelConfig (camelCase) as Prometheus' relabel_config."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return {names.get(key, key): value for key, value in rule.items()}


def podmonitor_scrape_config(podmonitor: dict, namespace: str) -> dict:
    """The scrape job the Prometheus Operator generates for a PodMonitor's first endpoint
    (prometheus-operator pkg/prometheus/promcfg.go, generatePodMonitorConfig), for pods of
    `namespace`: the selector and port kept, namespace/container/pod labels, podTargetLabels, the job
    `<namespace>/<name>` unless `jobLabel` names a pod label that is set, then the PodMonitor's own
    relabelings and metricRelabelings."""
    spec = podmonitor["spec"]
    (endpoint,) = spec["podMetricsEndpoints"]
    name = podmonitor["metadata"]["name"]
    relabel: list[dict] = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
    for key, value in spec["selector"].get("matchLabels", {}).items():
        relabel.append({"action": "keep", "regex": f"({value});true",
                        "source_labels": [f"__meta_kubernetes_pod_label_{sanitize(key)}",
                                          f"__meta_kubernetes_pod_labelpresent_{sanitize(key)}"]})
    relabel += [
        {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": endpoint["port"]},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
    ]
    for label in spec.get("podTargetLabels", ()):
        relabel.append({"source_labels": [f"__meta_kubernetes_pod_label_{sanitize(label)}"],
                        "target_label": sanitize(label), "regex": "(.+)", "replacement": "${1}"})
    relabel.append({"target_label": "job", "replacement": f"{namespace}/{name}"})
    if spec.get("jobLabel"):
        relabel.append({"source_labels": [f"__meta_kubernetes_pod_label_{sanitize(spec['jobLabel'])}"],
                        "target_label": "job", "regex": "(.+)", "replacement": "${1}"})
    relabel.append({"target_label": "endpoint", "replacement": endpoint["port"]})
    relabel += [_relabel(rule) for rule in endpoint.get("relabelings", ())]
    return {
        "job_name": f"podMonitor/{namespace}/{name}/0",
        "metrics_path": endpoint.get("path", "/metrics"),
        "relabel_configs": relabel,
        "metric_relabel_configs": [_relabel(rule) for rule in endpoint.get("metricRelabelings", ())],
    }
