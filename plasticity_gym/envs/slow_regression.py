"""SlowRegression-v0: Slowly-Changing Regression (Dohare et al. 2024, Methods)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

import numpy as np

from plasticity_gym.envs.stream import ROLE_STRUCTURE, ROLE_TASK, SupervisedStreamEnv

THRESHOLD_RULES: tuple[str, ...] = ("code", "text")
GENERATOR_NAME = "slow-regression"
# Stated maxima of the kwargs that size the target network (held in memory): a larger value is a
# clear error naming the kwarg, not a MemoryError.
MAX_HIDDEN = 100_000
MAX_BITS = 10_000


class SlowRegressionEnv(SupervisedStreamEnv):
    """Regression onto a fixed random network of threshold units, with slowly drifting inputs.

    ## Description
    Each input is ``m + 1 = n_slow_bits + n_random_bits + 1`` bits (21 by default):
    ``n_slow_bits`` slow bits (15), ``n_random_bits`` random bits (5) drawn afresh for every
    example, and a constant bias bit 1, in that order. The slow bits start uniformly random;
    every ``flip_interval`` (T = 10,000) examples exactly one of them, chosen uniformly, is
    flipped. (The authors' code resamples all slow bits by default; this env follows the paper.)

    The target network is drawn from the stream seed and fixed: ``n_hidden`` (100) linear
    threshold units whose input weights ``w_ij`` (bias weight ``b_i`` included), output
    weights ``v_i`` and output bias ``c`` are each ±1 uniformly. Unit ``i`` outputs 1 when its
    input sum ``Σ_j w_ij x_j + b_i`` strictly exceeds ``θ_i = (m + 1)·β − S_i`` (β = 0.7),
    else 0; the target is ``Σ_i v_i h_i + c``, an integer in ``[-101, 101]``.

    ``S_i`` has two readings, chosen by ``threshold_rule``:

    * ``"code"`` (default): the authors' code, which produced the published figures,
      ``S_i = (m − Σ_{j≤m} w_ij + b_i) / 2``. With ``b_i = +1`` it fires exactly like the text's
      rule; with ``b_i = −1`` the unit needs 17 of its 20 input bits to agree with its weights
      instead of 15, so units fire less and the target varies less.
    * ``"text"``: the Methods text, ``S_i`` = the number of negative input weights of unit ``i``,
      bias weight included.

    A *task* is one block of T examples with fixed slow bits: ``task_boundary`` is True at each
    flip. ``info["slow_bits"]`` gives the slow bits of the scored batch (uint8, read-only).

    ## Observation space
    ``Box(0, 1, (batch_size, m + 1), float32)`` of 0/1 values.

    ## Action space
    ``Box(-(n_hidden + 1), n_hidden + 1, (batch_size,), float32)``: the predicted targets. The
    bounds are the targets' range. A finite prediction outside them is **clipped** to the nearest
    bound before it is scored (so its error is at most that of the bound: 1e30 scores as 101); a
    NaN or infinite one raises ``ValueError``. The native vector env scores the same way.

    ## Rewards
    Minus the mean squared error of the batch.

    ## Info
    ``target`` (float32 values), ``task_id``, ``task_boundary``, ``phase`` (``"train"``),
    ``step_in_task``, ``slow_bits`` and the ``next_*`` keys (design.md §1).

    ## Arguments
    ``n_examples`` (stream length), ``flip_interval`` (T), ``n_slow_bits`` (f), ``n_random_bits``
    (m − f), ``n_hidden``, ``beta``, ``threshold_rule`` (``"code"`` | ``"text"``), ``batch_size``
    (must divide T). ``n_examples`` must be a multiple of T. ``n_hidden`` is at most 100,000 and
    ``n_slow_bits`` at most 10,000 (the target network is held in memory; ``MAX_HIDDEN``,
    ``MAX_BITS``), ``n_random_bits`` at most 16.

    ## Scales
    ============  ===========  =============  =======
    scale         n_examples   flip_interval  tasks
    ============  ===========  =============  =======
    ``smoke``     20,000       2,000          10
    ``cpu``       3,000,000    10,000         300
    ``paper``     3,000,000    10,000         300
    ============  ===========  =============  =======

    The paper's protocol is itself CPU-sized, so ``cpu`` equals ``paper``. ``smoke``
    shortens the stream and flips more often so that a few seconds cover several tasks.
    """

    default_config: ClassVar[dict[str, Any]] = {
        "n_examples": 3_000_000,
        "flip_interval": 10_000,
        "n_slow_bits": 15,
        "n_random_bits": 5,
        "n_hidden": 100,
        "beta": 0.7,
        "threshold_rule": "code",
        "batch_size": 1,
    }
    scales: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"n_examples": 20_000, "flip_interval": 2_000},
        "cpu": {"n_examples": 3_000_000, "flip_interval": 10_000},
        "paper": {"n_examples": 3_000_000, "flip_interval": 10_000},
    }
    chunk_examples: ClassVar[int] = 8192
    _transient_attrs: ClassVar[tuple[str, ...]] = ("_cached_task", "_task_bits", "_task_targets")

    def _configure(self, config: dict[str, Any]) -> dict[str, Any]:
        n_slow = self._check_positive_int("n_slow_bits", config["n_slow_bits"], MAX_BITS)
        n_random = self._check_positive_int("n_random_bits", config["n_random_bits"])
        if n_random > 16:
            raise ValueError(f"n_random_bits must be at most 16 (targets are tabulated), got {n_random}")
        n_hidden = self._check_positive_int("n_hidden", config["n_hidden"], MAX_HIDDEN)
        flip_interval = self._check_positive_int("flip_interval", config["flip_interval"])
        n_examples = self._check_positive_int("n_examples", config["n_examples"])
        if n_examples % flip_interval:
            raise ValueError(
                f"n_examples={n_examples} must be a multiple of flip_interval={flip_interval}"
            )
        beta = config["beta"]
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be a number in [0, 1], got {beta!r}")
        if config["threshold_rule"] not in THRESHOLD_RULES:
            raise ValueError(
                f"threshold_rule={config['threshold_rule']!r}; expected one of {list(THRESHOLD_RULES)}"
            )

        self.n_slow_bits, self.n_random_bits, self.n_hidden = n_slow, n_random, n_hidden
        self.n_input_bits = n_slow + n_random  # m; the bias bit makes m + 1
        self.beta = float(beta)
        self.threshold_rule: str = config["threshold_rule"]
        self.flip_interval = flip_interval
        self.n_tasks = n_examples // flip_interval
        self.examples_per_task = flip_interval
        self.batch_size = self._check_batch_size(config["batch_size"], flip_interval)
        self.x_shape = (self.n_input_bits + 1,)
        self.task_kind = "regression"
        self.target_bound = float(n_hidden + 1)

        resolved = {**config, "beta": self.beta}
        generator = {
            "generator": GENERATOR_NAME,
            "version": 0,
            **{k: resolved[k] for k in ("n_examples", "flip_interval", "n_slow_bits",
                                        "n_random_bits", "n_hidden", "beta", "threshold_rule")},
        }
        canonical = json.dumps(generator, sort_keys=True, separators=(",", ":"))
        self.data_id = {
            "name": GENERATOR_NAME,
            "split": "train",
            "n_examples": n_examples,
            "sha256": hashlib.sha256(canonical.encode()).hexdigest(),
            "synthetic": True,
            "generator": generator,
        }
        # Every combination of the random bits, most significant bit first: row k is k in binary.
        codes = np.arange(2**n_random)
        self._bit_combinations = ((codes[:, None] >> np.arange(n_random - 1, -1, -1)) & 1).astype(np.float64)
        self._bit_weights = (1 << np.arange(n_random - 1, -1, -1)).astype(np.int64)
        self._cached_task: int | None = None
        self._task_bits: np.ndarray | None = None
        self._task_targets: np.ndarray | None = None
        return resolved

    # ------------------------------------------------------------------ the target network

    def _on_new_stream(self) -> None:
        rng = self._rng(ROLE_STRUCTURE)
        m, f = self.n_input_bits, self.n_slow_bits
        # Columns 0..m-1 weight the input bits, column m is the bias weight b_i.
        self.input_weights = rng.choice(np.array([-1, 1], dtype=np.int64), size=(self.n_hidden, m + 1))
        self.output_weights = rng.choice(np.array([-1, 1], dtype=np.int64), size=self.n_hidden)
        self.output_bias = int(rng.choice(np.array([-1, 1], dtype=np.int64)))
        self.thresholds = threshold_values(self.input_weights, self.beta, self.threshold_rule)

        initial = rng.integers(0, 2, size=f, dtype=np.uint8)
        flipped = rng.integers(0, f, size=self.n_tasks - 1)  # bit flipped at the start of task k >= 1
        toggles = np.zeros((self.n_tasks, f), dtype=np.uint8)
        toggles[np.arange(1, self.n_tasks), flipped] = 1
        self.slow_bits_by_task = (initial + np.cumsum(toggles, axis=0, dtype=np.int64)) % 2
        self.slow_bits_by_task = self.slow_bits_by_task.astype(np.uint8)
        self.slow_bits_by_task.flags.writeable = False

    def _target_table(self, task_id: int) -> np.ndarray:
        """Target for each of the 2**n_random_bits inputs of a task (its slow bits are fixed)."""
        f, m = self.n_slow_bits, self.n_input_bits
        weights = self.input_weights
        fixed = weights[:, :f] @ self.slow_bits_by_task[task_id].astype(np.int64) + weights[:, m]
        sums = fixed + self._bit_combinations @ weights[:, f:m].T.astype(np.float64)
        hidden = (sums > self.thresholds).astype(np.int64)
        return (hidden @ self.output_weights + self.output_bias).astype(np.float32)

    def _task(self, task_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Random bits and targets of every example of ``task_id`` (cached for one task)."""
        if self._cached_task != task_id:
            rng = self._rng(ROLE_TASK, task_id)
            bits = rng.integers(0, 2, size=(self.examples_per_task, self.n_random_bits), dtype=np.uint8)
            self._task_bits = bits
            self._task_targets = self._target_table(task_id).take(bits @ self._bit_weights)
            self._cached_task = task_id
        return self._task_bits, self._task_targets  # type: ignore[return-value]

    def _inputs(self, task_id: int, random_bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        f, m = self.n_slow_bits, self.n_input_bits
        x = np.empty((random_bits.shape[0], m + 1), dtype=np.float32) if out is None else out
        x[:, :f] = self.slow_bits_by_task[task_id]
        x[:, f:m] = random_bits
        x[:, m] = 1.0
        return x

    def _generate(
        self, task_id: int, start: int, stop: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        bits, targets = self._task(task_id)
        return self._inputs(task_id, bits[start:stop], out), targets[start:stop].copy()

    def _probe(self, task_id: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        bits = rng.integers(0, 2, size=(n, self.n_random_bits), dtype=np.uint8)
        targets = self._target_table(task_id).take(bits @ self._bit_weights)
        return self._inputs(task_id, bits), targets

    def _task_extras(self, task_id: int) -> dict[str, Any]:
        return {"slow_bits": self.slow_bits_by_task[task_id]}

    def target_of(self, x: np.ndarray) -> np.ndarray:
        """Evaluate the current stream's target network on inputs ``x`` of shape (n, m + 1)."""
        sums = np.asarray(x, dtype=np.float64) @ self.input_weights.T
        hidden = (sums > self.thresholds).astype(np.int64)
        return (hidden @ self.output_weights + self.output_bias).astype(np.float32)


def threshold_values(input_weights: np.ndarray, beta: float, rule: str) -> np.ndarray:
    """θ_i = (m + 1)·β − S_i for ±1 weights ``(n_hidden, m + 1)`` (last column: bias weight)."""
    m = input_weights.shape[1] - 1
    if rule == "code":
        s = (m - input_weights[:, :m].sum(axis=1) + input_weights[:, m]) / 2.0
    elif rule == "text":
        s = (input_weights < 0).sum(axis=1).astype(np.float64)
    else:
        raise ValueError(f"threshold rule {rule!r}; expected one of {list(THRESHOLD_RULES)}")
    return (m + 1) * beta - s
