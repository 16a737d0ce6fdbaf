"""Findings of a hostile review of the redesign (54575cc..HEAD): each test fails until its bug is fixed."""

from __future__ import annotations

import pytest

from deploystate import MemoryStore, Runner, RunnerConfig, default_spec, rebuild
from deploystate.doubles import FakeDeployer, ManualClock, fake_backends
from deploystate.errors import DeploystateError
from deploystate.journal import Entry
from deploystate.ports import Deployment, Outcome, TriggerRequest

VERSION = "13.10.202103011220"


class _AbortDuringTrigger(FakeDeployer):
    """A deployer whose first trigger is accepted while an operator aborts the rollout."""

    operator: Runner | None = None

    def trigger(self, request: TriggerRequest) -> Deployment:
        made = super().trigger(request)
        if len(self.triggers()) == 1 and self.operator is not None:
            self.operator.abort(VERSION, "ops", "incident")
        return made


def test_a_trigger_accepted_while_the_rollout_is_aborted_is_canceled() -> None:
    # The abort ran while the trigger was in flight: it could not cancel a deployment the journal
    # did not know yet.  The runner records 'triggered' after the abort, and then nobody cancels
    # it: the deployment runs on, although the abort (without --leave-running) promised to stop it.
    store = MemoryStore()
    deployer = _AbortDuringTrigger(lambda request, reads: Outcome.WAITING)
    backends = fake_backends(deployer=deployer, clock=ManualClock())
    runner = Runner(store, backends, config=RunnerConfig(auto_promote="rm"))
    deployer.operator = Runner(store, backends, config=RunnerConfig(auto_promote="rm"))
    runner.create(VERSION, default_spec())
    result = runner.run(VERSION)
    assert result.view.status == "aborted"
    [made] = deployer.triggers()
    assert made.canceled, "a deployment triggered as the rollout was aborted is left running"
    assert any(r.action == "canceled" and r.step == made.request.key.split("/")[1]
               for r in store.read(VERSION))


def _as_old_journal(store: MemoryStore, rollout_id: str) -> MemoryStore:
    """A copy of ``store`` whose 'created' record lacks 'belongs_to' and 'deploys', as every
    rollout created before those settings existed (it kept only 'backend', the description)."""
    old = MemoryStore()
    for record in store.read(rollout_id):
        data = {k: v for k, v in record.data.items() if k not in ("belongs_to", "deploys")}
        old.append(rollout_id, record.seq - 1, [Entry(record.action, record.at, record.actor, record.step,
                                                      data)])
    return old


def test_a_rollout_created_before_belongs_to_is_not_driven_by_another_backend() -> None:
    # An old simulated rollout recorded its backend only as a description.  A real backend then
    # drives it without a word (the check passes when 'belongs_to' is missing), and deploys for
    # real what was only ever simulated.
    simulated = fake_backends(description="simulated deployer and package builds on a virtual clock "
                                          "(seed 0, world j.sqlite.sim); nothing is ever deployed",
                              identity="simulated world j.sqlite.sim", deploys=False)
    made = MemoryStore()
    Runner(made, simulated).create(VERSION, default_spec())
    old = _as_old_journal(made, VERSION)
    real_deployer = FakeDeployer()
    real = fake_backends(deployer=real_deployer, description="gitlab https://gitlab.example.com deployer 1",
                         identity="gitlab https://gitlab.example.com deployer project 1")
    with pytest.raises(DeploystateError, match="belongs to"):
        Runner(old, real, config=RunnerConfig(auto_promote="rm")).run(VERSION)
    assert real_deployer.triggers() == []
    assert old.last_seq(VERSION) == 1


def test_a_simulated_rollout_created_before_deploys_is_not_said_to_deploy() -> None:
    # Its 'created' record says 'nothing is ever deployed' in its backend description; the view
    # takes the missing 'deploys' for True, so status and notices call the simulated real path REAL.
    simulated = fake_backends(description="simulated deployer and package builds on a virtual clock "
                                          "(seed 0, world j.sqlite.sim); nothing is ever deployed",
                              deploys=False)
    made = MemoryStore()
    Runner(made, simulated).create(VERSION, default_spec())
    view = rebuild(_as_old_journal(made, VERSION).read(VERSION))
    assert view.deploys is False
