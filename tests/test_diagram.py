"""Diagrams drawn from the compiled machine: structure, overlay, detail, DOT, and drift of diagrams/."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploystate.diagram import (
    PHASE_COLOURS,
    REGENERATE,
    DiagramError,
    committed_diagrams,
    graphviz_version,
    render,
    render_svg,
)
from deploystate.machine import Phase, RolloutMachine
from deploystate.spec import BUILTIN_SPECS, Spec, Step, StepKind, builtin_spec

DIAGRAMS = Path(__file__).resolve().parent.parent / "diagrams"
HAVE_DOT = shutil.which("dot") is not None
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture
def graphviz() -> None:
    """Graphviz's dot: skipped without it, except under CI=true, where the SVG checks must run."""
    if HAVE_DOT:
        return
    if IN_CI:
        pytest.fail("Graphviz's dot is not installed and CI=true: CI must compare diagrams/*.svg; install "
                    "graphviz (.ci/run does: apt-get install graphviz)")
    pytest.skip("Graphviz's dot is not installed (apt-get install graphviz)")


needs_dot = pytest.mark.usefixtures("graphviz")

EDGE = re.compile(r"^\s*(\S+) --> (\S+)(?: : (.*))?$")
PSEUDO = re.compile(r"^\s*state (\S+) <<(fork|join)>>$")
CLASS = re.compile(r"^\s*class (\S+) (\w+)$")
DESCRIPTION = re.compile(r"^\s*(\w+) : (.*)$")


@attrs.frozen
class Mermaid:
    """A Mermaid state diagram read back into edges, pseudo-states and classes."""

    edges: list[tuple[str, str, str | None]]
    pseudo: dict[str, str]
    classes: dict[str, str]
    descriptions: dict[str, list[str]]

    @classmethod
    def parse(cls, text: str) -> Mermaid:
        lines = text.splitlines()
        assert "stateDiagram-v2" in lines
        edges, pseudo, classes = [], {}, {}
        descriptions: dict[str, list[str]] = defaultdict(list)
        for line in lines:
            if match := EDGE.match(line):
                edges.append((match[1], match[2], match[3]))
            elif match := PSEUDO.match(line):
                pseudo[match[1]] = match[2]
            elif match := CLASS.match(line):
                for node in match[1].split(","):
                    classes[node] = match[2]
            elif match := DESCRIPTION.match(line):
                descriptions[match[1]].append(match[2])
        return cls(edges, pseudo, classes, dict(descriptions))

    def out(self, node: str) -> set[str]:
        return {dest for source, dest, _ in self.edges if source == node}

    def into(self, node: str) -> set[str]:
        return {source for source, dest, _ in self.edges if dest == node}

    def single(self, node: str) -> str:
        (only,) = self.out(node)
        return only

    def needs(self, step: str) -> set[str]:
        """The steps an arrow leads from into ``step``, looking through fork and join bars."""
        found: set[str] = set()
        todo = list(self.into(step))
        while todo:
            node = todo.pop()
            if node in self.pseudo:
                todo.extend(self.into(node))
            elif node != "[*]":
                found.add(node)
        return found


def machine_for(name: str) -> RolloutMachine:
    return RolloutMachine(builtin_spec(name))


# -- the seed's picture --------------------------------------------------------------------------


def test_seed_mermaid_has_the_seeds_shape() -> None:
    diagram = Mermaid.parse(render(machine_for("seed")))

    assert diagram.out("[*]") == {"tag"}
    fork = diagram.single("tag")
    assert diagram.pseudo[fork] == "fork"
    assert diagram.out(fork) == {"wait_cng", "wait_omnibus"}

    # One join after both waits leads to staging and to the legacy deployment, as in the seed.
    join = diagram.single("wait_cng")
    assert diagram.single("wait_omnibus") == join
    assert diagram.pseudo[join] == "join"
    assert diagram.out(join) == {"trigger_gstg", "trigger_complete_deployment"}

    assert diagram.single("trigger_gstg") == "trigger_cny"
    fork_cny = diagram.single("trigger_cny")
    assert diagram.pseudo[fork_cny] == "fork"
    assert diagram.out(fork_cny) == {"baking_time", "manual_promotion"}
    join_cny = diagram.single("baking_time")
    assert diagram.single("manual_promotion") == join_cny
    assert diagram.pseudo[join_cny] == "join"
    assert diagram.out(join_cny) == {"trigger_gprd"}
    assert diagram.out("trigger_gprd") == {"[*]"}
    assert sorted(diagram.pseudo.values()) == ["fork", "fork", "join", "join"]


