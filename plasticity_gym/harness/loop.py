"""The one run loop: drives any kind of :class:`~plasticity_gym.harness.lanes.Lanes` over its
stream, and owns what every run needs: checkpointing, recording, binning, probes and progress.

A run is a list of *segments* run one after another (one per seed for single agents and the
arena, one for all seeds in lockstep); each segment opens its lanes, :func:`drive` runs them to
the end of the stream, and each lane's per-seed run is filed under its result. A checkpoint
holds the finished segments and the one in progress, so a resumed run equals an uninterrupted one.
"Examples" are what a lane's step advances: a stream's examples, or an episodic env's env steps.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from plasticity_gym.harness.checkpoint import Checkpoint, set_rng_state
from plasticity_gym.harness.lanes import Lanes
from plasticity_gym.harness.probes import ProbeSchedule, probe_gap
from plasticity_gym.harness.progress import Progress
from plasticity_gym.harness.records import BINNED_METRICS, PlasticityLog, env_record
from plasticity_gym.harness.recorder import VectorStreamRecorder, default_bin_examples


@dataclass
class LoopState:
    """Where the lanes of a segment are, besides the lanes themselves (picklable)."""

    recorder: VectorStreamRecorder
    logs: list[PlasticityLog]
    last_probed_task: int = -1
    examples: int = 0  # per lane
    wall_s: float = 0.0


@dataclass
class Segment:
    """One part of a run: ``open()`` builds its lanes, ``restore(snapshot)`` rebuilds them."""

    label: str  # for the progress line
    open: Callable[[], Lanes]
    restore: Callable[[Any], Lanes]


@dataclass
class RunRecords:
    """What the run learns from its first lanes: the env block, the agents' blocks, the metric."""

    env: dict[str, Any]
    agents: dict[str | None, dict[str, Any]]
    metric: str
    bin_examples: int | None
    schedule: ProbeSchedule


@dataclass
class RunOutput:
    records: RunRecords
    runs: dict[str | None, list[dict[str, Any]]] = field(default_factory=dict)  # result -> per-seed runs


