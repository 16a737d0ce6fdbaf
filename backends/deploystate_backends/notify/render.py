"""What a notice says, once for every notifier: a :class:`Story`, then GitLab markdown of it.

:func:`describe` reads a notice's action and data (the journal record's, see
:mod:`deploystate.actions`) and tells its story: a title, a few lines, links (pipelines, the
runbook), a table of check results, the command a person runs next, and whether the release
managers must be pinged.  :mod:`.slack_blocks` writes it as Block Kit; :func:`markdown_for`
writes it as a GitLab note.  Pure functions: the same notice gives the same text.

A step's kind (deployment, bake, promotion) is the notice's ``data["step_kind"]`` when the core
says it, else read from what its data holds (a deployment's key or pipeline, a bake's elapsed
time, a promoter), else from the step's name.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from deploystate.ports import Notice


@attrs.frozen
class CheckRow:
    name: str
    verdict: str  # passed, failed, error (or whatever the record says)
    detail: str
    evidence: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"


@attrs.frozen
class Story:
    """A notice told for people.  ``icon`` for Slack (Unicode), ``emoji`` for GitLab (shortcode)."""

    notice: Notice
    icon: str
    emoji: str
    title: str
    lines: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()  # (label, url)
    checks: tuple[CheckRow, ...] = ()
    command: str | None = None  # what a person runs next
    alert: bool = False  # the release managers must act: ping them
    headline: bool = False  # a rollout's beginning or end: shown large

    @property
    def version(self) -> str:
        version = self.notice.data.get("version")
        return version if isinstance(version, str) and version else self.notice.rollout_id

    @property
    def footer(self) -> str:
        """Which record this is (the receivers in the tests count deliveries by it)."""
        parts = ["deploystate", f"`{self.notice.rollout_id}`"]
        if self.notice.seq is not None:
            parts.append(f"record {self.notice.seq}")
        parts.append(when(self.notice.at))
        return " · ".join(parts)


# GitLab's emoji shortcodes, and the same emoji in Unicode for Slack's headers and plain text.
ICONS = {
    ":rocket:": "\U0001f680", ":leftwards_arrow_with_hook:": "\u21a9\ufe0f", ":test_tube:": "\U0001f9ea",
    ":arrow_forward:": "\u25b6\ufe0f", ":raised_hand:": "\u270b", ":hourglass_flowing_sand:": "\u23f3",
    ":link:": "\U0001f517", ":timer_clock:": "\u23f2\ufe0f", ":white_check_mark:": "\u2705",
    ":label:": "\U0001f3f7\ufe0f", ":large_yellow_circle:": "\U0001f7e1", ":alarm_clock:": "\u23f0",
    ":red_circle:": "\U0001f534", ":no_entry_sign:": "\U0001f6ab", ":stethoscope:": "\U0001fa7a",
    ":warning:": "\u26a0\ufe0f", ":fast_forward:": "\u23e9", ":tada:": "\U0001f389",
    ":octagonal_sign:": "\U0001f6d1", ":track_next:": "\u23ed\ufe0f", ":repeat:": "\U0001f501",
    ":stop_button:": "\u23f9\ufe0f", ":information_source:": "\u2139\ufe0f", ":green_circle:": "\U0001f7e2",
}


def _told(notice: Notice, emoji: str, title: str, lines: tuple[str, ...] = (),
          links: tuple[tuple[str, str], ...] = (), **more: Any) -> Story:
    return Story(notice, ICONS[emoji], emoji, title, lines, links, **more)


def when(at: float) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return "?"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: object) -> str | None:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds != seconds:
        return None
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _is_url(value: object) -> bool:
    return isinstance(value, str) and re.match(r"^https?://\S+$", value) is not None


def step_kind(notice: Notice) -> str:
    """deployment, bake, promotion, tag, package_wait or step (not known)."""
    data, step = notice.data, (notice.step or "").lower()
    kind = data.get("step_kind")
    if isinstance(kind, str) and kind:
        return kind
    if any(key in data for key in ("key", "deployment_id", "environments", "web_url")):
        return "deployment"
    if "elapsed_s" in data or "from" in data or "bak" in step:
        return "bake"
    if "promot" in step or (notice.action == "succeed" and "by" in data):
        return "promotion"
    if step == "tag" or (notice.action == "succeed" and set(data) == {"version"}):
        return "tag"
    if step.startswith("wait") or "package" in step:
        return "package_wait"
    return "step"


def _after_step(notice: Notice, message: str | None = None) -> str:
    """The core's message (or ``message``) without its ``step: `` prefix."""
    text = notice.message if message is None else message
    prefix = f"{notice.step}: "
    return text[len(prefix):] if notice.step and text.startswith(prefix) else text


