"""Slack through an incoming webhook, with Slack's own SDK (``slack_sdk.webhook.WebhookClient``).

``[notify.slack]`` settings: ``webhook_url_env`` (the variable holding the webhook URL, default
``SLACK_WEBHOOK_URL``), ``channel`` (optional; honoured by legacy webhooks), ``mention``
(optional, Slack's syntax, e.g. ``<!subteam^S123>`` for a user group: pinged on failures,
time-outs and failing checks), ``timeout_s``.

The webhook URL is the credential: it is read once and never written into a message or a log
(the SDK's own debug log, which prints it, is silenced).  The SDK's retries are off: delivery
retries with its own backoff and keeps its place in the journal, so a repeat is decided in one
place only.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from deploystate.ports import Notice, NotifierError
from deploystate_backends.notify import _config
from deploystate_backends.notify.slack_blocks import blocks_for

SECTION = "[notify.slack]"
KNOWN = ("webhook_url_env", "channel", "mention", "timeout_s")
DEFAULT_URL_ENV = "SLACK_WEBHOOK_URL"
# <!subteam^ID>, <!here>, <!channel>, <@U123>: the forms in which Slack pings; anything else is just text.
_MENTION = re.compile(r"^(<(!subteam\^[A-Z0-9]+|!here|!channel|!everyone|@[UW][A-Z0-9]+)(\|[^<>]*)?>\s*)+$")
_REMEMBERED_PIPELINES = 256

# Not a child of "slack_sdk": its DEBUG lines carry the URL, so none is ever emitted.
_QUIET = logging.getLogger("deploystate.notify.slack_sdk")
_QUIET.setLevel(logging.CRITICAL)
_QUIET.propagate = False


class SlackNotifier:
    """Posts each notice to one incoming webhook."""

    def __init__(self, url: str, *, channel: str | None = None, mention: str | None = None,
                 timeout_s: float = _config.DEFAULT_TIMEOUT_S, name: str = "slack") -> None:
        from slack_sdk.webhook import WebhookClient

        self.name = name
        self.channel = channel
        self.mention = mention
        self._url = url
        self._client = WebhookClient(url, timeout=max(1, round(timeout_s)), retry_handlers=[], logger=_QUIET)
        host = urllib.parse.urlsplit(url).hostname or ""
        if self._client.proxy and urllib.request.proxy_bypass(host):
            # The SDK takes HTTPS_PROXY but not NO_PROXY; without its proxy, urllib honours both.
            self._client.proxy = None
        # A finished deployment's record has the pipeline's id only; its link came with `triggered`.
        self._pipelines: OrderedDict[tuple[str, str], str] = OrderedDict()

    def __repr__(self) -> str:
        return f"SlackNotifier(name={self.name!r}, channel={self.channel!r})"  # never the URL

    def payload(self, notice: Notice) -> dict[str, Any]:
        key = (notice.rollout_id, notice.step or "")
        web_url = notice.data.get("web_url")
        if notice.action == "triggered" and isinstance(web_url, str):
            self._pipelines[key] = web_url
            while len(self._pipelines) > _REMEMBERED_PIPELINES:
                self._pipelines.popitem(last=False)
        return blocks_for(notice, mention=self.mention, channel=self.channel,
                          pipeline_url=self._pipelines.get(key))

    def notify(self, notice: Notice) -> None:
        payload = self.payload(notice)
        try:
            response = self._client.send_dict(payload)
        except Exception as error:  # urllib's errors, time-outs, refused connections: all transient
            message = f"Slack did not answer ({_reason(error)}); will try again"
            raise NotifierError(self._scrub(message)) from None
        if 200 <= response.status_code < 300:
            return
        headers = {k.lower(): v for k, v in (response.headers or {}).items()}
        retry_after = headers.get("retry-after")
        raise _config.refusal("Slack", response.status_code, self._scrub(str(response.body or "")),
                              retry_after[0] if isinstance(retry_after, list) else retry_after)

    def close(self) -> None:
        return None  # the SDK opens a connection per request: nothing stays open

    def _scrub(self, message: str) -> str:
        path = urllib.parse.urlsplit(self._url).path
        return _config.scrub(message, [self._url, path if len(path) > 1 else ""])


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", None)
    return f"{type(error).__name__}: {reason if reason is not None else error}"


def create(settings: Mapping[str, Any], env: Mapping[str, str]) -> SlackNotifier:
    _config.check_keys(SECTION, settings, KNOWN)
    url_env = _config.env_name(SECTION, "webhook_url_env", settings.get("webhook_url_env", DEFAULT_URL_ENV))
    channel = _config.text(SECTION, "channel", settings["channel"]) if "channel" in settings else None
    mention = None
    if "mention" in settings:
        mention = _config.text(SECTION, "mention", settings["mention"])
        if not _MENTION.match(mention):
            raise _config.NotifierSettingsError(
                f"{SECTION} mention = {mention!r} would not ping anyone: write it in Slack's syntax, e.g. "
                "\"<!subteam^S0123ABC>\" for a user group, \"<@U0123ABC>\" for a person, \"<!here>\"")
    timeout_s = _config.timeout(SECTION, settings.get("timeout_s", _config.DEFAULT_TIMEOUT_S))
    url = _config.from_env(SECTION, "webhook_url_env", url_env, env, "the Slack incoming webhook URL")
    _config.url_in(SECTION, "webhook_url_env", url_env, url)
    return SlackNotifier(url, channel=channel, mention=mention, timeout_s=timeout_s)
