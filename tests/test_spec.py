"""The pipeline spec: the built-in shapes, and every way a bad shape is refused.

A refused spec raises :class:`SpecError` whose message reads ``step 'x': <what is wrong>; <what to
do>``, prefixed by the file when it came from TOML.  Each case below checks that the message names
the offending step, says what is wrong, and says what to do.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest

from deploystate.errors import SpecError
from deploystate.spec import (
    DEFAULT_BAKE_SECONDS,
    Spec,
    Step,
    StepKind,
    builtin_spec,
    default_spec,
    load_spec,
    resolve_spec,
    spec_to_mapping,
)


def needs_of(spec: Spec) -> dict[str, set[str]]:
    return {step.name: set(step.needs) for step in spec.steps}


def tag(name: str = "tag", **fields: object) -> Step:
    return Step(name=name, kind=StepKind.TAG, **fields)  # type: ignore[arg-type]


def deploy(name: str, environment: str, **fields: object) -> Step:
    return Step(name=name, kind=StepKind.DEPLOYMENT, environment=environment, **fields)  # type: ignore[arg-type]


def promotion(name: str = "promote", **fields: object) -> Step:
    return Step(name=name, kind=StepKind.PROMOTION, **fields)  # type: ignore[arg-type]


def bake(name: str = "bake", **fields: object) -> Step:
    return Step(name=name, kind=StepKind.BAKE, **fields)  # type: ignore[arg-type]


# -- the built-in specs -----------------------------------------------------------------------
def test_default_spec_is_the_seed_diagram() -> None:
    spec = default_spec()
    assert spec.name == "seed"
    assert needs_of(spec) == {
        "tag": set(),
        "wait_cng": {"tag"},
        "wait_omnibus": {"tag"},
        "trigger_gstg": {"wait_cng", "wait_omnibus"},
        "trigger_complete_deployment": {"wait_cng", "wait_omnibus"},
        "trigger_cny": {"trigger_gstg"},
        "baking_time": {"trigger_cny"},
        "manual_promotion": {"trigger_cny"},
        "trigger_gprd": {"baking_time", "manual_promotion"},
    }
    assert [s.name for s in spec.steps if s.protected] == ["trigger_gprd"]


def test_default_spec_kinds_and_targets() -> None:
    spec = default_spec()
    assert {s.name: s.kind for s in spec.steps} == {
        "tag": StepKind.TAG,
        "wait_cng": StepKind.PACKAGE_WAIT,
        "wait_omnibus": StepKind.PACKAGE_WAIT,
        "trigger_gstg": StepKind.DEPLOYMENT,
        "trigger_complete_deployment": StepKind.LEGACY_DEPLOYMENT,
        "trigger_cny": StepKind.DEPLOYMENT,
        "baking_time": StepKind.BAKE,
        "manual_promotion": StepKind.PROMOTION,
        "trigger_gprd": StepKind.DEPLOYMENT,
    }
    assert spec.step("wait_cng").package == "cng"
    assert spec.step("wait_omnibus").package == "omnibus"
    assert spec.step("trigger_complete_deployment").targets == ("gstg", "gprd-cny", "gprd")
    assert spec.for_environment("gprd-cny").name == "trigger_cny"
    assert spec.step("baking_time").duration_s == 1800


def test_default_spec_production_waits_for_everything_but_the_legacy_run() -> None:
    spec = default_spec()
    assert spec.ancestors("trigger_gprd") == {s.name for s in spec.steps} - {
        "trigger_gprd", "trigger_complete_deployment"
    }
    assert set(spec.dependents("trigger_cny")) == {"baking_time", "manual_promotion"}


def test_reordered_spec_deploys_canaries_first_then_staging_and_production_together() -> None:
    spec = builtin_spec("reordered")
    assert needs_of(spec) == {
        "tag": set(),
        "wait_cng": {"tag"},
        "wait_omnibus": {"tag"},
        "trigger_gstg_cny": {"wait_cng", "wait_omnibus"},
        "trigger_cny": {"trigger_gstg_cny"},
        "baking_time": {"trigger_cny"},
        "manual_promotion": {"trigger_cny"},
        "trigger_gstg": {"baking_time", "manual_promotion"},
        "trigger_gprd": {"baking_time", "manual_promotion"},
    }
    assert [spec.for_environment(e).name for e in ("gstg-cny", "gprd-cny", "gstg", "gprd")] == [
        "trigger_gstg_cny", "trigger_cny", "trigger_gstg", "trigger_gprd"
    ]
    assert [s.name for s in spec.steps if s.protected] == ["trigger_gprd"]
    # The legacy all-environments run belongs to the seed's transition period only.
    assert all(s.kind is not StepKind.LEGACY_DEPLOYMENT for s in spec.steps)


@pytest.mark.parametrize("name", ["seed", "reordered"])
def test_builtin_specs_are_kept_in_dependency_order(name: str) -> None:
    seen: set[str] = set()
    for step in builtin_spec(name).steps:
        assert set(step.needs) <= seen, f"{step.name} comes before one of {step.needs}"
        seen.add(step.name)


def test_steps_given_in_any_order_are_sorted_by_their_needs() -> None:
    spec = Spec(name="backwards", steps=(
        deploy("gprd", "gprd", needs=("promote",), protected=True),
        promotion(needs=("cny",)),
        deploy("cny", "gprd-cny", needs=("tag",)),
        tag(),
    ))
    assert [s.name for s in spec.steps] == ["tag", "cny", "promote", "gprd"]


def test_default_spec_is_the_shipped_seed_file() -> None:
    shipped = resources.files("deploystate.specs").joinpath("seed.toml")
    with resources.as_file(shipped) as path:
        assert load_spec(path) == default_spec()


def test_resolve_spec_takes_a_builtin_name_a_path_or_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [[steps]]
        name = "tag"
        kind = "tag"
    """)
    assert resolve_spec(None) == default_spec()
    assert resolve_spec("reordered") == builtin_spec("reordered")
    assert [s.name for s in resolve_spec(path).steps] == ["tag"]


