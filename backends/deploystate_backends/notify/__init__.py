"""Notifiers: Slack (incoming webhook, Block Kit), GitLab issue notes, signed generic webhooks.

Each module has a factory ``create(settings, env) -> Notifier`` (entry point group
``deploystate.notifiers``), given its ``[notify.NAME]`` table without ``notices`` (the delivery
core decides which notices go where) and the environment.  A factory refuses unknown keys and an
unset or empty secret variable before anything is written; a notifier's ``notify`` raises
:class:`~deploystate.ports.NotifierError` when the receiver did not take the notice (``retry_after``
from a 429, ``permanent`` for a 4xx that trying again cannot fix).  Secrets (Slack's webhook URL
is one) never appear in a message.

Rendering is shared: :mod:`.render` turns a notice into a :class:`~.render.Story`, which
:mod:`.slack_blocks` writes as Block Kit and :mod:`.render` as GitLab markdown.
"""
