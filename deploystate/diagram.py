"""Diagrams drawn from a compiled :class:`~deploystate.machine.RolloutMachine`.

Everything drawn is read back from the machine: its steps from ``states()``, the joins from
``joined()``, the phases and their transitions from ``definition()``.  The spec is consulted
only for what the machine does not know (a step's kind, environments and bake time, used
for short notes).  So a diagram shows what the running machine will actually do, and a change
to the spec or to the machine shows up in the committed diagrams (see the drift test).

Two outputs: Mermaid ``stateDiagram-v2`` (rendered by most code hosts' Markdown) and Graphviz DOT
source, both written as text here; :func:`render_svg` runs the ``dot`` program when present.

Ids we add (fork and join bars, phase states, legend entries) contain an upper-case letter,
which step names cannot (see ``spec.NAME_RE``), so they never collide with a step.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import attrs

from deploystate.actions import Action
from deploystate.errors import DeploystateError
from deploystate.machine import ACTIVE, SEPARATOR, Phase, RolloutMachine
from deploystate.spec import BUILTIN_SPECS, Step, StepKind, builtin_spec
from deploystate.terminal import printable

Format = Literal["mermaid", "dot"]
FORMATS: tuple[Format, ...] = ("mermaid", "dot")
REGENERATE = "deploystate diagram --write diagrams"

# Fill and outline per phase, shared by Mermaid classDef and DOT so both read the same.
PHASE_COLOURS: Mapping[Phase, tuple[str, str]] = {
    Phase.PENDING: ("#e5e7eb", "#6b7280"),
    Phase.RUNNING: ("#bfdbfe", "#1d4ed8"),
    Phase.SUCCEEDED: ("#bbf7d0", "#15803d"),
    Phase.FAILED: ("#fecaca", "#b91c1c"),
}

# Mermaid's lexer reads these as keywords when followed by a space (and "default" even as a
# prefix), so such step names are drawn under an alias id.
_MERMAID_KEYWORDS = frozenset({"state", "note", "class", "classdef", "scale", "statediagram", "direction"})


class DiagramError(DeploystateError):
    """A diagram cannot be drawn as asked (unknown format or step, Graphviz missing or failing)."""


# -- what is drawn, read from the machine ----------------------------------------------------


@attrs.frozen
class _Edge:
    source: str  # a step name, a fork/join id, or START
    dest: str  # a step name, a fork/join id, or END


START = "Start"
END = "End"


@attrs.frozen
class _Flow:
    """The step-level picture: steps, fork and join bars, and the edges between them."""

    steps: tuple[str, ...]
    forks: tuple[str, ...]
    joins: tuple[str, ...]
    edges: tuple[_Edge, ...]


@attrs.frozen
class _PhaseEdge:
    action: Action
    source: str
    dest: str
    label: str


@attrs.frozen
class _StepDetail:
    phases: tuple[str, ...]
    initial: str
    edges: tuple[_PhaseEdge, ...]


@attrs.frozen
class _RolloutEdge:
    dest: str
    label: str


def _steps(machine: RolloutMachine) -> tuple[str, ...]:
    prefix = ACTIVE + SEPARATOR
    return tuple(
        path[len(prefix):] for path in machine.states()
        if path.startswith(prefix) and path.count(SEPARATOR) == 1
    )


def _flow(machine: RolloutMachine) -> _Flow:
    steps = _steps(machine)
    needs = {step: machine.joined(step) for step in steps}
    # Steps with an identical needs set share one join, as in the seed's diagram.
    join_of: dict[frozenset[str], str] = {}
    for step in steps:
        if len(needs[step]) > 1:
            join_of.setdefault(frozenset(needs[step]), f"Join_{step}")

    def target(step: str) -> str:
        return join_of[frozenset(needs[step])] if len(needs[step]) > 1 else step

    edges: list[_Edge] = []
    forks: list[str] = []
    joins_done: set[str] = set()
    for index, step in enumerate(steps):
        if not needs[step]:
            edges.append(_Edge(START, step))
        targets = list(dict.fromkeys(target(s) for s in steps if step in needs[s]))
        if len(targets) > 1:
            fork = f"Fork_{step}"
            forks.append(fork)
            edges.append(_Edge(step, fork))
            edges.extend(_Edge(fork, t) for t in targets)
        elif targets:
            edges.append(_Edge(step, targets[0]))
        else:
            edges.append(_Edge(step, END))
        # A join's way out is drawn right after its last way in, so the text reads in order.
        seen = set(steps[: index + 1])
        for needed, join in join_of.items():
            if join not in joins_done and needed <= seen:
                joins_done.add(join)
                edges.extend(_Edge(join, s) for s in steps if frozenset(needs[s]) == needed)
    return _Flow(steps, tuple(forks), tuple(join_of.values()), tuple(edges))


def _initial_phases(machine: RolloutMachine) -> Mapping[str, str]:
    # A fresh rollout shows the machine's real initial phases, whatever they are.  Its raw
    # state is read, not phases(): with a single step `transitions` keeps a plain string there,
    # which phases() takes for an ended rollout.
    probe = machine.new("diagram-probe")
    try:
        state = probe.state
    finally:
        machine.release(probe)
    paths = [state] if isinstance(state, str) else state
    found = {}
    for path in paths:
        parts = path.split(SEPARATOR)
        if len(parts) == 3 and parts[0] == ACTIVE:
            found[parts[1]] = parts[2]
    return found


def _details(machine: RolloutMachine) -> tuple[dict[str, _StepDetail], list[_RolloutEdge]]:
    steps = _steps(machine)
    phases: dict[str, list[str]] = {step: [] for step in steps}
    for path in machine.states():
        parts = path.split(SEPARATOR)
        if len(parts) == 3 and parts[0] == ACTIVE:
            phases[parts[1]].append(parts[2])
    edges: dict[str, list[_PhaseEdge]] = {step: [] for step in steps}
    rollout: list[_RolloutEdge] = []
    for row in machine.definition():
        label = _label(machine, row.action, row.step, row.guarded)
        if row.step is None:
            rollout.append(_RolloutEdge(row.dest, label))
            continue
        source = row.source.split(SEPARATOR)[-1]
        dest = row.dest.split(SEPARATOR)[-1]
        edges[row.step].append(_PhaseEdge(row.action, source, dest, label))
    initial = _initial_phases(machine)
    details = {
        step: _StepDetail(tuple(phases[step]), initial[step], tuple(edges[step])) for step in steps
    }
    return details, rollout


def _label(machine: RolloutMachine, action: Action, step: str | None, guarded: bool) -> str:
    if not guarded:
        return action.value
    kind = machine.spec.step(step).kind if step is not None else None
    if action is Action.START:
        hint = "needs succeeded"
    elif action is Action.SUCCEED and kind is StepKind.BAKE:
        hint = f"baked {_duration(machine.spec.step(str(step)).duration_s or 0)}"
    elif action is Action.SUCCEED and kind is StepKind.PROMOTION:
        hint = "by whom"
    elif action is Action.SKIP:
        hint = "reason, by whom"
    elif action is Action.FINISH:
        hint = "all succeeded"
    elif action is Action.ABORT:
        hint = "reason"
    else:
        hint = "guarded"
    return f"{action.value} [{hint}]"


def _duration(seconds: int) -> str:
    if seconds and seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds and seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _note(step: Step) -> str:
    """A short line saying what a step does; words only, as Mermaid refuses ':' and ';' here."""
    if step.kind is StepKind.TAG:
        return "auto-deploy tag"
    if step.kind is StepKind.PACKAGE_WAIT:
        return f"waits for the {step.package} build"
    if step.kind is StepKind.DEPLOYMENT:
        return f"deploys {step.environment}" + (", protected" if step.protected else "")
    if step.kind is StepKind.LEGACY_DEPLOYMENT:
        return f"legacy, deploys {', '.join(step.environments)}"
    if step.kind is StepKind.BAKE:
        return f"bakes {_duration(step.duration_s or 0)}, skip needs a reason"
    return "a person promotes"


def _overlay(machine: RolloutMachine, phases: Mapping[str, Phase] | None) -> dict[str, Phase]:
    if phases is None:
        return {}
    steps = set(_steps(machine))
    result: dict[str, Phase] = {}
    for step, phase in phases.items():
        if step not in steps:
            raise DiagramError(f"cannot overlay phases: spec {machine.spec.name!r} has no step {step!r}; "
                               f"steps: {', '.join(_steps(machine))}")
        try:
            result[step] = Phase(phase)
        except ValueError:
            raise DiagramError(f"cannot overlay phases: {phase!r} for step {step!r} is not a phase; "
                               f"use one of: {', '.join(p.value for p in Phase)}") from None
    return result


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _shown(text: str) -> str:
    """User-given text (a spec's name and description) on one line, escaped as everywhere else."""
    return printable(text)


# -- public entry points ----------------------------------------------------------------------


def render(machine: RolloutMachine, fmt: Format = "mermaid", *, phases: Mapping[str, Phase] | None = None,
           detail: bool = False) -> str:
    """The machine as Mermaid or DOT text; the same machine always gives the same text.

    ``detail`` draws each step as a composite state with its phases and transitions;
    ``phases`` (a rollout's :meth:`RolloutMachine.phases`) colours each step by its phase.
    """
    overlay = _overlay(machine, phases)
    if fmt == "mermaid":
        return _Mermaid(machine, overlay, detail).text()
    if fmt == "dot":
        return _Dot(machine, overlay, detail).text()
    raise DiagramError(f"unknown diagram format {fmt!r}; use one of: {', '.join(FORMATS)}")


def dot_program() -> str | None:
    """The path of Graphviz's ``dot``, or None when it is not installed."""
    return shutil.which("dot")


def graphviz_version() -> str:
    """Graphviz's version as ``dot -V`` tells it (e.g. ``2.43.0``)."""
    output = _run_dot(["-V"], b"").decode("utf-8", "replace")
    found = re.search(r"version\s+(\S+)", output)
    if found is None:
        raise DiagramError(f"cannot read the Graphviz version from {output.strip()!r}")
    return found.group(1)


_GENERATOR = re.compile(rb"<!-- Generated by graphviz version [^>]*-->\n")


def render_svg(dot_source: str) -> bytes:
    """SVG drawn by Graphviz's ``dot`` from DOT text; the same input and Graphviz give the same bytes."""
    svg = _run_dot(["-Tsvg"], dot_source.encode("utf-8"))
    # Graphviz stamps its build in a comment; keep only the version, which decides the layout.
    stamp = f"<!-- Generated by Graphviz {graphviz_version()} -->\n".encode()
    return _GENERATOR.sub(lambda _match: stamp, svg, count=1)


def _run_dot(arguments: Sequence[str], stdin: bytes) -> bytes:
    program = dot_program()
    if program is None:
        raise DiagramError("Graphviz's 'dot' program is not installed; install Graphviz "
                           "(apt-get install graphviz, brew install graphviz) or use the DOT text")
    try:
        done = subprocess.run([program, *arguments], input=stdin, capture_output=True, timeout=120,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DiagramError(f"running {program} failed: {error}") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip() or f"exit code {done.returncode}"
        raise DiagramError(f"dot refused the diagram: {message}")
    # `dot -V` writes to stderr.
    return done.stdout or done.stderr


def committed_diagrams(*, svg: bool | None = None) -> dict[str, bytes]:
    """What ``diagrams/`` holds: file name -> content, for every built-in spec.

    SVGs are included when ``svg`` is true, or (``svg=None``) when Graphviz is installed.
    """
    with_svg = dot_program() is not None if svg is None else svg
    files: dict[str, bytes] = {}
    for name in BUILTIN_SPECS:
        machine = RolloutMachine(builtin_spec(name))
        mermaid = render(machine, "mermaid")
        dot = render(machine, "dot")
        files[f"{name}.mmd"] = f"%% Generated by `{REGENERATE}`; do not edit.\n{mermaid}".encode()
        files[f"{name}.dot"] = f"// Generated by `{REGENERATE}`; do not edit.\n{dot}".encode()
        if with_svg:
            files[f"{name}.svg"] = render_svg(dot)
    return files


# -- Mermaid ------------------------------------------------------------------------------------


def _mermaid_id(step: str) -> str:
    if step in _MERMAID_KEYWORDS or step.startswith("default"):
        return f"Step_{step}"
    return step


def _phase_id(step_id: str, phase: str) -> str:
    return f"{step_id}_{phase.capitalize()}"


def _rollout_id(state: str) -> str:
    # The machine's own top-level states (active, done, aborted) drawn under ids of ours.
    return f"Rollout_{state}"


class _Renderer:
    """What both formats draw from: the compiled machine, its step flow, an overlay."""

    def __init__(self, machine: RolloutMachine, overlay: Mapping[str, Phase], detail: bool) -> None:
        self.machine = machine
        self.overlay = overlay
        self.detail = detail
        self.flow = _flow(machine)


class _Mermaid(_Renderer):

    def text(self) -> str:
        spec = self.machine.spec
        about = f" - {_one_line(spec.description)}" if spec.description else ""
        title = _shown(f"spec {spec.name}{about}")
        lines = [f"%% {title}", "stateDiagram-v2"]
        if self.detail:
            details, rollout = _details(self.machine)
            active = _rollout_id(ACTIVE)
            lines.append(f"    [*] --> {active}")
            lines.append(f'    state "{ACTIVE}" as {active} {{')
            lines.extend("    " + line for line in self._flow_lines(inner=True))
            lines.extend("    " + line for line in self._detail_lines(details))
            lines.append("    }")
            for edge in rollout:
                lines.append(f'    state "{edge.dest}" as {_rollout_id(edge.dest)}')
                lines.append(f"    {active} --> {_rollout_id(edge.dest)} : {edge.label}")
                lines.append(f"    {_rollout_id(edge.dest)} --> [*]")
        else:
            lines.extend(self._flow_lines(inner=False))
            lines.extend(self._note_lines())
        lines.extend(self._overlay_lines())
        return "\n".join(lines) + "\n"

    def _node(self, node: str) -> str:
        if node in (START, END):
            return "[*]"
        return node if node in self.flow.forks or node in self.flow.joins else _mermaid_id(node)

    def _flow_lines(self, inner: bool) -> Iterator[str]:
        if not inner:  # in the detail view each step's composite state carries its label
            for step in self.flow.steps:
                if _mermaid_id(step) != step:
                    yield f'    state "{step}" as {_mermaid_id(step)}'
        declared: set[str] = set()
        for edge in self.flow.edges:
            # Inside `active` a final step just ends its region: `finish` leaves `active` later.
            if inner and edge.dest == END:
                continue
            for node in (edge.source, edge.dest):
                if node not in declared and (node in self.flow.forks or node in self.flow.joins):
                    declared.add(node)
                    yield f"    state {node} {'<<fork>>' if node in self.flow.forks else '<<join>>'}"
            yield f"    {self._node(edge.source)} --> {self._node(edge.dest)}"

    def _note_lines(self) -> Iterator[str]:
        for step in self.flow.steps:
            yield f"    {_mermaid_id(step)} : {_note(self.machine.spec.step(step))}"
            if step in self.overlay:
                yield f"    {_mermaid_id(step)} : [{self.overlay[step].value}]"

    def _detail_lines(self, details: Mapping[str, _StepDetail]) -> Iterator[str]:
        for step in self.flow.steps:
            detail = details[step]
            sid = _mermaid_id(step)
            yield f'    state "{step} ({_note(self.machine.spec.step(step))})" as {sid} {{'
            yield f"        [*] --> {_phase_id(sid, detail.initial)}"
            for phase in detail.phases:
                yield f'        state "{phase}" as {_phase_id(sid, phase)}'
            for edge in detail.edges:
                yield (f"        {_phase_id(sid, edge.source)} --> {_phase_id(sid, edge.dest)}"
                       f" : {edge.label}")
            yield "    }"

    def _overlay_lines(self) -> Iterator[str]:
        if not self.overlay:
            return
        for phase, (fill, stroke) in PHASE_COLOURS.items():
            yield f"    classDef {phase.value} fill:{fill},stroke:{stroke},color:#111827"
        for phase in Phase:
            steps = [s for s in self.flow.steps if self.overlay.get(s) is phase]
            if steps:
                if self.detail:
                    ids = [_phase_id(_mermaid_id(s), phase.value) for s in steps]
                else:
                    ids = [_mermaid_id(s) for s in steps]
                yield f"    class {','.join(ids)} {phase.value}"
        # No `direction` here: Mermaid applies a nested direction to the whole diagram.
        yield '    state "phase legend" as Legend {'
        for phase in Phase:
            yield f'        state "{phase.value}" as Legend_{phase.value}'
        yield "    }"
        for phase in Phase:
            yield f"    class Legend_{phase.value} {phase.value}"


# -- DOT ----------------------------------------------------------------------------------------


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attrs(**values: str | float) -> str:
    parts = []
    for key, value in values.items():
        if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
            parts.append(f"{key}={value}")  # an HTML-like label stays unquoted
        elif isinstance(value, str):
            parts.append(f"{key}={_q(value)}")
        else:
            parts.append(f"{key}={value:g}")
    return "[" + ", ".join(parts) + "]"


def _cluster(name: str) -> str:
    # Graphviz draws a subgraph as a box only when its name starts with "cluster".
    return f"cluster_{name}"


_FONT = "Helvetica"
_BAR: dict[str, str | float] = {
    "shape": "box", "style": "filled", "fillcolor": "black", "color": "black", "label": "",
    "width": 1.6, "height": 0.06, "fixedsize": "true",
}


class _Dot(_Renderer):

    def text(self) -> str:
        spec = self.machine.spec
        title = _shown(spec.name + (f": {_one_line(spec.description)}" if spec.description else ""))
        lines = [
            f"digraph {_q(_shown(spec.name))} {{",
            "    " + "graph " + _attrs(rankdir="TB", fontname=_FONT, fontsize=12, label=title, labelloc="t",
                                      nodesep=0.35, ranksep=0.4, compound="true"),
            "    " + "node " + _attrs(shape="box", style="rounded,filled", fillcolor="white",
                                     fontname=_FONT, fontsize=11),
            "    " + "edge " + _attrs(fontname=_FONT, fontsize=9, arrowsize=0.7),
            "    " + _q(START) + " " + _attrs(shape="circle", style="filled", fillcolor="black", label="",
                                               width=0.2, fixedsize="true"),
            "    " + _q(END) + " " + _attrs(shape="doublecircle", style="filled", fillcolor="black", label="",
                                             width=0.16, fixedsize="true"),
        ]
        lines.extend(self._detail_lines() if self.detail else self._step_lines())
        lines.extend(self._legend_lines())
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _bars(self) -> Iterator[str]:
        for bar in (*self.flow.forks, *self.flow.joins):
            yield f"    {_q(bar)} {_attrs(**_BAR)}"

    def _fill(self, step: str) -> dict[str, str]:
        phase = self.overlay.get(step)
        if phase is None:
            return {}
        fill, stroke = PHASE_COLOURS[phase]
        return {"fillcolor": fill, "color": stroke}

    def _step_lines(self) -> Iterator[str]:
        for step in self.flow.steps:
            rows = [f"<b>{html.escape(step)}</b>",
                    f'<font point-size="9">{html.escape(_note(self.machine.spec.step(step)))}</font>']
            if step in self.overlay:
                rows.append(f'<font point-size="9"><i>{self.overlay[step].value}</i></font>')
            yield f"    {_q(step)} {_attrs(label='<' + '<br/>'.join(rows) + '>', **self._fill(step))}"
        yield from self._bars()
        for edge in self.flow.edges:
            yield f"    {_q(edge.source)} -> {_q(edge.dest)}"

    def _detail_lines(self) -> Iterator[str]:
        details, rollout = _details(self.machine)

        def node(step: str, phase: str) -> str:
            return _q(SEPARATOR.join((ACTIVE, step, phase)))

        yield f"    subgraph {_q(_cluster(_rollout_id(ACTIVE)))} {{"
        yield f"        graph {_attrs(label=ACTIVE, style='rounded', color='#9ca3af')}"
        for step in self.flow.steps:
            detail = details[step]
            note = html.escape(_note(self.machine.spec.step(step)))
            label = f'<<b>{html.escape(step)}</b><br/><font point-size="9">{note}</font>>'
            yield f"        subgraph {_q(_cluster(step))} {{"
            yield f"            graph {_attrs(label=label, style='rounded', color='#4b5563')}"
            yield (f"            {_q(f'{ACTIVE}.{step}.Initial')} "
                   f"{_attrs(shape='point', width=0.1, fillcolor='black')}")
            for phase in detail.phases:
                current = self.overlay.get(step)
                fill = self._fill(step) if current is not None and current.value == phase else {}
                yield f"            {node(step, phase)} {_attrs(label=phase, fontsize=10, **fill)}"
            yield f"            {_q(f'{ACTIVE}.{step}.Initial')} -> {node(step, detail.initial)}"
            for phase_edge in detail.edges:
                yield (f"            {node(step, phase_edge.source)} -> {node(step, phase_edge.dest)} "
                       f"{_attrs(label=phase_edge.label)}")
            yield "        }"
        yield from ("    " + line for line in self._bars())
        yield "    }"
        # Between steps the arrows leave a step's box from `succeeded` and enter the next at
        # its initial phase: that is the condition `start` is guarded by.
        for edge in self.flow.edges:
            if edge.dest == END:
                continue
            source, source_box = self._endpoint(edge.source, details, out=True)
            dest, dest_box = self._endpoint(edge.dest, details, out=False)
            extra = {key: value for key, value in (("ltail", source_box), ("lhead", dest_box)) if value}
            yield f"    {source} -> {dest}" + (f" {_attrs(**extra)}" if extra else "")
        anchor = node(self.flow.steps[-1], Phase.SUCCEEDED.value)
        for rollout_edge in rollout:
            dest = _q(_rollout_id(rollout_edge.dest))
            yield f"    {dest} {_attrs(label=rollout_edge.dest)}"
            yield (f"    {anchor} -> {dest} "
                   f"{_attrs(label=rollout_edge.label, ltail=_cluster(_rollout_id(ACTIVE)))}")
            yield f"    {dest} -> {_q(END)}"

    def _endpoint(self, name: str, details: Mapping[str, _StepDetail], *, out: bool) -> tuple[str, str]:
        if name == START:
            return _q(START), ""
        if name in self.flow.forks or name in self.flow.joins:
            return _q(name), ""
        phase = Phase.SUCCEEDED.value if out else details[name].initial
        return _q(SEPARATOR.join((ACTIVE, name, phase))), _cluster(name)

    def _legend_lines(self) -> Iterator[str]:
        if not self.overlay:
            return
        yield f"    subgraph {_q('cluster_Legend')} {{"
        yield f"        graph {_attrs(label='phase legend', style='rounded', color='#9ca3af')}"
        for phase in Phase:
            fill, stroke = PHASE_COLOURS[phase]
            yield (f"        {_q('Legend_' + phase.value)} "
                   f"{_attrs(label=phase.value, fillcolor=fill, color=stroke, fontsize=10)}")
        names = [_q("Legend_" + phase.value) for phase in Phase]
        yield f"        {' -> '.join(names)} {_attrs(style='invis')}"
        yield "    }"
