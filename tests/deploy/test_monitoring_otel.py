"""The OpenTelemetry Collector config, checked against current component names and pipeline typing.

No collector binary installs from Debian, PyPI or npm, so `otelcol validate` cannot run here; the
names below are those of the collector core and contrib distributions (v0.100 and later).
"""

from __future__ import annotations

import yaml

from tests.helpers.monitoring import MONITORING

CONFIG = MONITORING / "otel-collector" / "config.yaml"
# component type -> the signals it handles
RECEIVERS = {"otlp": {"traces", "metrics", "logs"}, "prometheus": {"metrics"}, "hostmetrics": {"metrics"}}
PROCESSORS = {name: {"traces", "metrics", "logs"} for name in
              ("batch", "memory_limiter", "attributes", "resource", "filter", "transform", "k8sattributes")}
EXPORTERS = {
    "otlp": {"traces", "metrics", "logs"}, "otlphttp": {"traces", "metrics", "logs"},
    "debug": {"traces", "metrics", "logs"}, "prometheus": {"metrics"}, "prometheusremotewrite": {"metrics"},
}
EXTENSIONS = {"health_check", "pprof", "zpages"}
# Gone from the collector: `jaeger` (Jaeger takes OTLP), `logging` (now `debug`).
REMOVED = {"jaeger", "logging"}


def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def kind(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def test_every_component_is_a_current_one():
    cfg = config()
    for section, known in (("receivers", RECEIVERS), ("processors", PROCESSORS), ("exporters", EXPORTERS),
                           ("extensions", EXTENSIONS)):
        for component_id in cfg.get(section, {}):
            assert kind(component_id) not in REMOVED, component_id
            assert kind(component_id) in known, f"{section}: unknown component {component_id}"


def test_pipelines_use_declared_components_of_their_signal():
    cfg = config()
    used = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipeline in cfg["service"]["pipelines"].items():
        signal = kind(name)
        for section, known in (("receivers", RECEIVERS), ("processors", PROCESSORS), ("exporters", EXPORTERS)):
            for component_id in pipeline.get(section, []):
                assert component_id in cfg[section], f"{name}: {component_id} is not declared"
                assert signal in known[kind(component_id)], f"{component_id} cannot carry {signal}"
                used[section].add(component_id)
        assert pipeline["processors"][0] == "memory_limiter", f"{name}: memory_limiter must come first"
        assert "batch" in pipeline["processors"]
    for section, ids in used.items():
        assert set(cfg[section]) == ids, f"{section} declared but unused: {set(cfg[section]) - ids}"
    assert set(cfg["service"]["extensions"]) == set(cfg["extensions"])


def test_traces_go_to_jaeger_over_otlp_and_metrics_to_prometheus():
    cfg = config()
    assert cfg["receivers"]["otlp"]["protocols"] == {
        "grpc": {"endpoint": "0.0.0.0:4317"}, "http": {"endpoint": "0.0.0.0:4318"}}
    pipelines = cfg["service"]["pipelines"]
    assert pipelines["traces"]["exporters"] == ["otlp/jaeger"]
    assert cfg["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger-collector:4317"
    assert "prometheus" in pipelines["metrics"]["exporters"]
    assert cfg["exporters"]["prometheus"]["endpoint"] == "0.0.0.0:8889"
