"""Bad input is refused where it enters, with exit code 2 and one line naming what to fix.

Numbers of the config, of the waiting policy, of the runner's limits and of the GitLab backend's
settings; auto-deploy versions; files that are not what they should be.  Each case here once got
through (or ended in a traceback): the numbers spun or hammered GitLab, the versions broke later
commands.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from deploystate_backends.autodeploy import BadVersion, check_version
from deploystate_backends.gitlab.settings import GitLabSettings, GitLabSettingsError

from deploystate.cli import main
from deploystate.config import ConfigError, RunnerConfig, load_config
from deploystate.waiting import WaitPolicy

VERSION = "13.10.202103011220"
SETTINGS_ENV = ("DEPLOYSTATE_CONFIG", "DEPLOYSTATE_STORE", "DEPLOYSTATE_BACKEND", "DEPLOYSTATE_SPEC",
                "INDIVIDUAL_DEPLOYMENTS", "TRIGGER_REF")


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a refused command says (exit 2, nothing on stdout)."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("deploystate: error: "), lines[0]
    assert captured.out == ""
    return lines[0]


# -- item 6: numbers of deploystate.toml --------------------------------------------------------


@pytest.mark.parametrize(("section", "key", "value", "says"), [
    ("waiting", "fixed_interval_seconds", "0",
     "[waiting] fixed_interval_seconds must be between 1 and 3600 seconds, got 0"),
    ("waiting", "fixed_interval_seconds", "-1",
     "[waiting] fixed_interval_seconds must be between 1 and 3600 seconds, got -1"),
    ("waiting", "fixed_interval_seconds", "nan",
     "[waiting] fixed_interval_seconds must be between 1 and 3600 seconds, got nan"),
    ("waiting", "fixed_interval_seconds", "inf",
     "[waiting] fixed_interval_seconds must be between 1 and 3600 seconds, got inf"),
    ("waiting", "min_interval_seconds", "0.001",
     "[waiting] min_interval_seconds must be between 1 and 3600 seconds, got 0.001"),
    ("waiting", "max_interval_seconds", "1e300",
     "[waiting] max_interval_seconds must be between 1 and 86400 seconds, got 1e+300"),
    ("limits", "package_wait_minutes", "nan",
     "[limits] package_wait_minutes must be between 1 and 10080 minutes (7 days), got nan"),
    ("limits", "deployment_wait_minutes", "1e300",
     "[limits] deployment_wait_minutes must be between 1 and 10080 minutes (7 days), got 1e+300"),
    ("limits", "failed_watch_minutes", "inf",
     "[limits] failed_watch_minutes must be between 1 and 10080 minutes (7 days), got inf"),
    ("limits", "deployment_wait_minutes", "-5",
     "[limits] deployment_wait_minutes must be between 1 and 10080 minutes (7 days), got -5"),
])
def test_config_numbers_out_of_range_are_refused_at_start_naming_the_key(
        section: str, key: str, value: str, says: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "deploystate.toml"
    config.write_text(f"[{section}]\n{key} = {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(config)
    store = tmp_path / "journal.sqlite"
    line = refused(["start", VERSION, "--store", str(store)], capsys)
    assert says in line
    assert not store.exists()


@pytest.mark.parametrize(("text", "says"), [
    ("[waiting]\nmin_interval_seconds = 900\n",
     "[waiting] min_interval_seconds (900) is more than max_interval_seconds (600, the default)"),
    ("[waiting]\nmin_interval_seconds = 60\nmax_interval_seconds = 30\n",
     "[waiting] min_interval_seconds (60) is more than max_interval_seconds (30)"),
])
def test_waiting_min_above_max_is_refused(text: str, says: str, tmp_path: Path) -> None:
    config = tmp_path / "deploystate.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(config)


def test_sane_config_numbers_are_kept(tmp_path: Path) -> None:
    config = tmp_path / "deploystate.toml"
    config.write_text("[limits]\npackage_wait_minutes = 1\ndeployment_wait_minutes = 10080\n"
                      "[waiting]\nmin_interval_seconds = 1\nmax_interval_seconds = 1\n"
                      "fixed_interval_seconds = 3600\n", encoding="utf-8")
    runner = load_config(config).runner
    assert runner.package_wait_limit_s == 60.0 and runner.deployment_wait_limit_s == 10080 * 60.0
    assert runner.wait_policy == WaitPolicy(min_interval_s=1.0, max_interval_s=1.0, fixed_interval_s=3600.0)


@pytest.mark.parametrize(("given", "says"), [
    ({"fixed_interval_s": 0.0}, "fixed_interval_s must be between 1 and 3600 seconds, got 0.0"),
    ({"fixed_interval_s": math.nan}, "fixed_interval_s must be between 1 and 3600 seconds, got nan"),
    ({"min_interval_s": math.inf}, "min_interval_s must be between 1 and 3600 seconds, got inf"),
    ({"max_interval_s": math.nan}, "max_interval_s must be between 1 and 86400 seconds, got nan"),
    ({"approach": math.nan}, "approach must be more than 0 and at most 1, got nan"),
    ({"min_interval_s": 60.0, "max_interval_s": 30.0},
     "min_interval_s (60.0) is more than max_interval_s (30.0)"),
    ({"expected_s": {"deployment": math.nan}}, "expected_s['deployment'] must be between 1 and 2592000"),
])
def test_wait_policy_refuses_numbers_that_spin_or_crash(given: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        WaitPolicy(**given)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["package_wait_limit_s", "deployment_wait_limit_s", "failed_watch_s",
                                   "trigger_doubt_s"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 0.0, 1e300])
def test_runner_config_refuses_limits_that_spin_or_crash(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{field} must be between")):
        RunnerConfig(**{field: value})  # type: ignore[arg-type]


# -- item 6: the GitLab backend's numbers ------------------------------------------------------

GITLAB = {"url": "http://127.0.0.1:8929", "deployer_project": "g/deployer", "cng_project": "g/cng",
          "omnibus_project": "g/omnibus"}


@pytest.mark.parametrize(("change", "says"), [
    ({"timeout_s": math.nan}, "timeout_s must be a positive number between 0.1 and 300 seconds, got nan"),
    ({"timeout_s": math.inf}, "timeout_s must be a positive number between 0.1 and 300 seconds, got inf"),
    ({"timeout_s": 1e300}, "timeout_s must be a positive number between 0.1 and 300 seconds, got 1e+300"),
    ({"backoff_s": math.nan}, "backoff_s must be a positive number between 0.001 and 60 seconds, got nan"),
    ({"max_backoff_s": math.inf}, "max_backoff_s must be a positive number between 0.001 and 600 seconds"),
    ({"backoff_s": 2.0, "max_backoff_s": 1.0}, "backoff_s (2.0) is more than max_backoff_s (1.0)"),
    ({"read_attempts": 10**9}, "read_attempts must be a whole number between 1 and 20, got 1000000000"),
    ({"find_depth": 0}, "find_depth must be a whole number between 1 and 1000, got 0"),
    ({"find_depth": 10**6}, "find_depth must be a whole number between 1 and 1000, got 1000000"),
    ({"clock_speed": math.nan, "clock_anchor": 1.6e9},
     "clock_speed must be a positive number between 0.01 and 10000, got nan"),
    ({"clock_speed": math.inf, "clock_anchor": 1.6e9},
     "clock_speed must be a positive number between 0.01 and 10000, got inf"),
    ({"clock_speed": 60, "clock_anchor": math.nan},
     "clock_anchor must be a Unix time in seconds between 0 and 32503680000 (year 3000), got nan"),
])
def test_gitlab_numbers_that_crash_or_spin_are_refused_at_start(change: dict[str, object], says: str) -> None:
    with pytest.raises(GitLabSettingsError, match=re.escape(says)):
        GitLabSettings.from_mapping({**GITLAB, **change})


def test_gitlab_sane_numbers_are_kept() -> None:
    parsed = GitLabSettings.from_mapping({**GITLAB, "timeout_s": 0.3, "backoff_s": 0.01,
                                          "max_backoff_s": 0.05, "read_attempts": 20, "find_depth": 1000,
                                          "clock_speed": 600, "clock_anchor": 1.0})
    assert (parsed.timeout_s, parsed.read_attempts, parsed.find_depth) == (0.3, 20, 1000)


# -- item 7: versions --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [VERSION + "\n", "\n" + VERSION, VERSION + " ", VERSION + "\r"])
def test_a_version_with_a_line_break_or_space_is_refused(version: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BadVersion, match="is not an auto-deploy tag"):
        check_version(version)
    store = tmp_path / "journal.sqlite"
    line = refused(["start", version, "--store", str(store)], capsys)
    assert repr(version) in line and not store.exists()


@pytest.mark.parametrize("version", ["013.10.202103011220", "13.010.202103011220", "13.00.202103011220",
                                     "12345.10.202103011220"])
def test_a_version_spelled_another_way_is_refused_not_a_second_rollout(version: str) -> None:
    # 013.10.X and 13.10.X would be two rollouts of one tag.
    with pytest.raises(BadVersion, match="MAJOR and MINOR are whole numbers without leading zeros"):
        check_version(version)


@pytest.mark.parametrize(("version", "when"), [
    ("13.10.999912312359", "9999-12-31 23:59"),
    ("13.10.199912312359", "1999-12-31 23:59"),
    ("13.10.000101010000", "0001-01-01 00:00"),
])
def test_a_tag_time_outside_2000_to_2999_is_refused(version: str, when: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    says = (f"version {version!r}: tag time {when} UTC is not between 2000 and 2999; "
            "give the auto-deploy tag's own time, e.g. 13.10.202103011220")
    with pytest.raises(BadVersion, match=re.escape(says)):
        check_version(version)
    store = tmp_path / "journal.sqlite"
    assert says in refused(["start", version, "--store", str(store)], capsys)
    assert not store.exists()


def test_plausible_versions_are_kept() -> None:
    for version in (VERSION, "0.0.200001010000", "9999.99.299912312359"):
        assert check_version(version) == version


# -- item 9: files that are not what they should be ---------------------------------------------


def test_a_config_that_is_not_utf8_is_refused_naming_the_file(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_bytes(b'[deploystate]\nstore = "\xff.sqlite"\n')
    says = f"{config}: not UTF-8 text (byte 23); save it as UTF-8"
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(config)
    assert says in refused(["status", "--config", str(config)], capsys)


def test_a_log_that_is_a_folder_is_refused_before_the_journal_is_made(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "journal.sqlite"
    (tmp_path / "journal.sqlite.log").mkdir()
    line = refused(["start", VERSION, "--store", str(store)], capsys)
    assert line == (f"deploystate: error: {store}.log is a directory, not a file; deploystate writes the "
                    "journal's structured log there: move that directory away")
    assert not store.exists()


def test_a_log_that_cannot_be_opened_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "journal.sqlite"
    (tmp_path / "journal.sqlite.log").symlink_to(tmp_path / "no" / "such" / "dir")
    line = refused(["start", VERSION, "--store", str(store)], capsys)
    assert line.startswith(f"deploystate: error: cannot open the structured log {store}.log: ")


def test_status_and_history_print_a_time_out_of_range_raw(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # A journal written before versions were checked: tagged 9999-12-31 23:59, so its bake ends in
    # the year 10000, which no date can show.
    from deploystate import Runner, RunnerConfig, SQLiteStore, default_spec
    from deploystate.doubles import FakeDeployer, ManualClock, RecordingNotifier, fake_backends
    from deploystate.ports import Outcome

    store = tmp_path / "journal.sqlite"
    version = "13.10.999912312359"
    with SQLiteStore(store) as journal:
        backends = fake_backends(deployer=FakeDeployer(lambda request, reads: Outcome.SUCCEEDED),
                                 clock=ManualClock(start=253402300740.0))
        # Its notices kept apart (the library default writes them to stderr): stderr is the commands'.
        runner = Runner(journal, backends, config=RunnerConfig(auto_promote="release-manager"),
                        notifier=RecordingNotifier())
        runner.create(version, default_spec())
        assert runner.run(version).view.status == "done"
    for argv in (["status"], ["status", version], ["history", version], ["status", version, "--json"],
                 ["history", version, "--json"]):
        assert main([*argv, "--store", str(store)]) == 0, capsys.readouterr().err
        captured = capsys.readouterr()
        assert captured.err == ""
        assert "253402" in captured.out  # the raw number of seconds, where no date can be shown
