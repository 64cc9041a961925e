"""Order of simulated events at one instant, the same in both engine modes.

simpy processes events by (time, priority, creation order). Creation order differs
between fast-forward (one timeout per stretch) and step-by-step (one per iteration),
so whatever must happen in a fixed order at one instant gets a priority instead:

1. arrivals (KV pulls landing, wake-ups: simpy's NORMAL priority);
2. stretch ends, instance by instance (`stretch_end_priority`), so chunks ending at
   one instant reach the driver in instance order in either mode;
3. the driver's scheduling pass, and after it the instances that waited for it and
   the end of the step (`AFTER_STRETCHES`).

That order needs equal instants to be equal floats. Fast-forward sums a stretch in
closed form and step by step adds iteration by iteration, so two instances with equal
histories end an ulp apart in one mode and at one float in the other. Instants within
`TIE_REL` of each other are therefore one instant: a stretch end takes the float of an
equal end already pending (`PendingEnds`), and an instance interrupted at an instant
equal to one of its iteration boundaries counts that boundary as reached (its event,
step by step, comes before the pass that interrupts it).
"""

from __future__ import annotations

import math
from bisect import bisect_left

import simpy

AFTER_STRETCHES = 3
# Instants this close (relative) are one: two float sums of the same iterations differ
# by a few ulps (~1e-16 each), while distinct engine events are milliseconds apart.
TIE_REL = 1e-12


def stretch_end_priority(instance_id: int, num_instances: int) -> float:
    return 2 + instance_id / max(1, num_instances)


class At(simpy.Event):
    """An event that fires `delay_s` from now with the given priority (a prioritised Timeout)."""

    def __init__(self, env: simpy.Environment, delay_s: float, priority: float) -> None:
        super().__init__(env)
        self._ok = True
        self._value = None
        env.schedule(self, priority, delay_s)


class PendingEnds:
    """The instants at which instances' stretches are due to end, so that equal ends
    share one float (see the module's docstring)."""

    __slots__ = ("_times",)

    def __init__(self) -> None:
        self._times: list[float] = []  # sorted, with repeats

    def claim(self, t: float, now: float) -> float:
        """The instant a stretch ending at `t` ends at: a pending end within `TIE_REL`
        of it (not before `now`), else `t` itself. Held until `release`."""
        times = self._times
        i = bisect_left(times, t)
        for j in (i, i - 1):
            if 0 <= j < len(times):
                x = times[j]
                if x >= now and abs(x - t) <= TIE_REL * abs(t):
                    times.insert(j, x)
                    return x
        times.insert(i, t)
        return t

    def release(self, t: float) -> None:
        times = self._times
        i = bisect_left(times, t)
        if i < len(times) and times[i] == t:
            del times[i]


def delay_to(now: float, t: float) -> float:
    """The delay d ≥ 0 with now + d == t in floating point (simpy schedules at now + d)."""
    d = max(0.0, t - now)
    while now + d < t:
        d = math.nextafter(d, math.inf)
    while d > 0.0 and now + d > t:
        d = math.nextafter(d, -math.inf)
    return d
