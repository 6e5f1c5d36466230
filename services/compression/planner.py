"""The sensitivity-guided planner: per-layer sparsity and codebook bits from measured curves.

Each layer has a grid of options (sparsity s, codebook bits b), each with its estimated coded
size and what it costs when that layer alone is pruned to s and shared at b bits, without
retraining (the increase of the loss on a fixed set of training images). Starting from the
least compressed option of every layer, the planner repeatedly takes the one-notch move (one
layer one sparsity up, or one bit down) that saves the most bytes per unit of loss, until the
planned layers reach their size target or the next move would overspend the budget: Han et
al.'s per-layer sensitivity analysis ("Learning both Weights and Connections", NeurIPS 2015)
made into a greedy allocation, with the per-layer costs taken as additive.

    options = {"fc1": {(0, 0): Option(0.5, 6, 120_000.0, 0.001, 0.0), ...}, ...}
    choices = greedy_plan(options, dense_bytes, sparsities, bits, target_bytes=9_000)
    choices["fc1"].sparsity, choices["fc1"].bits, choices["fc1"].why
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sigdl.core.errors import InputError

FREE = 1e-9  # a move whose loss does not rise (sweep noise) costs this little: taken first


@dataclass(frozen=True)
class Option:
    """One layer at one (sparsity, bits) option, as the sweep measured it."""

    sparsity: float
    bits: int
    bytes: float  # estimated coded bytes (relative indices + values, entropy-coded, codebook)
    loss: float  # increase of the sweep loss over the unchanged model (nats)
    accuracy: float  # drop of the sweep accuracy (a fraction; negative: it rose)


@dataclass(frozen=True)
class Choice:
    """What the planner chose for one layer, and why."""

    name: str
    sparsity: float
    bits: int
    estimated_bytes: float
    loss: float  # the sweep's loss increase at this option
    accuracy_drop: float  # the sweep's accuracy drop at this option (fraction)
    why: str

    def to_dict(self) -> dict:
        return asdict(self)


Grid = dict[tuple[int, int], Option]  # (sparsity index, bits index, bits descending) -> Option


def greedy_plan(
    options: dict[str, Grid],
    sparsities: list[float],
    bits: list[int],
    *,
    target_bytes: float | None = None,
    budget: float | None = None,
) -> dict[str, Choice]:
    """Per layer, the option the greedy allocation reaches (see the module docstring).

    `sparsities` ascend, `bits` descend (grid index (0, 0) is the least compressed option);
    stop once the layers' summed bytes are <= `target_bytes`, or before the summed loss would
    exceed `budget`. Deterministic: ties go to the larger saving, then the layer name.
    """
    if target_bytes is None and budget is None:
        raise InputError("the planner needs target_bytes or budget (or both)")
    at = dict.fromkeys(sorted(options), (0, 0))
    spent = sum(max(options[n][at[n]].loss, 0.0) for n in at)
    stop = "no move left: every layer is at its most compressed option"
    while True:
        total = sum(options[n][at[n]].bytes for n in at)
        if target_bytes is not None and total <= target_bytes:
            stop = f"size target reached ({total:,.0f} <= {target_bytes:,.0f} B)"
            break
        move = _best_move(options, at, len(sparsities), len(bits))
        if move is None:
            break
        _, _, name, to = move
        step_loss = options[name][to].loss - options[name][at[name]].loss
        if budget is not None and spent + max(step_loss, 0.0) > budget:
            stop = f"budget spent ({spent:.4f} of {budget:.4f}; next move {step_loss:+.4f})"
            break
        spent += max(step_loss, 0.0)
        at[name] = to
    return {n: _choice(n, options[n], at[n], sparsities, bits, stop) for n in at}


def _best_move(
    options: dict[str, Grid], at: dict[str, tuple[int, int]], n_sparsity: int, n_bits: int
) -> tuple[float, float, str, tuple[int, int]] | None:
    """The move with the most bytes saved per unit of loss: (-efficiency, -saving, name, to)."""
    moves = []
    for name, (i, j) in at.items():
        here = options[name][(i, j)]
        for to in ((i + 1, j), (i, j + 1)):
            if to[0] >= n_sparsity or to[1] >= n_bits:
                continue
            saving = here.bytes - options[name][to].bytes
            if saving <= 0:
                continue
            cost = max(options[name][to].loss - here.loss, FREE)
            moves.append((-saving / cost, -saving, name, to))
    return min(moves) if moves else None


def _choice(
    name: str, grid: Grid, at: tuple[int, int], sparsities: list[float], bits: list[int], stop: str
) -> Choice:
    o = grid[at]
    nexts = []
    for to, what in (((at[0] + 1, at[1]), "sparsity"), ((at[0], at[1] + 1), "bits")):
        if to in grid:
            n = grid[to]
            value = f"{n.sparsity:g}" if what == "sparsity" else f"{n.bits}"
            nexts.append(
                f"{what} {value} would save {o.bytes - n.bytes:,.0f} B for "
                f"{n.loss - o.loss:+.4f} nats"
            )
    why = (
        f"alone at this option the sweep loss rose {o.loss:+.4f} nats and its accuracy "
        f"{-100 * o.accuracy:+.2f} points; est. {o.bytes:,.0f} B; "
        + ("; ".join(nexts) if nexts else "the most compressed option")
        + f"; {stop}"
    )
    return Choice(name, o.sparsity, o.bits, o.bytes, o.loss, o.accuracy, why)