def test_unknown_builtin_spec_lists_the_builtins() -> None:
    with pytest.raises(SpecError, match=r"no built-in spec 'prod'; choose one of: seed, reordered"):
        builtin_spec("prod")


# -- valid shapes that look suspicious --------------------------------------------------------
def test_protected_deployment_may_need_its_promotion_through_another_step() -> None:
    spec = Spec(name="transitive", steps=(
        tag(),
        promotion(needs=("tag",)),
        deploy("cny", "gprd-cny", needs=("promote",)),
        deploy("gprd", "gprd", needs=("cny",), protected=True),
    ))
    assert "promote" in spec.ancestors("gprd")


def test_kind_may_be_given_by_its_name() -> None:
    assert Step(name="soak", kind="bake").kind is StepKind.BAKE


def test_a_bake_without_duration_gets_the_default() -> None:
    assert bake().duration_s == DEFAULT_BAKE_SECONDS


def test_the_legacy_deployment_may_share_environments_with_individual_ones() -> None:
    spec = Spec(name="legacy", steps=(
        deploy("gstg", "gstg"),
        Step(name="complete", kind=StepKind.LEGACY_DEPLOYMENT, environments=("gstg", "gprd")),
    ))
    assert spec.step("complete").targets == ("gstg", "gprd")


@pytest.mark.parametrize("package", ["image", "web-image", "docs_site", "rpm", "helm-chart-2", "p" * 64])
def test_a_package_wait_may_name_any_package_of_the_right_shape(package: str) -> None:
    # Which packages exist is for the backend to say; the spec only checks the name's shape.
    spec = Spec(name="any", steps=(
        tag(),
        Step(name="wait", kind=StepKind.PACKAGE_WAIT, package=package, needs=("tag",)),
        deploy("staging", "staging", needs=("wait",)),
    ))
    assert spec.step("wait").package == package
    assert spec_to_mapping(spec)["steps"][1]["package"] == package