def _pipeline_link(data: Mapping[str, Any], url: str | None) -> tuple[tuple[str, str], ...]:
    url = url or (data.get("web_url") if _is_url(data.get("web_url")) else None)
    if not url:
        return ()
    label = f"pipeline {data['deployment_id']}" if data.get("deployment_id") else "pipeline"
    return ((label, url),)


def _checks(data: Mapping[str, Any]) -> tuple[CheckRow, ...]:
    rows = []
    for item in data.get("results") or ():
        if isinstance(item, Mapping):
            evidence = tuple(str(e) for e in item.get("evidence") or () if e)
            rows.append(CheckRow(_text(item.get("name")) or "?", _text(item.get("verdict")) or "?",
                                 _text(item.get("detail")), evidence))
    return tuple(rows)


def _listed(value: object) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return _text(value)


def describe(notice: Notice, *, pipeline_url: str | None = None) -> Story:
    """The story of ``notice``.  ``pipeline_url``: the step's pipeline, when the notifier knows it
    from an earlier ``triggered`` notice (a finished deployment's record has only the id)."""
    data, step, action = notice.data, notice.step or "", notice.action
    kind = step_kind(notice)
    version = _text(data.get("version")) or notice.rollout_id

    if action == "created":
        rollback = data.get("rollback") is True
        lines = [f"Plan: {data['plan']}"] if data.get("plan") else []
        spec = data.get("spec")
        if isinstance(spec, Mapping) and spec.get("name"):
            lines.append(f"Spec: {spec['name']}" + (f" · backend: {data['backend']}" if data.get("backend")
                                                    else ""))
        title = f"Rollback to {version} started" if rollback else f"Rollout {version} started"
        return _told(notice, ":leftwards_arrow_with_hook:" if rollback else ":rocket:", title, tuple(lines),
                     headline=True)

    if action == "start":
        if kind == "deployment":
            where = _listed(data.get("environments")) or step
            dry = bool(data.get("check_mode"))
            title = f"{step}: deploying {version} to {where}" + (" (dry run)" if dry else "")
            return _told(notice, ":test_tube:" if dry else ":arrow_forward:", title, (_after_step(notice),))
        if kind == "promotion":
            command = f"deploystate promote {notice.rollout_id} --by YOU"
            return _told(notice, ":raised_hand:", f"{step}: waiting for promotion of {version}",
                         ("A release manager promotes it when the bake and the checks allow:",),
                         command=command)
        if kind == "bake":
            start = data.get("from")
            since = f" (counted from {when(float(start))})" if isinstance(start, int | float) else ""
            return _told(notice, ":hourglass_flowing_sand:", f"{step}: baking {version}{since}",
                         (), command=f"deploystate skip-bake {notice.rollout_id} --by YOU --reason WHY")
        if kind == "package_wait":
            return _told(notice, ":hourglass_flowing_sand:", f"{step}: waiting for the build of {version}")
        return _told(notice, ":arrow_forward:", f"{step}: started")

    if action == "triggered":
        return _told(notice, ":link:", f"{step}: deployer pipeline {_text(data.get('deployment_id'))} "
                     "triggered", links=_pipeline_link(data, pipeline_url))

    if action == "succeed":
        took = duration(data.get("duration_s"))
        if kind == "bake":
            baked = duration(data.get("elapsed_s"))
            return _told(notice, ":timer_clock:", f"{step}: bake finished" + (f" after {baked}" if baked
                                                                                   else ""))
        if kind == "promotion":
            why = f": {data['reason']}" if data.get("reason") else ""
            return _told(notice, ":green_circle:", f"{step}: {version} promoted by "
                         f"{_text(data.get('by')) or '?'}{why}")
        if kind == "tag":
            return _told(notice, ":label:", f"{step}: {version} tagged")
        status = _text(data.get("status"))
        said = (f"status: {status}",) if status and status != "success" else ()
        return _told(notice, ":white_check_mark:", f"{step}: finished" + (f" in {took}" if took else ""),
                     said, links=_pipeline_link(data, pipeline_url))

    if action == "fail" and data.get("superseded"):  # a newer version got there first: no failure
        return _told(notice, ":fast_forward:", f"{step}: not deployed (superseded)", (_after_step(notice),))
    if action == "fail":
        timed_out = data.get("timed_out") is True
        message, runbook = notice.message, None
        if " Runbook: " in message:
            message, runbook = message.rsplit(" Runbook: ", 1)
        links = _pipeline_link(data, pipeline_url)
        if runbook and _is_url(runbook.strip()):
            links += (("runbook", runbook.strip()),)
        if notice.severity != "error":  # a dry run: the real path goes on
            return _told(notice, ":large_yellow_circle:", f"{step}: dry run failed",
                         (_after_step(notice),), links)
        reason = _text(data.get("reason") or data.get("status"))
        title = f"{step}: TIMED OUT" if timed_out else f"{step}: FAILED"
        rest = _after_step(notice, message)
        # "FAILED (reason); release managers: retry with ...": the reason goes in the title, the
        # rest (the core's advice, with the retry command) below it.
        opening = f"FAILED ({reason}); "
        if reason and rest.startswith(opening):
            title, rest = f"{title} ({reason.removeprefix('timed out: ')})", rest[len(opening):]
        return _told(notice, ":alarm_clock:" if timed_out else ":red_circle:", title, (rest,), links,
                     alert=True)

    if action == "checked":
        rows = _checks(data)
        failing = [row for row in rows if not row.passed]
        purpose = _text(data.get("for")) or step or "production"
        purpose = {"promotion": "the promotion", "override": "an override"}.get(purpose, purpose)
        if failing and data.get("passed"):  # failing, but an override lets production go on
            return _told(notice, ":warning:", f"Checks for {purpose}: {len(failing)} of {len(rows)} failing, "
                         "overridden", checks=rows)
        if failing:
            title = f"Checks for {purpose}: {len(failing)} of {len(rows)} failing"
            return _told(notice, ":no_entry_sign:", title, ("Production waits until they pass, or a "
                                                            "release manager overrides them.",),
                         checks=rows, alert=True)
        return _told(notice, ":stethoscope:", f"Checks for {purpose}: all {len(rows)} passed", checks=rows)

    if action == "overridden":
        until = data.get("until")
        till = f" until {when(float(until))}" if isinstance(until, int | float) else ""
        lines = [f"Reason: {_text(data.get('reason'))}"]
        if data.get("checks"):
            lines.append(f"Failing checks overridden: {_listed(data.get('checks'))}")
        return _told(notice, ":warning:", f"Checks overridden by {_text(data.get('by')) or '?'}{till}",
                     tuple(lines))

    if action == "superseded":
        manner = data.get("how") or data.get("why")
        how = f" ({manner})" if manner else ""
        title = (f"{version} superseded on {_text(data.get('environment')) or '?'} by "
                 f"{_text(data.get('by_version')) or '?'}{how}")
        return _told(notice, ":fast_forward:", title, ("This rollout will not deploy there.",),
                     headline=True)

    if action == "finish":
        return _told(notice, ":tada:", f"Rollout {version} done", headline=True)
    if action == "abort" and data.get("superseded"):
        return _told(notice, ":fast_forward:", f"Rollout {version} ends superseded",
                     (f"Reason: {_text(data.get('reason'))}",), headline=True)
    if action == "abort":
        by = _text(data.get("by")) or _aborter(notice)
        return _told(notice, ":octagonal_sign:", f"Rollout {version} aborted by {by}",
                     (f"Reason: {_text(data.get('reason'))}",), headline=True)
    if action == "skip":
        return _told(notice, ":track_next:", f"{step}: skipped by {_text(data.get('by')) or '?'}",
                     (f"Reason: {_text(data.get('reason'))}",))
    if action == "resume":
        return _told(notice, ":repeat:", f"{step}: running again", (_after_step(notice),))
    if action == "retry":
        return _told(notice, ":repeat:", f"{step}: {_after_step(notice)}")
    if action == "canceled":
        return _told(notice, ":stop_button:", f"{step}: {_after_step(notice)}",
                     links=_pipeline_link(data, pipeline_url))
    emoji = {"error": ":red_circle:", "warning": ":warning:"}.get(notice.severity, ":information_source:")
    return _told(notice, emoji, _after_step(notice) if step else notice.message,
                 alert=notice.severity == "error")