def test_seed_notes_come_from_the_spec() -> None:
    spec = builtin_spec("seed")
    diagram = Mermaid.parse(render(RolloutMachine(spec)))
    bake = spec.step("baking_time")
    assert bake.duration_s is not None
    assert any(f"{bake.duration_s // 60} min" in text for text in diagram.descriptions["baking_time"])
    assert any("protected" in text for text in diagram.descriptions["trigger_gprd"])
    legacy = " ".join(diagram.descriptions["trigger_complete_deployment"])
    assert all(env in legacy for env in spec.step("trigger_complete_deployment").environments)


def test_reordered_spec_draws_its_own_order() -> None:
    seed_text = render(machine_for("seed"))
    text = render(machine_for("reordered"))
    assert text != seed_text
    diagram = Mermaid.parse(text)

    join = diagram.single("wait_cng")
    assert diagram.pseudo[join] == "join"
    assert diagram.out(join) == {"trigger_gstg_cny"}
    assert diagram.single("trigger_gstg_cny") == "trigger_cny"
    # After bake and promotion, staging and production share one join.
    join_gates = diagram.single("baking_time")
    assert diagram.single("manual_promotion") == join_gates
    assert diagram.out(join_gates) == {"trigger_gstg", "trigger_gprd"}
    assert diagram.out("trigger_gstg") == diagram.out("trigger_gprd") == {"[*]"}
    assert "trigger_complete_deployment" not in text


def test_custom_spec_renders_its_own_shape() -> None:
    # "state" and "default_env" are Mermaid keywords (or start with one): they get an alias.
    spec = Spec(name="custom", steps=(
        Step("build", StepKind.TAG),
        Step("state", StepKind.PACKAGE_WAIT, needs=("build",), package="cng"),
        Step("default_env", StepKind.DEPLOYMENT, needs=("build",), environment="dev"),
        Step("soak", StepKind.BAKE, needs=("state", "default_env"), duration_s=90),
        Step("approve", StepKind.PROMOTION, needs=("build",)),
        Step("prod", StepKind.DEPLOYMENT, needs=("soak", "approve"), environment="prod", protected=True),
    ))
    text = render(RolloutMachine(spec))
    assert 'state "state" as Step_state' in text
    assert 'state "default_env" as Step_default_env' in text
    diagram = Mermaid.parse(text)
    assert diagram.out("[*]") == {"build"}
    fork = diagram.single("build")
    assert diagram.pseudo[fork] == "fork"
    assert diagram.out(fork) == {"Step_state", "Step_default_env", "approve"}
    assert diagram.needs("soak") == {"Step_state", "Step_default_env"}
    assert diagram.needs("prod") == {"soak", "approve"}
    assert diagram.out("prod") == {"[*]"}
    assert any("90 s" in text for text in diagram.descriptions["soak"])


names = st.integers(min_value=1, max_value=7).map(lambda n: [f"s{i}" for i in range(n)])


@st.composite
def dag_specs(draw: st.DrawFn) -> Spec:
    steps = []
    for index, name in enumerate(draw(names)):
        earlier = [f"s{i}" for i in range(index)]
        needs = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        steps.append(Step(name, StepKind.TAG, needs=tuple(needs)))
    return Spec(name="random", steps=tuple(draw(st.permutations(steps))))


@given(dag_specs())
def test_every_arrow_path_matches_the_machines_joins(spec: Spec) -> None:
    machine = RolloutMachine(spec)
    diagram = Mermaid.parse(render(machine))
    needs_sets = set()
    for step in spec.steps:
        assert diagram.needs(step.name) == set(machine.joined(step.name))
        assert ("[*]" in diagram.into(step.name)) == (not step.needs)
        assert ("[*]" in diagram.out(step.name)) == (not spec.dependents(step.name))
        if len(step.needs) > 1:
            needs_sets.add(frozenset(step.needs))
    # One join per distinct needs set; a bar only where something really forks or joins.
    joins = [node for node, kind in diagram.pseudo.items() if kind == "join"]
    assert len(joins) == len(needs_sets)
    for node, kind in diagram.pseudo.items():
        assert len(diagram.out(node) if kind == "fork" else diagram.into(node)) > 1
    # Both formats draw the same arrows.
    assert dot_edges(render(machine, "dot")) == mermaid_edges(diagram)
    # The detail view draws every step, each entered at its initial phase.
    detail = Mermaid.parse(render(machine, detail=True))
    assert {dest for source, dest, _ in detail.edges if source == "[*]"} >= {
        f"{step.name}_Pending" for step in spec.steps}


