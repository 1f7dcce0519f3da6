"""Replay: run past triggers again after a fix, through a chosen prompt version.

A replay has a selection and a mode, and an id (``r…``, or ``--id``) that marks everything it
writes.

**Selection.** The original triggers, each with its key and its original bytes:

* ``--from/--to``: the records of ``<wf>.triggers`` whose timestamps fall in the range (the
  broker's time index, ``offsets_for_times``, finds where the range starts and ends);
* ``--offsets P:FROM-TO,…``: offset ranges of ``<wf>.triggers``, both ends included;
* ``--source review``: the events that are waiting in review now (a review item holds the
  event's JSON, which is re-encoded with the trigger topic's contract);
* ``--source dlq``: the events that are in the dead letters now (their original bytes, or the
  event of the work item that was dead-lettered after classify).

Where an event is *now* is the latest of its decisions, review items and dead letters. What a
selection leaves out is counted by reason, never silently dropped:

* a trigger that is itself a replay — replaying the original is what was meant;
* **the loop guard**: an event whose latest dead letter came from a replay (its record carried
  ``handoff-replay``; the runtime keeps that header on the dead letter). It failed again after a
  fix, so it waits for a person instead of going round again;
* bytes that do not decode — the same bytes would fail the same way;
* a review item or dead letter whose event has been decided (or moved on) since;
* a review item or dead letter of a later stage — an action that failed or awaits approval, a
  verdict, an outcome: a better prompt does not change them.

**Shadow** runs the selection through the real classify/validate/route code in this process
(:mod:`processors.offline.runner`) with the chosen prompt version, under the control state in force
(rollout mode, thresholds, kill switch) as a live replay would be, writes the new decisions to
``<wf>.replay`` (``Decision.replay`` = the replay id; nothing acts on that topic) and reports
each event's old and new place and the count of each transition (``review:invalid_output →
billing``). Nothing reaches execute.

**Live** produces the selection to ``<wf>.triggers`` again, with its original key and the
headers ``handoff-replay: <id>`` and ``handoff-prompt-version: <V>``. The stages process such a
record as a replay rather than as a duplicate event, and its actions keep their idempotency key
``<event id>:<action>``: an effect that already happened is answered ``already_done``, so
replaying a range twice executes nothing twice.

One module per part: :mod:`~.selection` (what is taken, what is left out and why),
:mod:`~.places` (where every event is now), :mod:`~.shadow`, :mod:`~.live` (gate, re-inject,
settle), :mod:`~.report` (before → after, counted), :mod:`~.writes` (acknowledged writes) and
:mod:`~.request` (a replay as the command line asks for it).
"""
