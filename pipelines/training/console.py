"""Lines from the workers to the driver's console: rank 0 says them, the driver logs each once.

Workers' own stdout and stderr stay in their log files (the CLIs start Ray with `log_to_driver=False`),
so what a person reads is the driver's log: the plan, the progress lines and epoch summaries relayed
here, the export path, the final table.

    with RelayedConsole(log) as console:              # driver
        trainer = build_trainer(..., loop_config={..., "console": console.relay})
    console.say("step 120/735 · …")                   # rank 0, through the handle in its loop config
"""

from __future__ import annotations

import logging
import threading

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote(num_cpus=0)
class ConsoleRelay:
    """Holds lines until the driver takes them."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


class RelayedConsole:
    """Context manager on the driver: a relay actor, and a thread that logs its lines to `log` as they come."""

    def __init__(self, log: logging.Logger, interval_s: float = 0.5) -> None:
        self.log = log
        self.interval_s = interval_s
        # On the driver's node: a worker node that is lost (an elastic run goes on) must not take the relay along.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.relay = ConsoleRelay.options(scheduling_strategy=here).remote()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RelayedConsole:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()
        ray.kill(self.relay)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._drain()

    def _drain(self) -> None:
        for line in ray.get(self.relay.take.remote()):
            self.log.info(line)