def mermaid_edges(diagram: Mermaid) -> set[tuple[str, str]]:
    return {(source.replace("[*]", "Start"), dest.replace("[*]", "End")) for source, dest, _ in diagram.edges}


def dot_edges(text: str) -> set[tuple[str, str]]:
    return set(re.findall(r'^\s*"([^"]+)" -> "([^"]+)"', text, flags=re.MULTILINE))


def test_rendering_is_deterministic_and_leaves_the_machine_serving_rollouts() -> None:
    machine = machine_for("seed")
    rollout = machine.new("r1")
    machine.fire(rollout, "start", "tag")
    first = [render(machine, fmt, detail=detail) for fmt in ("mermaid", "dot") for detail in (False, True)]
    again = [render(machine_for("seed"), fmt, detail=detail)
             for fmt in ("mermaid", "dot") for detail in (False, True)]
    assert first == again
    machine.fire(rollout, "succeed", "tag")
    assert machine.ready(rollout) == ["wait_cng", "wait_omnibus"]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(DiagramError, match="mermaid, dot"):
        render(machine_for("seed"), "svg")  # type: ignore[arg-type]


# -- overlay ---------------------------------------------------------------------------------------


def rollout_in_progress(machine: RolloutMachine) -> dict[str, Phase]:
    rollout = machine.new("overlay")
    for action, step in (("start", "tag"), ("succeed", "tag"), ("start", "wait_cng"),
                         ("start", "wait_omnibus"), ("fail", "wait_omnibus")):
        machine.fire(rollout, action, step)
    return machine.phases(rollout)


def test_overlay_styles_each_step_by_its_phase() -> None:
    machine = machine_for("seed")
    phases = rollout_in_progress(machine)
    assert len(set(phases.values())) == 4  # the rollout shows every phase at once
    diagram = Mermaid.parse(render(machine, phases=phases))
    styled = {node: cls for node, cls in diagram.classes.items() if not node.startswith("Legend_")}
    assert styled == {step: phase.value for step, phase in phases.items()}
    for step, phase in phases.items():
        assert f"[{phase.value}]" in diagram.descriptions[step]
    text = render(machine, phases=phases)
    for phase, (fill, _) in PHASE_COLOURS.items():
        assert re.search(rf"classDef {phase.value} fill:{fill}\b", text)
        assert diagram.classes[f"Legend_{phase.value}"] == phase.value


def test_overlay_fills_dot_nodes_and_draws_a_legend() -> None:
    machine = machine_for("seed")
    phases = rollout_in_progress(machine)
    text = render(machine, "dot", phases=phases)
    for step, phase in phases.items():
        line = next(line for line in text.splitlines() if line.strip().startswith(f'"{step}" ['))
        assert f'fillcolor="{PHASE_COLOURS[phase][0]}"' in line
        assert f"<i>{phase.value}</i>" in line
    assert "cluster_Legend" in text
    assert "cluster_Legend" not in render(machine, "dot")


def test_overlay_in_detail_marks_the_current_phase() -> None:
    machine = machine_for("seed")
    phases = rollout_in_progress(machine)
    diagram = Mermaid.parse(render(machine, phases=phases, detail=True))
    styled = {node: cls for node, cls in diagram.classes.items() if not node.startswith("Legend_")}
    assert styled == {f"{step}_{phase.value.capitalize()}": phase.value for step, phase in phases.items()}


def test_overlay_refuses_unknown_steps_and_phases() -> None:
    machine = machine_for("seed")
    with pytest.raises(DiagramError, match="no step 'trigger_nowhere'"):
        render(machine, phases={"trigger_nowhere": Phase.RUNNING})
    with pytest.raises(DiagramError, match="not a phase"):
        render(machine, phases={"tag": "sleeping"})  # type: ignore[dict-item]


