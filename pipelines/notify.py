"""Notifier seam: where alerts go. Always logged; also POSTed as JSON to a webhook when
``MLOPS_ALERT_WEBHOOK`` is set (Slack/Teams/Mattermost-compatible ``text`` field)."""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from typing import Any, Protocol

log = logging.getLogger("mlops.alerts")


class Notifier(Protocol):
    def notify(self, title: str, details: dict[str, Any]) -> None: ...


class LogNotifier:
    def notify(self, title: str, details: dict[str, Any]) -> None:
        log.error("ALERT %s %s", title, json.dumps(details, default=str))


class WebhookNotifier:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url, self.timeout = url, timeout

    def notify(self, title: str, details: dict[str, Any]) -> None:
        LogNotifier().notify(title, details)
        body = json.dumps({"text": title, **details}, default=str).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except OSError as exc:  # an alert that cannot be delivered must not hide the failure
            log.error("could not post the alert to %s: %s", self.url, exc)


def make_notifier() -> Notifier:
    url = os.environ.get("MLOPS_ALERT_WEBHOOK", "")
    return WebhookNotifier(url) if url else LogNotifier()
