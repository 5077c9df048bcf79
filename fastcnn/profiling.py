"""Where a training step's time goes: per layer and direction, and the optimizer step.

:meth:`fastcnn.model.Sequential.start_profile` attaches a :class:`Profile`; while it is attached,
every training step (:meth:`~fastcnn.model.Sequential.train_step`) adds the wall time of each
layer's forward and backward, of the optimizer step and of the whole step. The timers only read
the clock between calls, so results are the same with and without profiling; without a profile
attached, no clock is read at all.
"""
from __future__ import annotations

from dataclasses import dataclass

OPTIMIZER = "optimizer step"
OTHER = "other (batch checks, loss, ...)"


@dataclass(frozen=True)
class ProfileRow:
    """One line of a profile: ``name`` is a layer ("0 Conv2D"), :data:`OPTIMIZER` or :data:`OTHER`;
    ``direction`` is "forward", "backward" or "" (the optimizer and the rest)."""

    name: str
    direction: str
    ms_per_batch: float
    percent: float


class Profile:
    """Accumulated timings of the training steps run while it was attached to a model."""

    def __init__(self, layer_names: list[str | None]) -> None:
        #: One name per layer slot; None for slots not reported (the Identity left by a fusion).
        self.layer_names = list(layer_names)
        self.forward_s = [0.0] * len(layer_names)
        self.backward_s = [0.0] * len(layer_names)
        self.optimizer_s = 0.0
        self.step_s = 0.0
        self.batches = 0

    def add_step(self, optimizer_s: float, step_s: float) -> None:
        """Count one training step: its optimizer time and its total time."""
        self.optimizer_s += optimizer_s
        self.step_s += step_s
        self.batches += 1

    def rows(self) -> list[ProfileRow]:
        """Every layer's forward and backward, the optimizer step and the rest of the step, in
        step order; the ms add up to the mean step time and the percentages to 100."""
        n = max(self.batches, 1)
        total = self.step_s if self.step_s > 0 else 1.0

        def row(name: str, direction: str, seconds: float) -> ProfileRow:
            return ProfileRow(name, direction, 1e3 * seconds / n, 100.0 * seconds / total)

        slots = list(zip(self.layer_names, self.forward_s, self.backward_s, strict=True))
        rows = [row(name, "forward", fwd) for name, fwd, _ in slots if name is not None]
        rows += [row(name, "backward", bwd) for name, _, bwd in reversed(slots) if name is not None]
        rows.append(row(OPTIMIZER, "", self.optimizer_s))
        # The remainder (unreported Identity slots included), not a separate timer, so the rows add
        # up to the step.
        reported = sum(r.ms_per_batch for r in rows) * n / 1e3
        rows.append(row(OTHER, "", max(self.step_s - reported, 0.0)))
        return rows

    def to_dict(self) -> dict:
        """JSON-ready: batches, mean step ms and the rows."""
        return {"batches": self.batches, "step_ms": 1e3 * self.step_s / max(self.batches, 1),
                "rows": [vars(r) for r in self.rows()]}

    def table(self) -> str:
        """The rows as an aligned text table, headed by the number of steps and the mean step time."""
        if self.batches == 0:
            return "profile: no training step was timed"
        rows = self.rows()
        width = max(len(r.name) for r in rows)
        lines = [f"profile: {self.batches} training steps, {1e3 * self.step_s / self.batches:.2f} ms per step",
                 f"{'layer':<{width}}  {'pass':<8}  {'ms/batch':>9}  {'% of step':>9}"]
        lines += [f"{r.name:<{width}}  {r.direction:<8}  {r.ms_per_batch:9.3f}  {r.percent:9.1f}" for r in rows]
        return "\n".join(lines)
