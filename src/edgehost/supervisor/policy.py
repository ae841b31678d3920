"""The restart policy: exponential backoff with jitter, reset after healthy running, crash-loop detection."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from edgehost.settings import RestartPolicy


@dataclass(frozen=True)
class Decision:
    restart_in: float  # seconds to wait before the next start
    failed: bool  # a crash loop: give up on this service


class Backoff:
    """Decides, after each exit, how long to wait or whether the service is crash-looping."""

    def __init__(self, policy: RestartPolicy, rng: random.Random | None = None):
        self.policy = policy
        self.rng = rng or random.Random()
        self.attempt = 0
        self.failures: deque[float] = deque()

    def on_exit(self, now: float, ran_for: float) -> Decision:
        p = self.policy
        if ran_for >= p.healthy_after:
            self.attempt = 0
            self.failures.clear()
        self.failures.append(now)
        while self.failures and now - self.failures[0] > p.crash_loop_window:
            self.failures.popleft()
        if len(self.failures) >= p.crash_loop_failures:
            return Decision(0.0, True)
        ceiling = min(p.max_backoff, p.initial_backoff * (2 ** self.attempt))
        self.attempt += 1
        # "Equal jitter": at least half the ceiling, so restarts of several services spread out
        # without ever hammering a dead dependency.
        return Decision(ceiling / 2 + self.rng.uniform(0, ceiling / 2), False)
