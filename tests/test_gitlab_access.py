"""Both GitLab tokens are checked when a rollout is created, before anything is written.

A wrong API token or trigger token used to show only mid-run (package waits recorded failed, or a
trigger refused).  Now ``Backends.prepare`` reads the three projects with the API token and looks
the trigger token up in the deployer project's trigger tokens; it creates nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from deploystate_backends.gitlab import GitLabAccessError
from deploystate_backends.gitlab_standin import CNG, DEPLOYER, OMNIBUS, Standin, seed_package_builds
from standin_fixtures import DEPLOYER_TRIGGER_TOKEN, STANDIN_TOKEN
from test_gitlab_backend import ENV, backends_for
from test_gitlab_rollouts import RUN_ENV, VERSION, write_config

from deploystate.cli import main
from deploystate.errors import DeploystateError
from deploystate.sqlite_store import SQLiteStore

WRONG = "glpat-wrong-api-token-0815"


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def refusal(standin: Standin, env: dict[str, str] = ENV, **settings: object) -> str:
    backends = backends_for(standin, env=env, **settings)
    with pytest.raises(GitLabAccessError) as refused:
        backends.prepare(VERSION)
    assert isinstance(refused.value, DeploystateError)  # the command line: one line, exit 2
    return str(refused.value)


def nothing_created(standin: Standin) -> None:
    assert not [p for p in standin.world.pipelines(DEPLOYER) if p.source == "trigger"]
    assert not [route for (method, route) in standin.counters().requests if method != "GET"]


def test_right_tokens_pass_with_four_reads_and_nothing_created(gitlab_standin: Standin) -> None:
    backends_for(gitlab_standin).prepare(VERSION)

    counters = gitlab_standin.counters()
    assert counters.requests == {("GET", "project"): 3, ("GET", "triggers"): 1}
    nothing_created(gitlab_standin)


def test_a_wrong_api_token_is_refused_naming_its_variable_and_the_project(gitlab_standin: Standin) -> None:
    says = refusal(gitlab_standin, env={**ENV, "GITLAB_API_TOKEN": WRONG})

    assert says == ("GitLab rejects the API token in GITLAB_API_TOKEN (401 reading project "
                    f"{DEPLOYER.path!r}, deployer_project in [backends.gitlab]): it is wrong, expired or "
                    "revoked. Put a valid token with the read_api scope in GITLAB_API_TOKEN; nothing was "
                    "started")
    assert WRONG not in says and STANDIN_TOKEN not in says
    nothing_created(gitlab_standin)


def test_a_wrong_trigger_token_is_refused_naming_its_variable_and_the_project(
        gitlab_standin: Standin) -> None:
    wrong_trigger = "glptt-not-the-deployers-token"
    says = refusal(gitlab_standin, env={**ENV, "DEPLOYER_TRIGGER_TOKEN": wrong_trigger})

    assert says == ("the pipeline trigger token in DEPLOYER_TRIGGER_TOKEN is none of the trigger tokens of "
                    f"project {DEPLOYER.path!r} (deployer_project in [backends.gitlab]): copy one from that "
                    "project's Settings > CI/CD > Pipeline trigger tokens into DEPLOYER_TRIGGER_TOKEN; "
                    "nothing was started")
    assert wrong_trigger not in says and DEPLOYER_TRIGGER_TOKEN not in says
    assert gitlab_standin.counters().requests_to("trigger") == 0
    nothing_created(gitlab_standin)


def test_a_project_the_api_token_cannot_find_is_refused_naming_the_setting(gitlab_standin: Standin) -> None:
    says = refusal(gitlab_standin, omnibus_project="gitlab-org/security/omnibus-gitlab-typo")

    assert says == ("project 'gitlab-org/security/omnibus-gitlab-typo' (omnibus_project in "
                    "[backends.gitlab]) is not found with the API token in GITLAB_API_TOKEN (404): check the "
                    "path or id, and that the token's user is a member of the project; nothing was started")


def test_renamed_token_variables_are_named_as_renamed(gitlab_standin: Standin) -> None:
    env = {"CI_API": WRONG, "CI_TRIGGER": DEPLOYER_TRIGGER_TOKEN}
    says = refusal(gitlab_standin, env=env, api_token_env="CI_API", trigger_token_env="CI_TRIGGER")
    assert "API token in CI_API (401" in says and "GITLAB_API_TOKEN" not in says


def test_shortened_trigger_tokens_refuse_what_cannot_match_and_let_the_rest_pass_with_a_warning(
        standin_factory, caplog: pytest.LogCaptureFixture) -> None:
    """GitLab shows other users' trigger tokens by their first four characters only."""
    masked = standin_factory(mask_trigger_tokens=True)
    says = refusal(masked, env={**ENV, "DEPLOYER_TRIGGER_TOKEN": "nope-" + DEPLOYER_TRIGGER_TOKEN})
    assert "is none of the trigger tokens" in says

    with caplog.at_level(logging.WARNING):
        backends_for(masked, env={**ENV, "DEPLOYER_TRIGGER_TOKEN": DEPLOYER_TRIGGER_TOKEN[:4] + "-guess"}
                     ).prepare(VERSION)
    assert ("DEPLOYER_TRIGGER_TOKEN could only be matched by its first 4 characters" in caplog.text
            and DEPLOYER_TRIGGER_TOKEN[:4] + "-guess" not in caplog.text)