def test_a_package_outside_the_seed_s_loads_from_toml(tmp_path: Path) -> None:
    path = write(tmp_path, """
        name = "images"

        [[steps]]
        name = "wait_image"
        kind = "package_wait"
        package = "web-image"
    """)
    assert load_spec(path).step("wait_image").package == "web-image"


@pytest.mark.parametrize(("build", "says"), [
    (lambda: tag("tag\n"), "step name 'tag\\n' is not valid"),
    (lambda: deploy("staging", "staging\n"), "environment 'staging\\n' is not a valid name"),
    (lambda: Step(name="all", kind=StepKind.LEGACY_DEPLOYMENT, environments=("staging\n",)),
     "environments must be a list of environment names"),
])
def test_names_with_a_trailing_newline_are_refused(build: Callable[[], object], says: str) -> None:
    with pytest.raises(SpecError, match=re.escape(says)):
        build()


# -- invalid specs from Python ----------------------------------------------------------------
# (build, where, problem, fix): ``where`` names the offending step (or the spec), ``problem`` is
# what the message must say is wrong, ``fix`` what it must say to do.
PYTHON_CASES: list[tuple[str, Callable[[], object], str, str, str]] = [
    ("unknown need",
     lambda: Spec(name="s", steps=(tag(), deploy("gstg", "gstg", needs=("tga",)))),
     "step 'gstg'", "needs unknown step 'tga'", "use one of: tag"),
    ("two-step cycle",
     lambda: Spec(name="s", steps=(tag("a", needs=("b",)), tag("b", needs=("a",)))),
     "step 'a'", "its needs form a cycle (a -> b -> a)", "remove one of these needs"),
    ("three-step cycle",
     lambda: Spec(name="s", steps=(tag("a", needs=("c",)), tag("b", needs=("a",)), tag("c", needs=("b",)))),
     "step 'a'", "its needs form a cycle (a -> c -> b -> a)", "remove one of these needs"),
    ("cycle below a sound root",
     lambda: Spec(name="s", steps=(tag(), tag("x", needs=("tag", "y")), tag("y", needs=("x",)))),
     "step 'x'", "cycle (x -> y -> x)", "remove one of these needs"),
    ("self need",
     lambda: tag("a", needs=("a",)),
     "step 'a'", "needs itself", "remove it from its own needs"),
    ("need listed twice",
     lambda: tag("a", needs=("tag", "tag")),
     "step 'a'", "needs lists a step twice", "list each step once"),
    ("duplicate names",
     lambda: Spec(name="s", steps=(tag("a"), tag("a"))),
     "step 'a'", "the name is used twice", "give each step its own name"),
    ("protected without any gate",
     lambda: Spec(name="s", steps=(tag(), deploy("gprd", "gprd", needs=("tag",), protected=True))),
     "step 'gprd'", "is protected but does not need a promotion gate", "add a promotion step to its needs"),
    ("protected behind a bake only",
     lambda: Spec(name="s", steps=(bake(), deploy("gprd", "gprd", needs=("bake",), protected=True))),
     "step 'gprd'", "does not need a promotion gate", "add a promotion step"),
    ("environment deployed twice",
     lambda: Spec(name="s", steps=(deploy("a", "gprd"), deploy("b", "gprd", needs=("a",)))),
     "step 'b'", "environment 'gprd' is already deployed by step 'a'",
     "deploy each environment from one step"),
    ("empty spec",
     lambda: Spec(name="empty", steps=()),
     "spec 'empty'", "has no steps", "add at least one step"),
    ("needs as a string",
     lambda: tag("a", needs="tag"),
     "step 'a'", "needs must be a list of step names, got 'tag'", 'write needs = ["other_step", ...]'),
    ("needs of numbers",
     lambda: tag("a", needs=(1,)),
     "step 'a'", "needs must be a list of step names", "write needs ="),
    ("protected as a string",
     lambda: deploy("gprd", "gprd", protected="yes"),
     "step 'gprd'", "protected must be bool, got 'yes'", "fix the type of protected"),
    ("duration as a string",
     lambda: bake(duration_s="1800"),
     "step 'bake'", "duration_s must be int, got '1800'", "fix the type of duration_s"),
    ("duration as a bool",
     lambda: bake(duration_s=True),
     "step 'bake'", "duration_s must be int, got True", "fix the type of duration_s"),
    ("negative duration",
     lambda: bake(duration_s=-1),
     "step 'bake'", "duration_s must be between 0 and 604800 seconds (7 days), got -1",
     "give the bake time in seconds"),
    ("environment as a number",
     lambda: deploy("gstg", 5),  # type: ignore[arg-type]
     "step 'gstg'", "environment must be str, got 5", "fix the type of environment"),
    ("environment not a name",
     lambda: deploy("gstg", "GSTG"),
     "step 'gstg'", "environment 'GSTG' is not a valid name", "lower-case letters, digits and '-'"),
    ("unknown kind",
     lambda: Step(name="a", kind="canary"),
     "step 'a'", "unknown kind 'canary'", "use one of: tag, package_wait, deployment"),
    ("deployment without environment",
     lambda: Step(name="a", kind=StepKind.DEPLOYMENT),
     "step 'a'", "a deployment needs an environment", 'set environment = "staging"'),
    ("environment on a bake",
     lambda: bake(environment="gprd"),
     "step 'bake'", "environment is only for deployments, not bake", "remove environment"),
    ("environments on a deployment",
     lambda: deploy("a", "gstg", environments=("gstg",)),
     "step 'a'", "environments is only for legacy_deployment", "remove environments"),
    ("legacy deployment without environments",
     lambda: Step(name="all", kind=StepKind.LEGACY_DEPLOYMENT),
     "step 'all'", "a legacy deployment needs its environments", "set environments = "),
    ("legacy deployment listing an environment twice",
     lambda: Step(name="all", kind=StepKind.LEGACY_DEPLOYMENT, environments=("gstg", "gstg")),
     "step 'all'", "environments lists an environment twice", "list each environment once"),
    ("legacy environments as a string",
     lambda: Step(name="all", kind=StepKind.LEGACY_DEPLOYMENT, environments="gstg"),
     "step 'all'", "environments must be a list of environment names", "write environments = "),
    ("package wait without package",
     lambda: Step(name="w", kind=StepKind.PACKAGE_WAIT),
     "step 'w'", "a package wait needs its package", 'set package = "image"'),
    ("package name with upper-case letters",
     lambda: Step(name="w", kind=StepKind.PACKAGE_WAIT, package="Web"),
     "step 'w'", "package 'Web' is not a valid package name", "lower-case letters, digits, '-' and '_'"),
    ("package name that is empty",
     lambda: Step(name="w", kind=StepKind.PACKAGE_WAIT, package=""),
     "step 'w'", "package '' is not a valid package name", "use 1-64 lower-case letters"),
    ("package name with a space",
     lambda: Step(name="w", kind=StepKind.PACKAGE_WAIT, package="web image"),
     "step 'w'", "package 'web image' is not a valid package name", "starting with a letter"),
    ("package name starting with a digit",
     lambda: Step(name="w", kind=StepKind.PACKAGE_WAIT, package="9lives"),
     "step 'w'", "package '9lives' is not a valid package name", "starting with a letter"),
    ("package name with a trailing newline",
     lambda: Step(name="w", kind=StepKind.PACKAGE_WAIT, package="web\n"),
     "step 'w'", "package 'web\\n' is not a valid package name", "lower-case letters"),
    ("package name too long",
     lambda: Step(name="w", kind=StepKind.PACKAGE_WAIT, package="p" * 65),
     "step 'w'", "is not a valid package name", "use 1-64"),
    ("package name as a number",
     lambda: Step(name="w", kind=StepKind.PACKAGE_WAIT, package=7),  # type: ignore[arg-type]
     "step 'w'", "package must be str, got 7", "fix the type of package"),
    ("package on a deployment",
     lambda: deploy("gstg", "gstg", package="cng"),
     "step 'gstg'", "package is only for package_wait", "remove package"),
    ("protected bake",
     lambda: bake(protected=True),
     "step 'bake'", "only a deployment can be protected", "remove protected"),
    ("duration on a promotion",
     lambda: promotion(duration_s=60),
     "step 'promote'", "duration_s is only for a bake", "remove duration_s"),
    ("step name not a name",
     lambda: tag("Trigger GPRD"),
     "step name 'Trigger GPRD'", "is not valid", "lower-case letters, digits and '_'"),
    ("spec name not a string",
     lambda: Spec(name=7, steps=(tag(),)),  # type: ignore[arg-type]
     "spec name", "must be a string, got 7", "give the spec's name as text"),
    ("step that is not a Step",
     lambda: Spec(name="s", steps=({"name": "tag", "kind": "tag"},)),
     "spec 's': steps[0]", "is not a Step but dict", "build it with Step(name=..., kind=...)"),
]