def _aborter(notice: Notice) -> str:
    match = re.search(r"aborted by (\S+?):", notice.message)
    return match.group(1) if match else "?"


# --- GitLab markdown ------------------------------------------------------------------------

def _md(text: str) -> str:
    """Text as markdown shows it literally (no emphasis, links or HTML from a person's words)."""
    # Emphasis, code, links, HTML and table cells are what a person's words could start; a
    # parenthesis or a dot only means something after those.
    return re.sub(r"([\\`*_\[\]<>|~])", r"\\\1", text).replace("\n", " ")


def marker(notice: Notice) -> str:
    """A hidden line naming the notice: a repeat finds its note already there."""
    return f"<!-- deploystate notice {notice.rollout_id}:{notice.seq} -->"


def markdown_for(story: Story, mention: str | None = None) -> str:
    """A GitLab note: the title in bold with its emoji, the lines, a check table, links, the command."""
    out = [f"{story.emoji} **{_md(story.title)}**", ""]
    for line in story.lines:  # a paragraph each: GitLab joins lines that are not
        out += [_md(line), ""]
    if story.checks:
        out += ["", "| Check | Verdict | Detail |", "|---|---|---|"]
        for row in story.checks:
            mark = ":white_check_mark:" if row.passed else ":x:"
            evidence = "".join(f" [evidence]({e})" for e in row.evidence if _is_url(e))
            out.append(f"| {_md(row.name)} | {mark} {_md(row.verdict)} | {_md(row.detail)}{evidence} |")
    if story.links:
        out += ["", " · ".join(f"[{_md(label)}]({url})" for label, url in story.links)]
    if story.command:
        out += ["", f"`{story.command}`"]
    if story.alert and mention:
        out += ["", mention]
    out += ["", f"<sub>deploystate · `{story.notice.rollout_id}` · {when(story.notice.at)}</sub>",
            marker(story.notice)]
    return "\n".join(line for i, line in enumerate(out) if line or (i and out[i - 1])).strip() + "\n"


def checks_table(rows: Sequence[CheckRow], width: int = 60) -> str:
    """Check results as aligned plain-text columns (Slack shows them in a code block)."""
    name_width = max((len(row.name) for row in rows), default=0)
    lines = []
    for row in rows:
        mark = "✓" if row.passed else "✗"
        detail = row.detail if len(row.detail) <= width else row.detail[:width - 1] + "…"
        lines.append(f"{mark} {row.name.ljust(name_width)}  {row.verdict.ljust(6)}  {detail}".rstrip())
    return "\n".join(lines)
