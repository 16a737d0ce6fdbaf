"""A generic webhook: each notice POSTed as JSON, signed per the Standard Webhooks spec.

``[notify.webhook]`` settings: ``url_env`` (default ``DEPLOYSTATE_WEBHOOK_URL``), ``secret_env``
(default ``DEPLOYSTATE_WEBHOOK_SECRET``; the secret in the spec's ``whsec_<base64>`` form),
``timeout_s``.

Headers (https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md):
``webhook-id`` is ``<rollout>:<seq>``, the same on every repeat of a notice, so a consumer drops
repeats by it; ``webhook-timestamp`` is when this attempt was sent (consumers refuse old ones);
``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, made by the
``standardwebhooks`` package.  Redirects are not followed: a signed POST goes where it was
configured to go, or fails saying so.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from deploystate.ports import Notice, NotifierError
from deploystate_backends.notify import _config

SECTION = "[notify.webhook]"
KNOWN = ("url_env", "secret_env", "timeout_s")
DEFAULT_URL_ENV = "DEPLOYSTATE_WEBHOOK_URL"
DEFAULT_SECRET_ENV = "DEPLOYSTATE_WEBHOOK_SECRET"
PREFIX = "whsec_"
# The spec: "secrets SHOULD be between 24 bytes (192 bits) and 64 bytes (512 bits)".
SECRET_BYTES = (24, 64)
USER_AGENT = "deploystate-webhook/1"


def decode_secret(name: str, value: str) -> bytes:
    """The key in a ``whsec_<base64>`` secret held by variable ``name``; refusals never show it."""
    if not value.startswith(PREFIX):
        raise _config.NotifierSettingsError(
            f"environment variable {name} does not hold a Standard Webhooks secret: it must look like "
            f"{PREFIX}<base64 of 24 to 64 random bytes> (the value is not shown); make one with: python3 -c "
            "'import base64,os; print(\"whsec_\" + base64.b64encode(os.urandom(32)).decode())'")
    encoded = value[len(PREFIX):]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    low, high = SECRET_BYTES
    if not low <= len(key) <= high:
        raise _config.NotifierSettingsError(
            f"environment variable {name} holds a malformed Standard Webhooks secret: after {PREFIX} must "
            f"come base64 of {low} to {high} bytes (the value is not shown)")
    return key


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


def message_id(notice: Notice) -> str:
    """Stable across repeats: ``<rollout>:<seq>`` (a test message without a record: a digest of it)."""
    if notice.seq is not None:
        return f"{notice.rollout_id}:{notice.seq}"
    digest = hashlib.sha256(json.dumps([notice.rollout_id, notice.at, notice.action, notice.message],
                                       default=str).encode()).hexdigest()[:16]
    return f"{notice.rollout_id}:{digest}"


def body_of(notice: Notice) -> dict[str, Any]:
    return {"type": f"deploystate.{notice.action}", "rollout": notice.rollout_id, "seq": notice.seq,
            "at": notice.at, "severity": notice.severity, "action": notice.action, "step": notice.step,
            "message": notice.message, "data": dict(notice.data)}


class WebhookNotifier:
    def __init__(self, url: str, secret: str, *, timeout_s: float = _config.DEFAULT_TIMEOUT_S,
                 name: str = "webhook") -> None:
        import standardwebhooks

        self.name = name
        self._url = url
        self._secret = secret
        self._signer = standardwebhooks.Webhook(secret)
        self._timeout_s = timeout_s
        self._opener = urllib.request.build_opener(_NoRedirects())

    def __repr__(self) -> str:
        return f"WebhookNotifier(name={self.name!r})"  # neither the URL nor the secret

    def request(self, notice: Notice, now: float | None = None) -> urllib.request.Request:
        """The signed request for ``notice`` (``now``: the send time, Unix seconds)."""
        body = json.dumps(body_of(notice), sort_keys=True, separators=(",", ":"), default=str,
                          ensure_ascii=False)
        sent = datetime.datetime.fromtimestamp(int(time.time() if now is None else now), datetime.UTC)
        ident = message_id(notice)
        signature = self._signer.sign(ident, sent, body)
        return urllib.request.Request(self._url, data=body.encode(), method="POST", headers={
            "Content-Type": "application/json", "User-Agent": USER_AGENT, "webhook-id": ident,
            "webhook-timestamp": str(int(sent.timestamp())), "webhook-signature": signature})

    def notify(self, notice: Notice) -> None:
        request = self.request(notice)
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                response.read()
                return
        except urllib.error.HTTPError as error:
            with error:
                detail = error.read(500).decode("utf-8", "replace")
            raise _config.refusal("the webhook", error.code, self._scrub(detail),
                                  error.headers.get("Retry-After")) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            raise NotifierError(self._scrub(f"the webhook did not answer ({type(error).__name__}: {reason}); "
                                            "will try again")) from None

    def close(self) -> None:
        return None  # a connection per request: nothing stays open

    def _scrub(self, message: str) -> str:
        return _config.scrub(message, [self._url, self._secret, self._secret[len(PREFIX):]])


def create(settings: Mapping[str, Any], env: Mapping[str, str]) -> WebhookNotifier:
    _config.check_keys(SECTION, settings, KNOWN)
    url_env = _config.env_name(SECTION, "url_env", settings.get("url_env", DEFAULT_URL_ENV))
    secret_env = _config.env_name(SECTION, "secret_env", settings.get("secret_env", DEFAULT_SECRET_ENV))
    timeout_s = _config.timeout(SECTION, settings.get("timeout_s", _config.DEFAULT_TIMEOUT_S))
    url = _config.url_in(SECTION, "url_env", url_env,
                         _config.from_env(SECTION, "url_env", url_env, env, "the webhook's URL"))
    secret = _config.from_env(SECTION, "secret_env", secret_env, env,
                              "the webhook's signing secret (whsec_...)")
    decode_secret(secret_env, secret)
    return WebhookNotifier(url, secret, timeout_s=timeout_s)
