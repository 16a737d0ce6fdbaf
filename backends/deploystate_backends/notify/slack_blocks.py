"""Slack messages for notices: Block Kit with a text fallback, and a plain-text rendering of them.

:func:`blocks_for` is the payload an incoming webhook takes (``text`` for notifications and
clients without blocks, ``blocks`` for the message); :func:`plain_text` renders such a payload
as text (the README shows both; tests read it).  Every message ends with a context footer naming
the record (``deploystate · `ROLLOUT` · record SEQ · time``) so a person can find it in
``deploystate history`` and a receiver can count deliveries.

Within Slack's limits (50 blocks, 3000 characters a section, 150 a header, 10 context elements):
longer text is cut with an ellipsis, never refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from deploystate.ports import Notice
from deploystate_backends.notify.render import Story, checks_table, describe

SECTION_LIMIT = 3000
HEADER_LIMIT = 150
CONTEXT_LIMIT = 2000
TEXT_LIMIT = 3000  # the fallback: Slack takes more, but a notification shows a line or two


def escape(text: str) -> str:
    """Slack's mrkdwn escapes: a person's ``<``, ``>`` and ``&`` can neither link nor ping."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _link(url: str, label: str) -> str:
    # Inside <url|label>, a | or > in the URL would end it early.
    safe = url.replace("|", "%7C").replace(">", "%3E").replace("<", "%3C")
    return f"<{safe}|{escape(label)}>"


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def story_blocks(story: Story, mention: str | None = None) -> dict[str, Any]:
    """The payload for ``story`` (see :func:`blocks_for`)."""
    blocks: list[dict[str, Any]] = []
    body: list[str] = []
    if story.headline:
        header = _clip(f"{story.icon} {story.title}", HEADER_LIMIT)
        blocks.append({"type": "header", "text": {"type": "plain_text", "emoji": True, "text": header}})
    else:
        body.append(f"{story.icon} *{escape(story.title)}*")
    body += [escape(line) for line in story.lines if line]
    if story.links:
        body.append(" · ".join(_link(url, label) for label, url in story.links))
    if story.command:
        body.append(f"Run: `{escape(story.command)}`")
    if story.alert and mention:
        body.append(mention)  # Slack's own syntax (<!subteam^ID>): not escaped, so it pings
    if body:
        blocks.append({"type": "section", "text": _mrkdwn(_clip("\n".join(body), SECTION_LIMIT))})
    if story.checks:
        table = escape(checks_table(story.checks))
        blocks.append({"type": "section", "text": _mrkdwn(_clip(f"```{table}```", SECTION_LIMIT))})
        evidence = [_link(url, f"{row.name} evidence") for row in story.checks for url in row.evidence
                    if re.match(r"^https?://\S+$", url)]
        if evidence:
            blocks.append({"type": "context", "elements": [_mrkdwn(_clip(e, CONTEXT_LIMIT))
                                                           for e in evidence[:10]]})
    blocks.append({"type": "context", "elements": [_mrkdwn(_clip(escape(story.footer), CONTEXT_LIMIT))]})
    fallback = f"{story.icon} {story.title}"
    if story.version not in story.title:
        fallback += f" ({story.version})"
    text = _clip(escape(fallback), TEXT_LIMIT)
    if story.alert and mention:
        text += f" {mention}"  # the notification pings too
    return {"text": text, "blocks": blocks}


def blocks_for(notice: Notice, *, mention: str | None = None, channel: str | None = None,
               pipeline_url: str | None = None) -> dict[str, Any]:
    """The incoming-webhook payload for ``notice``: ``{"text": ..., "blocks": [...]}``.

    ``mention`` (e.g. ``<!subteam^S123>``) is added to failures, time-outs and failing checks;
    ``channel`` is sent when set (legacy webhooks honour it; app webhooks post to their own);
    ``pipeline_url``: the step's pipeline, for a finished deployment whose record has only its id.
    """
    payload = story_blocks(describe(notice, pipeline_url=pipeline_url), mention)
    if channel:
        payload["channel"] = channel
    return payload


_SLACK_LINK = re.compile(r"<([^<>|]+)\|([^<>]+)>")
_SLACK_SPECIAL = re.compile(r"<([!@#])(?:subteam\^)?([^<>|]+)(?:\|([^<>]+))?>")


def _plain(text: str) -> str:
    text = text.replace("```", "")
    text = _SLACK_SPECIAL.sub(lambda m: ("#" if m.group(1) == "#" else "@") + (m.group(3) or m.group(2)),
                              text)
    text = _SLACK_LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})", text)
    text = re.sub(r"<(https?://[^<>]+)>", r"\1", text)
    text = re.sub(r"(?<![\w*])\*(\S(?:[^*\n]*\S)?)\*(?![\w*])", r"\1", text)  # *bold*
    text = re.sub(r"`([^`\n]+)`", r"\1", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def plain_text(payload: Mapping[str, Any]) -> str:
    """``payload``'s blocks as plain text, one block after the other (its ``text`` if it has none)."""
    blocks = payload.get("blocks") or ()
    if not blocks:
        return _plain(str(payload.get("text", "")))
    out: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            out.append(str(block["text"]["text"]))
        elif kind == "section":
            if "text" in block:
                out.append(_plain(str(block["text"]["text"])))
            out += [_plain(str(field["text"])) for field in block.get("fields", ())]
        elif kind == "context":
            out.append(" · ".join(_plain(str(e.get("text", ""))) for e in block.get("elements", ())))
        elif kind == "divider":
            out.append("---")
    return "\n".join(out)