@pytest.mark.parametrize(("build", "where", "problem", "fix"), [c[1:] for c in PYTHON_CASES],
                         ids=[c[0] for c in PYTHON_CASES])
def test_invalid_spec_from_python_is_refused(build: Callable[[], object], where: str, problem: str,
                                            fix: str) -> None:
    with pytest.raises(SpecError) as caught:
        build()
    message = str(caught.value)
    assert message.startswith(where), message
    assert problem in message
    assert fix in message.split("; ", 1)[-1], f"the fix comes after the problem: {message}"


# -- specs from TOML files --------------------------------------------------------------------
def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_a_toml_spec_loads_with_its_name_description_and_steps(tmp_path: Path) -> None:
    path = write(tmp_path, """
        name = "small"
        description = "tag, canary, promotion, production"

        [[steps]]
        name = "tag"
        kind = "tag"

        [[steps]]
        name = "promote"
        kind = "promotion"
        needs = ["cny"]

        [[steps]]
        name = "cny"
        kind = "deployment"
        environment = "gprd-cny"
        needs = ["tag"]

        [[steps]]
        name = "gprd"
        kind = "deployment"
        environment = "gprd"
        protected = true
        needs = ["promote"]
    """)
    spec = load_spec(path)
    assert (spec.name, spec.description) == ("small", "tag, canary, promotion, production")
    assert [s.name for s in spec.steps] == ["tag", "cny", "promote", "gprd"]
    assert spec.step("gprd") == Step(name="gprd", kind=StepKind.DEPLOYMENT, environment="gprd",
                                     protected=True, needs=("promote",))