def test_an_api_token_that_may_not_list_trigger_tokens_passes_with_a_warning(
        standin_factory, caplog: pytest.LogCaptureFixture) -> None:
    developer = standin_factory(tokens=frozenset({STANDIN_TOKEN, "developer-token"}),
                                maintainer_tokens=frozenset({"maintainer-token"}))
    with caplog.at_level(logging.WARNING):
        backends_for(developer, env={**ENV, "GITLAB_API_TOKEN": "developer-token"}).prepare(VERSION)
    assert "cannot check DEPLOYER_TRIGGER_TOKEN" in caplog.text and "Maintainer" in caplog.text


def test_gitlab_down_at_start_is_refused_saying_try_again(gitlab_standin: Standin) -> None:
    gitlab_standin.faults.next(10, "error", status=503, route="project")
    says = refusal(gitlab_standin)
    assert says.startswith("cannot check the GitLab tokens now: reading project ")
    assert says.endswith("try again once GitLab answers; nothing was started")


def test_deploystate_start_with_a_wrong_token_exits_2_and_writes_no_rollout(
        gitlab_standin: Standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    seed_package_builds(gitlab_standin.world, VERSION)
    for name in RUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GITLAB_API_TOKEN", STANDIN_TOKEN)
    monkeypatch.setenv("DEPLOYER_TRIGGER_TOKEN", "glptt-wrong-trigger-token")
    config = write_config(tmp_path, f"""[backends.gitlab]
url = "{gitlab_standin.url}"
deployer_project = "{DEPLOYER.path}"
cng_project = "{CNG.path}"
omnibus_project = "{OMNIBUS.path}\"""")

    code = main(["start", VERSION, "--config", str(config)])

    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("deploystate: error: the pipeline trigger token in DEPLOYER_TRIGGER_TOKEN is none")
    assert "glptt-wrong-trigger-token" not in err
    journal = tmp_path / "journal.sqlite"
    if journal.exists():
        with SQLiteStore(journal) as store:
            assert store.rollouts() == []
    nothing_created(gitlab_standin)

    monkeypatch.setenv("DEPLOYER_TRIGGER_TOKEN", DEPLOYER_TRIGGER_TOKEN)  # fixed as the message says
    assert main(["start", VERSION, "--config", str(config)]) == 0
    with SQLiteStore(journal) as store:
        assert store.rollouts() == [VERSION]
