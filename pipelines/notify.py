"""Notifier seam: where alerts and decisions go. Always logged; also POSTed as JSON to a
webhook when ``MLOPS_ALERT_WEBHOOK`` is set (Slack/Teams/Mattermost-compatible ``text``
field, plus ``level``). Failures are ``error``; a drift breach or a rollback ``warning``; a
promotion or a canary's graduation ``info``."""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from typing import Any, Protocol

log = logging.getLogger("mlops.alerts")


LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class Notifier(Protocol):
    def notify(self, title: str, details: dict[str, Any], level: str = "error") -> None: ...


class LogNotifier:
    def notify(self, title: str, details: dict[str, Any], level: str = "error") -> None:
        log.log(LEVELS.get(level, logging.ERROR), "%s %s %s", "ALERT" if level == "error" else "NOTICE", title,
                json.dumps(details, default=str))  # fmt: skip


class WebhookNotifier:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url, self.timeout = url, timeout

    def notify(self, title: str, details: dict[str, Any], level: str = "error") -> None:
        LogNotifier().notify(title, details, level)
        body = json.dumps({"text": title, "level": level, **details}, default=str).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except OSError as exc:  # an alert that cannot be delivered must not hide the failure
            log.error("could not post the alert to %s: %s", self.url, exc)


def make_notifier() -> Notifier:
    url = os.environ.get("MLOPS_ALERT_WEBHOOK", "")
    return WebhookNotifier(url) if url else LogNotifier()
