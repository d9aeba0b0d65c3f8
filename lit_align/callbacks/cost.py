"""What an evaluation callback costs the run: the seconds it spends (probing, generating) beside the run's wall time.

One meter for every such callback (Probes, SampleGenerations): it logs `<name>_cost/seconds` and
`<name>_cost/fraction` (its share of the run so far), and at the end says the split in one line and warns when the
share is above the callback's `warn_fraction`, with what to change.
"""

from __future__ import annotations

import contextlib
import time


class CostMeter:
    def __init__(self, name: str, warn_fraction: float):
        self.name, self.warn_fraction = name, warn_fraction
        self.seconds, self.count = 0.0, 0
        self._run_start: float | None = None

    def start_run(self) -> None:
        self._run_start = time.perf_counter()
        self.seconds, self.count = 0.0, 0

    @contextlib.contextmanager
    def measure(self):
        """Time one evaluation (probe, generation round)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start
            self.count += 1

    def metrics(self) -> dict[str, float]:
        out = {f"{self.name}_cost/seconds": self.seconds}
        if self._run_start is not None:
            out[f"{self.name}_cost/fraction"] = self.seconds / max(time.perf_counter() - self._run_start, 1e-9)
        return out

    def summary(self) -> tuple[float, float]:
        """(the run's other seconds, this callback's share of the run)."""
        total = time.perf_counter() - (self._run_start or time.perf_counter())
        return max(total - self.seconds, 0.0), self.seconds / total if total > 0 else 0.0

    def too_costly(self, fraction: float) -> bool:
        return fraction > self.warn_fraction