def test_a_toml_spec_without_a_name_is_named_after_its_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [[steps]]
        name = "tag"
        kind = "tag"
    """, name="hotfix.toml")
    assert load_spec(path).name == "hotfix"


# (toml, where, problem, fix): as for Python, and the message must also start with the file.
TOML_CASES: list[tuple[str, str, str, str, str]] = [
    ("unknown need", """
        [[steps]]
        name = "tag"
        kind = "tag"
        [[steps]]
        name = "gstg"
        kind = "deployment"
        environment = "gstg"
        needs = ["wait_cng"]
     """, "step 'gstg'", "needs unknown step 'wait_cng'", "use one of: tag"),
    ("two-step cycle", """
        [[steps]]
        name = "a"
        kind = "tag"
        needs = ["b"]
        [[steps]]
        name = "b"
        kind = "tag"
        needs = ["a"]
     """, "step 'a'", "cycle (a -> b -> a)", "remove one of these needs"),
    ("self need", """
        [[steps]]
        name = "a"
        kind = "tag"
        needs = ["a"]
     """, "step 'a'", "needs itself", "remove it from its own needs"),
    ("duplicate names", """
        [[steps]]
        name = "tag"
        kind = "tag"
        [[steps]]
        name = "tag"
        kind = "tag"
     """, "step 'tag'", "the name is used twice", "give each step its own name"),
    ("protected without promotion", """
        [[steps]]
        name = "gprd"
        kind = "deployment"
        environment = "gprd"
        protected = true
     """, "step 'gprd'", "is protected but does not need a promotion gate", "add a promotion step"),
    ("environment deployed twice", """
        [[steps]]
        name = "gstg"
        kind = "deployment"
        environment = "gstg"
        [[steps]]
        name = "gstg_again"
        kind = "deployment"
        environment = "gstg"
     """, "step 'gstg_again'", "already deployed by step 'gstg'", "deploy each environment from one step"),
    ("no steps", """
        name = "nothing"
     """, "spec 'nothing'", "has no steps", "add [[steps]] tables"),
    ("steps as one table", """
        [steps]
        name = "tag"
        kind = "tag"
     """, "steps", "must be an array of tables", "write each step as a [[steps]] table"),
    ("step not a table", """
        steps = ["tag"]
     """, "steps[0]", "must be a table, got 'tag'", "write each step as a [[steps]] table"),
    ("needs as a string", """
        [[steps]]
        name = "a"
        kind = "tag"
        needs = "tag"
     """, "step 'a'", "needs must be a list of step names, got 'tag'", "write needs = ["),
    ("protected as a string", """
        [[steps]]
        name = "gprd"
        kind = "deployment"
        environment = "gprd"
        protected = "true"
     """, "step 'gprd'", "protected must be bool, got 'true'", "fix the type of protected"),
    ("duration as a string", """
        [[steps]]
        name = "bake"
        kind = "bake"
        duration_s = "30m"
     """, "step 'bake'", "duration_s must be int, got '30m'", "fix the type of duration_s"),
    ("duration as a bool", """
        [[steps]]
        name = "bake"
        kind = "bake"
        duration_s = true
     """, "step 'bake'", "duration_s must be int, got True", "fix the type of duration_s"),
    ("duration as a float", """
        [[steps]]
        name = "bake"
        kind = "bake"
        duration_s = 1800.5
     """, "step 'bake'", "duration_s must be int, got 1800.5", "fix the type of duration_s"),
    ("environment as a number", """
        [[steps]]
        name = "gstg"
        kind = "deployment"
        environment = 1
     """, "step 'gstg'", "environment must be str, got 1", "fix the type of environment"),
    ("unknown kind", """
        [[steps]]
        name = "a"
        kind = "canary"
     """, "step 'a'", "unknown kind 'canary'", "use one of: tag, package_wait"),
    ("kind as a list", """
        [[steps]]
        name = "a"
        kind = ["tag"]
     """, "step 'a'", "unknown kind ['tag']", "use one of: tag"),
    ("missing kind", """
        [[steps]]
        name = "a"
     """, "step 'a'", "needs both name and kind", "add the missing one (kinds: tag, package_wait"),
    ("missing name", """
        [[steps]]
        kind = "tag"
     """, "step 'steps[0]'", "needs both name and kind", "add the missing one"),
    ("unknown step key", """
        [[steps]]
        name = "gstg"
        kind = "deployment"
        environment = "gstg"
        enviroment = "gprd"
     """, "step 'gstg'", "unknown key(s) ['enviroment']", "known keys: duration_s, environment"),
    ("unknown spec key", """
        stpes = []
     """, "unknown key(s) ['stpes']", "a spec has name", "description and [[steps]]"),
    ("field of another kind", """
        [[steps]]
        name = "promote"
        kind = "promotion"
        duration_s = 60
     """, "step 'promote'", "duration_s is only for a bake", "remove duration_s"),
    ("name not a string", """
        name = 3
        [[steps]]
        name = "tag"
        kind = "tag"
     """, "name", "must be a string, got 3", 'write name = "..." in quotes'),
    ("description not a string", """
        description = ["a", "b"]
        [[steps]]
        name = "tag"
        kind = "tag"
     """, "description", "must be a string, got ['a', 'b']", 'write description = "..." in quotes'),
]


@pytest.mark.parametrize(("text", "where", "problem", "fix"), [c[1:] for c in TOML_CASES],
                         ids=[c[0] for c in TOML_CASES])
def test_invalid_spec_from_toml_is_refused(tmp_path: Path, text: str, where: str, problem: str,
                                          fix: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), f"the message names the file: {message}"
    assert where in message
    assert problem in message
    assert fix in message.split("; ", 1)[-1], f"the fix comes after the problem: {message}"


def test_protected_deployment_with_a_transitive_promotion_loads_from_toml(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [[steps]]
        name = "promote"
        kind = "promotion"
        [[steps]]
        name = "cny"
        kind = "deployment"
        environment = "gprd-cny"
        needs = ["promote"]
        [[steps]]
        name = "gprd"
        kind = "deployment"
        environment = "gprd"
        protected = true
        needs = ["cny"]
    """)
    assert load_spec(path).step("gprd").protected


