"""Order of simulated events at one instant, the same in both engine modes.

simpy processes events by (time, priority, creation order). Creation order differs
between fast-forward (one timeout per stretch) and step-by-step (one per iteration),
so whatever must happen in a fixed order at one instant gets a priority instead:

1. arrivals (KV pulls landing, wake-ups: simpy's NORMAL priority);
2. stretch ends, instance by instance (`stretch_end_priority`), so chunks ending at
   one instant reach the driver in instance order in either mode;
3. the driver's scheduling pass, and after it the instances that waited for it and
   the end of the step (`AFTER_STRETCHES`).
"""

from __future__ import annotations

import simpy

AFTER_STRETCHES = 3


def stretch_end_priority(instance_id: int, num_instances: int) -> float:
    return 2 + instance_id / max(1, num_instances)


class At(simpy.Event):
    """An event that fires `delay_s` from now with the given priority (a prioritised Timeout)."""

    def __init__(self, env: simpy.Environment, delay_s: float, priority: float) -> None:
        super().__init__(env)
        self._ok = True
        self._value = None
        env.schedule(self, priority, delay_s)
