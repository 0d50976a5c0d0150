"""The admin console's pure parts: the event relay's frames, where sign-in may lead, the Health
page's defaults and charts."""

from __future__ import annotations

import json

import pytest
import structlog

from prognetwork.admin.pages import safe_next
from prognetwork.admin.settings import AdminSettings, ops_url
from prognetwork.admin.stream import Frames
from prognetwork.admin.views import sparkline


def relay(*lines: bytes) -> bytes:
    frames = Frames()
    return b"".join(frames.feed(line + b"\n") for line in lines)


def test_events_reach_the_browser_as_plain_messages_with_their_ids():
    data = json.dumps({"seq": 7, "type": "user.disabled"}).encode()
    assert relay(b"retry: 3000", b"", b"id: 7", b"event: user.disabled", b"data: " + data, b"") == (
        b"retry: 3000\n\n" + b"id: 7\ndata: " + data + b"\n\n"
    )


def test_the_streams_own_notices_keep_their_names_and_comments_pass_at_once():
    assert relay(b": keep-alive") == b": keep-alive\n\n"
    notice = relay(b"event: signed-out", b'data: {"reason": "signed-out"}', b"")
    assert notice == b'event: signed-out\ndata: {"reason": "signed-out"}\n\n'


def test_a_frame_is_sent_only_once_complete_and_an_empty_one_not_at_all():
    frames = Frames()
    assert frames.feed(b"id: 1\n") == b""
    assert frames.feed(b"data: {}\n") == b""
    assert frames.feed(b"\n") == b"id: 1\ndata: {}\n\n"
    assert frames.feed(b"\n") == b""
    assert frames.feed(b"id: 2\n") + frames.feed(b"\n") == b""  # nothing to dispatch


@pytest.mark.parametrize("target", ["/users", "/users/1?q=a%20b", "/events?types=user.disabled"])
def test_sign_in_leads_back_to_a_page_of_the_console(target):
    assert safe_next(target) == target


@pytest.mark.parametrize("target", [None, "", "https://evil.example/", "//evil.example/", "/\\evil.example",
                                    "/\t/evil.example", "/\n/evil.example", "/ /x", "users", "/" + "a" * 600])
def test_sign_in_never_leads_elsewhere(target):
    assert safe_next(target) == "/users"


def test_health_urls_default_to_each_services_port_plus_1000():
    settings = AdminSettings(USER_SERVICE_URL="http://127.0.0.1:13007", API_GATEWAY_URL="http://127.0.0.1:18000")
    assert settings.health_urls["user-service"] == "http://127.0.0.1:14007"
    assert settings.health_urls["api-gateway"] == "http://127.0.0.1:19000"
    assert set(settings.health_urls) == {"api-gateway", "user-service", "notification-service", "event-streaming",
                                         "billing-service", "admin-client"}
    assert ops_url("http://[::1]:3000") == "http://[::1]:4000"
    given = AdminSettings(SERVICE_HEALTH_URLS='{"user-service": "http://users-ops:4007/"}')
    assert given.health_urls == {"user-service": "http://users-ops:4007"}


def test_only_bad_urls_are_problems_of_the_consoles_own_settings():
    assert AdminSettings().own_problems() == []
    problems = AdminSettings(PROMETHEUS_URL="prometheus:9090").own_problems()
    assert problems == ["PROMETHEUS_URL must be an http:// or https:// URL (got 'prometheus:9090')"]


def test_a_sparkline_is_an_svg_line_whose_label_is_escaped():
    svg = str(sparkline([1.0, 2.0, float("nan"), 3.0], 'rate of <b>"x"</b>'))
    assert svg.startswith('<svg class="spark"') and "<polyline points=" in svg
    assert "<b>" not in svg and "&lt;b&gt;" in svg
    assert str(sparkline([1.0], "one point")) == ""


def test_gateway_calls_carry_the_persons_address_and_the_request_id():
    from prognetwork.admin.gateway import headers_for

    assert headers_for("t") == {"Authorization": "Bearer t"}
    with structlog.contextvars.bound_contextvars(request_id="r-1", client_ip="203.0.113.9"):
        assert headers_for("t") == {"Authorization": "Bearer t", "X-Request-ID": "r-1",
                                    "X-Forwarded-For": "203.0.113.9"}