def test_invalid_toml_syntax_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        name = "broken"
        [[steps]]
        name = "tag
        kind = "tag"
    """)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not valid TOML")
    assert "line 4" in message
    assert message.endswith("fix the syntax")


def test_a_missing_file_says_to_check_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(SpecError, match=r"cannot read spec file .*nowhere\.toml: No such file or directory; "
                                        r"check the path"):
        load_spec(path)


def test_a_directory_is_not_a_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"cannot read spec file .*; check the path"):
        load_spec(tmp_path)


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('description = "déploiement"\n'.encode("latin-1"))
    with pytest.raises(SpecError, match=r"not UTF-8 text .*; save the spec as UTF-8"):
        load_spec(path)


def test_from_mapping_refuses_what_is_not_a_table() -> None:
    with pytest.raises(SpecError, match=r"<mapping>: a spec must be a table with 'name' and \[\[steps\]\]"):
        Spec.from_mapping(["tag"])  # type: ignore[arg-type]


# -- numbers and sizes that once spun or crashed ------------------------------------------------


@pytest.mark.parametrize("seconds", [2**63, 604801, -1])
def test_a_bake_longer_than_a_week_or_negative_is_refused(seconds: int) -> None:
    says = (f"step 'bake': duration_s must be between 0 and 604800 seconds (7 days), got {seconds}; "
            "give the bake time in seconds")
    with pytest.raises(SpecError, match=re.escape(says)):
        bake(duration_s=seconds)


def test_a_bake_of_a_week_is_kept() -> None:
    assert bake(duration_s=604800).duration_s == 604800 and bake(duration_s=0).duration_s == 0


def reversed_chain(length: int) -> tuple[Step, ...]:
    # Last step first, so each step's needs lead all the way back through the chain.
    return tuple(reversed([tag(f"s{i}", needs=(f"s{i - 1}",) if i else ()) for i in range(length)]))


def test_a_long_chain_is_ordered_without_recursion() -> None:
    import inspect
    import sys

    depth = len(inspect.stack())
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 150)  # far less than the chain is long
    try:
        spec = Spec(name="chain", steps=reversed_chain(500))
    finally:
        sys.setrecursionlimit(limit)
    assert [step.name for step in spec.steps] == [f"s{i}" for i in range(500)]


def test_a_cycle_in_a_long_chain_is_still_named() -> None:
    steps = list(reversed_chain(300))
    steps[-1] = tag("s0", needs=("s299",))
    with pytest.raises(SpecError, match=r"its needs form a cycle \(s\d+ -> .* -> s\d+\)"):
        Spec(name="ring", steps=tuple(steps))


def test_a_spec_of_more_than_500_steps_is_refused_with_the_limit(tmp_path: Path) -> None:
    says = "spec 'chain' has 1200 steps; a spec may have at most 500"
    with pytest.raises(SpecError, match=re.escape(says)):
        Spec(name="chain", steps=reversed_chain(1200))
