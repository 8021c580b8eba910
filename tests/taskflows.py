"""Real Metaflow runs for the task view tests: a foreach whose first branch raises while its
siblings run (they get killed), and a step that fails once then succeeds on retry followed by
a step printing 200,000 lines. Both run at once, in one datastore."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from conftest import start_flow

from cardserver.config import Roots

FAIL_FLOW = "TaskFailFlow"
RETRY_FLOW = "RetryLogFlow"
RUN_WAIT = 240  # seconds: two flows on a loaded 2-core machine
HOSTILE = "<img src=x onerror=alert(1)>"
TRUNCATED = "[TRUNCATED - MAXIMUM LOG FILE SIZE REACHED]"  # Metaflow caps a saved log at 10 MiB


@dataclass(frozen=True)
class Ran:
    workdir: Path
    runs: dict[str, str]  # flow -> its run id

    @property
    def roots(self) -> Roots:
        datastore = self.workdir / ".metaflow"
        return Roots(datastore, datastore / "mf.cards")

    def task_dir(self, flow: str, step: str, task: str) -> Path:
        return self.roots.datastore / flow / self.runs[flow] / step / task


def run_task_flows(workdir: Path) -> Ran:
    (workdir / ".metaflow").mkdir()  # two runs starting at once would race to create it
    fail = start_flow("task_fail_flow.py", workdir)
    retry = start_flow("retry_log_flow.py", workdir)
    outputs = {name: process.communicate(timeout=RUN_WAIT)[0]
               for name, process in ((FAIL_FLOW, fail), (RETRY_FLOW, retry))}
    assert fail.returncode == 1, outputs[FAIL_FLOW][-3000:]
    assert retry.returncode == 0, outputs[RETRY_FLOW][-3000:]
    runs = {}
    for flow in (FAIL_FLOW, RETRY_FLOW):
        found = [p.name for p in (workdir / ".metaflow" / flow).iterdir() if p.name.isdigit()]
        assert len(found) == 1, found
        runs[flow] = found[0]
    return Ran(workdir, runs)


def finish(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate()