def drive(lanes: Lanes, st: LoopState, schedule: ProbeSchedule, *, bar: Progress | None = None,
          offset: int = 0, checkpoint: Callable[[LoopState], None] | None = None,
          checkpoint_every: int = 0) -> None:
    """The hot loop: step ``lanes`` to the end of the stream, probing at task starts.

    ``checkpoint(st)`` is called every ``checkpoint_every`` examples per lane (0: never);
    progress counts ``offset`` plus the examples of every lane.
    """
    step, record = lanes.step, st.recorder.record_many
    n_lanes = len(lanes.keys)
    update = bar.update if bar is not None else None
    probing = schedule.every > 0
    every = checkpoint_every if checkpoint is not None else 0
    next_ckpt = (st.examples // every + 1) * every if every else -1
    info = lanes.info()
    examples = st.examples
    t0 = time.perf_counter()
    while True:
        if probing and (info["next_task_boundary"] or st.last_probed_task < 0):
            task = int(info["next_task_id"])
            if schedule.due(task, st.last_probed_task):
                for log, values in zip(st.logs, lanes.probe(schedule.size, schedule.differentiates(task))):
                    if values is not None:
                        log.add(task, values)
                st.last_probed_task = task
        rewards, info, n, done = step()
        examples += record(rewards, info["phase"], info["task_id"], n)
        if done:
            break
        if update is not None:
            update(offset + examples * n_lanes)
        if examples >= next_ckpt > 0:
            st.examples = examples
            st.wall_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            checkpoint(st)  # type: ignore[misc]
            next_ckpt = (examples // every + 1) * every
    st.examples = examples
    st.wall_s += time.perf_counter() - t0


def run_segments(
    env_id: str,
    segments: Sequence[Segment],
    *,
    probe_every: int | None,
    probe_size: int,
    bin_examples: int | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    show_progress: bool = False,
    report: Callable[[int], None] | None = None,
) -> RunOutput:
    """Run ``segments`` one after another (resuming from ``checkpoint`` when asked).

    ``probe_every=None`` probes by the default schedule (:meth:`ProbeSchedule.for_stream`);
    ``bin_examples=None`` bins regression by the default width; ``report``, when given, is
    handed the examples done (over every lane) now and then, shown or not.
    """
    finished: list[list[tuple[tuple[str | None, int], dict[str, Any]]]] = []
    records: RunRecords | None = None
    current = None
    if checkpoint is not None and checkpoint.exists() and not resume:
        # Overwriting it would silently throw away an interrupted run's work.
        raise ValueError(f"checkpoint {checkpoint.path} exists (an interrupted run): pass resume=True "
                         "(--resume) to continue it, or delete it (--fresh) to start over")
    if resume and checkpoint is not None and checkpoint.exists():
        payload = checkpoint.load()
        finished, records, current = payload["finished"], payload["records"], payload["current"]
        if current is None:  # stopped between segments: the next one starts from these RNGs
            set_rng_state(payload["rng"])
        # Said whether or not a progress line is shown: a resumed run must never look fresh.
        if len(finished) < len(segments):
            at = f" at example {current[0].examples:,}" if current is not None else ""
            nxt = f"; continuing {segments[len(finished)].label.strip()}{at}"
        else:
            nxt = "; every part is done"
        print(f"resuming from {checkpoint.path}: {len(finished)} of {len(segments)} parts of the run "
              f"finished{nxt}", file=sys.stderr, flush=True)

    def save(st: LoopState | None, lanes: Lanes | None) -> None:
        if checkpoint is not None:
            checkpoint.save({"finished": finished, "records": records,
                             "current": None if st is None else (st, lanes.snapshot())})  # type: ignore[union-attr]

    total = 0
    for i, segment in enumerate(segments):
        if i < len(finished):
            continue  # finished before the interruption
        if current is not None:
            st, snapshot = current
            current = None
            lanes = segment.restore(snapshot)
            set_rng_state(payload["rng"])  # after building: factories may seed globally
        else:
            lanes = segment.open()
            if records is None:
                metric = lanes.metric
                env_rec = env_record(env_id, lanes.env)
                records = RunRecords(
                    env=env_rec, agents=lanes.agent_records(), metric=metric,
                    bin_examples=((bin_examples or default_bin_examples(int(lanes.env.n_examples_total)))
                                  if metric in BINNED_METRICS else bin_examples),
                    schedule=ProbeSchedule.for_stream(probe_every, env_rec["budget"]["n_tasks"], probe_size),
                )
                agent = getattr(lanes, "agent", None)  # one agent per seed: a user's, or a reference one
                gap = probe_gap(agent, lanes.spec.ident) if agent is not None and records.schedule.every > 0 else None
                if gap is not None:  # said once per run, before its work, not per probe
                    print(f"plasticity-gym: note: {gap}", file=sys.stderr, flush=True)
            st = LoopState(recorder=lanes.recorder(records.metric, records.bin_examples),
                           logs=[PlasticityLog() for _ in lanes.keys])
        n_lanes = len(lanes.keys)
        per_lane = records.env["budget"]["n_examples_total"]
        if not total:
            total = per_lane * n_lanes * len(segments)
        done_before = sum(len(f) for f in finished) * per_lane
        bar = Progress(total, enabled=show_progress, done=done_before + st.examples * n_lanes,
                       label=segment.label, sink=report)
        drive(lanes, st, records.schedule, bar=bar, offset=done_before,
              checkpoint=lambda s, lanes=lanes: save(s, lanes), checkpoint_every=checkpoint_every)
        bar.close(done_before + st.examples * n_lanes)
        own = lanes.run_records()  # what the lanes record themselves (episodic: episodes, series, ...)
        lanes.close()
        series = st.recorder.finish_all()
        finished.append([
            (key, {"seed": key[1], "n_examples": st.examples,
                   "wall_time_s": round(st.wall_s / n_lanes, 3),  # the lanes shared the clock
                   "series": series[j], "plasticity": st.logs[j].as_dict(), **own[j]})
            for j, key in enumerate(lanes.keys)
        ])
        save(None, None)

    assert records is not None
    out = RunOutput(records)
    for seg in finished:
        for (result_key, _seed), run in seg:
            out.runs.setdefault(result_key, []).append(run)
    return out