# -- detail ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec_name", ["seed", "reordered"])
def test_detail_shows_every_transition_of_the_machine(spec_name: str) -> None:
    machine = machine_for(spec_name)
    mermaid = Mermaid.parse(render(machine, detail=True))
    dot = render(machine, "dot", detail=True)
    drawn = {(source, dest, label.split()[0], "[" in label)
             for source, dest, label in mermaid.edges if label is not None}
    definition = machine.definition()
    assert {row.action.value for row in definition} >= {"start", "succeed", "fail", "resume", "retry", "skip"}
    for row in definition:
        if row.step is None:
            source, dest = "Rollout_active", f"Rollout_{row.dest}"
        else:
            source = f"{row.step}_{row.source.split('.')[-1].capitalize()}"
            dest = f"{row.step}_{row.dest.split('.')[-1].capitalize()}"
            assert re.search(rf'"{re.escape(row.source)}" -> "{re.escape(row.dest)}" '
                             rf'\[label="{row.action.value}\b', dot)
        assert (source, dest, row.action.value, row.guarded) in drawn
    assert len(drawn) == len(definition)
    # Each step starts in the phase a fresh rollout has.
    for step, phase in machine.phases(machine.new("fresh")).items():
        assert ("[*]", f"{step}_{phase.value.capitalize()}", None) in mermaid.edges
    # Skipping is a bake's privilege: the diagram shows it only there.
    skips = {source for source, _, label in mermaid.edges if label and label.startswith("skip")}
    bakes = {s.name for s in machine.spec.steps if s.kind is StepKind.BAKE}
    assert skips == {f"{bake}_Running" for bake in bakes}


# -- Graphviz ------------------------------------------------------------------------------------


def dot_json_edges(dot_text: str) -> set[tuple[str, str]]:
    done = subprocess.run(["dot", "-Tjson"], input=dot_text, capture_output=True, text=True, check=True)
    graph = json.loads(done.stdout)
    names = {obj["_gvid"]: obj["name"] for obj in graph["objects"]}
    return {(names[edge["tail"]], names[edge["head"]]) for edge in graph.get("edges", [])}


@needs_dot
@pytest.mark.parametrize("spec_name", ["seed", "reordered"])
def test_dot_parses_and_draws_what_mermaid_draws(spec_name: str) -> None:
    machine = machine_for(spec_name)
    assert dot_json_edges(render(machine, "dot")) == mermaid_edges(Mermaid.parse(render(machine)))
    phases = rollout_in_progress(machine)
    for detail in (False, True):
        svg = render_svg(render(machine, "dot", detail=detail, phases=phases))
        assert svg.startswith(b"<?xml") and b"<svg" in svg


@needs_dot
def test_svg_is_reproducible_and_names_the_graphviz_version() -> None:
    source = render(machine_for("seed"), "dot")
    first, second = render_svg(source), render_svg(source)
    assert first == second
    assert f"<!-- Generated by Graphviz {graphviz_version()} -->".encode() in first
    assert b"graphviz version" not in first  # the build stamp is normalised away


@needs_dot
def test_broken_dot_source_gives_a_clear_error() -> None:
    with pytest.raises(DiagramError, match="dot refused the diagram"):
        render_svg("digraph { a -> }")


def test_svg_without_graphviz_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no dot to be found
    with pytest.raises(DiagramError, match="install Graphviz"):
        render_svg(render(machine_for("seed"), "dot"))


# -- drift: diagrams/ must be what the code draws now ------------------------------------------------


def _stale(name: str) -> str:
    return f"diagrams/{name} is not what the code draws now; run `{REGENERATE}` and commit the result"


@pytest.mark.parametrize("name", [f"{spec}.{ext}" for spec in BUILTIN_SPECS for ext in ("mmd", "dot")])
def test_committed_text_diagrams_are_current(name: str) -> None:
    path = DIAGRAMS / name
    assert path.is_file(), f"diagrams/{name} is missing; run `{REGENERATE}`"
    assert path.read_bytes() == committed_diagrams(svg=False)[name], _stale(name)


SVG = "{http://www.w3.org/2000/svg}"


