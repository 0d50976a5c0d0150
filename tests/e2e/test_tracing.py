"""One request through the gateway is one trace: gateway → users → PostgreSQL → the email consumer."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.helpers.accounts import unique_email
from tests.helpers.http import request_json
from tests.helpers.polling import eventually
from tests.helpers.processes import issuer_env, start_service

pytestmark = pytest.mark.e2e


class OtlpReceiver:
    """The OTLP/HTTP traces endpoint, as a collector serves it, recording every span."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.paths: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                receiver.paths.add(self.path)
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers["content-length"])))
                for resource_spans in request.resource_spans:
                    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            receiver.spans.append({
                                "service": resource.get("service.name"), "name": span.name,
                                "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "attributes": {a.key: a.value.string_value or a.value.int_value
                                               for a in span.attributes},
                            })
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def traces(self) -> dict[str, list[dict]]:
        grouped: dict[str, list[dict]] = defaultdict(list)
        for span in list(self.spans):
            grouped[span["trace_id"]].append(span)
        return grouped

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    otlp = OtlpReceiver()
    yield otlp
    otlp.close()


def test_one_trace_spans_gateway_users_postgres_and_the_consumer(service_env, tmp_path, receiver):
    # The variables the manifests and the compose stack set (tests/deploy check they name these):
    # the collector's base URL, and the gateway's sampling decision followed behind it.
    env = {**service_env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
           "OTEL_TRACES_SAMPLER_ARG": "1.0"}
    users = start_service("user-service", env, tmp_path)
    notifications = start_service("notification-service", env, tmp_path)
    gateway = start_service("api-gateway", {**env, **issuer_env(users.url), "NOTIFICATION_SERVICE_URL": notifications.url},
                            tmp_path)
    try:
        email = unique_email("traced")
        status, body = request_json("POST", f"{gateway.url}/api/v1/auth/register",
                                    {"email": email, "password": "correct horse battery", "name": "T"})
        assert status == 202, body

        def complete_trace() -> list[dict] | None:
            for spans in receiver.traces().values():
                services = {s["service"] for s in spans}
                has_sql = any(s["attributes"].get("db.system") == "postgresql" or
                              s["attributes"].get("db.system.name") == "postgresql" for s in spans
                              if s["service"] == "user-service")
                ids = {s["span_id"] for s in spans}
                # The consumer's parent (the user service's span) may be exported a moment later.
                has_consumer = any(s["name"] == "handle user.email_verification_requested" and s["parent"] in ids
                                   for s in spans if s["service"] == "notification-service")
                if {"api-gateway", "user-service", "notification-service"} <= services and has_sql and has_consumer:
                    return spans
            return None

        spans = eventually(complete_trace, timeout=30, what="one trace across gateway, users, PostgreSQL, consumer")
        by_id = {s["span_id"]: s for s in spans}
        consumer = next(s for s in spans if s["name"] == "handle user.email_verification_requested")
        # The consumer's span hangs under the user service's request, through the event log.
        assert by_id[consumer["parent"]]["service"] == "user-service"
        # Where a collector's OTLP/HTTP receiver takes traces, below the configured base URL.
        assert receiver.paths == {"/v1/traces"}
        # Logs carry the same trace id, so a log line leads to its trace.
        trace_id = spans[0]["trace_id"]
        assert any(json.loads(line).get("trace_id") == trace_id
                   for line in users.log().splitlines() if line.startswith("{"))
    finally:
        gateway.stop()
        notifications.stop()
        users.stop()