def svg_graph(svg: bytes) -> dict[str, object]:
    """What an SVG of Graphviz's shows, without where: every node, edge and box by its title,
    with the texts drawn in it, in order.  Layouts (coordinates, sizes) differ between Graphviz
    versions; this does not."""
    root = ElementTree.fromstring(svg)
    shown: dict[str, object] = {}
    for group in root.iter(f"{SVG}g"):
        kind = group.get("class")
        if kind not in {"graph", "node", "edge", "cluster"}:
            continue
        title = group.find(f"{SVG}title")
        assert title is not None and title.text is not None, ElementTree.tostring(group)[:200]
        texts = tuple((text.get("font-weight", ""), "".join(text.itertext()))
                      for text in group.findall(f"{SVG}text"))
        key = f"{kind} {title.text}"
        assert key not in shown, f"two {kind}s titled {title.text!r}"
        shown[key] = texts
    return shown


def svg_drift(name: str, committed: bytes) -> str | None:
    """Why the committed SVG ``name`` is not what the code draws now; None when it is.

    Drawn by this machine's Graphviz version, the bytes must be equal; by another, the graph
    (nodes, edges, boxes and every text) must be: the layout may differ, never what is drawn.
    """
    stamp = re.search(rb"<!-- Generated by Graphviz (\S+) -->", committed)
    if stamp is None:
        return _stale(name)
    current = render_svg(render(machine_for(name.removesuffix(".svg")), "dot"))
    if stamp[1].decode() == graphviz_version():
        return None if committed == current else _stale(name)
    try:
        drawn = svg_graph(committed)
    except ElementTree.ParseError as error:
        return f"{_stale(name)} (it is not SVG: {error})"
    return None if drawn == svg_graph(current) else _stale(name)


@needs_dot
@pytest.mark.parametrize("name", [f"{spec}.svg" for spec in BUILTIN_SPECS])
def test_committed_svgs_are_current(name: str) -> None:
    path = DIAGRAMS / name
    assert path.is_file(), f"diagrams/{name} is missing; run `{REGENERATE}`"
    assert svg_drift(name, path.read_bytes()) is None


def other_graphviz(svg: bytes) -> bytes:
    """``svg`` as another Graphviz would stamp it."""
    return re.sub(rb"<!-- Generated by Graphviz \S+ -->", b"<!-- Generated by Graphviz 0.0.1 -->", svg,
                  count=1)


@contextlib.contextmanager
def deciding() -> Iterator[None]:
    """A drift check must say yes or no: skipping it is a failure."""
    try:
        yield
    except pytest.skip.Exception as skipped:
        pytest.fail(f"the drift check skipped instead of comparing: {skipped}")


@needs_dot
@deciding()
def test_svg_drift_is_caught_when_another_graphviz_drew_the_file() -> None:
    current = render_svg(render(machine_for("seed"), "dot"))
    # A step renamed (as if the spec changed and the SVG was not refreshed).
    stale = other_graphviz(current.replace(b">trigger_gprd<", b">trigger_prod<"))
    assert svg_drift("seed.svg", stale) == _stale("seed.svg")
    # An arrow gone.
    edge = re.search(rb'<g id="edge\d+" class="edge">.*?</g>\n', current, flags=re.DOTALL)
    assert edge is not None
    assert svg_drift("seed.svg", other_graphviz(current.replace(edge[0], b""))) == _stale("seed.svg")
    # Only the layout differs (coordinates): the same graph.
    moved = re.sub(rb'(x|y)="(-?[0-9.]+)"', lambda m: m[1] + b'="' + m[2] + b'1"', other_graphviz(current))
    assert svg_drift("seed.svg", moved) is None


def test_under_ci_a_missing_dot_fails_the_svg_checks_instead_of_skipping_them(tmp_path: Path) -> None:
    # No dot on PATH (an empty folder), CI=true: the drift test must fail, saying what to install.
    test = f"{Path(__file__)}::test_committed_svgs_are_current"
    env = {**os.environ, "PATH": str(tmp_path), "CI": "true"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", test],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"\b2 (failed|errors)\b", done.stdout), done.stdout
    assert not re.search(r"\d skipped", done.stdout), done.stdout
    assert "Graphviz's dot is not installed and CI=true" in done.stdout
    # Outside CI the same checks are skipped, saying why.
    env["CI"] = ""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", test],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 0 and "2 skipped" in done.stdout, done.stdout
