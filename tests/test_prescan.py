"""The first scan in forked processes (cardserver.prescan): it reads what `disk.scan` reads, and
the server still starts when a child fails.

Forking happens in a fresh interpreter, as `card server` does it: before any thread exists
(pytest's process has threads, and forking those is unsafe)."""

from __future__ import annotations

import json
import marshal
import subprocess
import sys
from pathlib import Path

from test_disk import write_every_kind_of_run

from cardserver import demo, disk, prescan
from cardserver.config import Limits, Roots
from cardserver.disk import Scope
from cardserver.events import TaskMetaRead

CHECK = """
import json, os, signal, sys
from pathlib import Path
from cardserver import disk
from cardserver.config import Limits, Roots
from cardserver.disk import Scope
from cardserver.prescan import Prescan

datastore, mode = Path(sys.argv[1]), sys.argv[2]
roots, limits, scope = Roots(datastore, datastore / "mf.cards"), Limits(), Scope()
first = Prescan(roots, limits, scope)
children = [part.pid for part in first.parts]
if mode == "kill":
    for pid in children:
        os.kill(pid, signal.SIGKILL)
elif mode == "child-only":
    def refuse():
        raise AssertionError("read in the parent")
    for part in first.parts:  # no fallback read here: only the children's results count
        part.read = refuse
if mode == "close":
    first.close()
    gone = []
    for pid in children:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            gone.append(pid)
    after = [part.result() for part in first.parts]  # a stopping server wants nothing more
    print(json.dumps({"reaped": len(gone) == len(children) == 2, "after": after}))
    sys.exit(0)
events, problems = [], []
for part in first.parts:
    found, bad = part.result()
    events += found
    problems += bad
expected = disk.scan(roots, limits, scope)
print(json.dumps({"same": (events, problems) == expected, "events": len(events),
                  "problems": len(problems), "children": children}))
"""


def run_check(datastore: Path, mode: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", CHECK, str(datastore), mode], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def write_tree_with_a_problem(roots: Roots) -> None:
    write_every_kind_of_run(roots)
    broken = demo.start_run(roots.datastore, flow="SameFlow")
    (roots.datastore / "SameFlow" / broken.run / "_meta" / "_self.json").write_text("{half")


def test_the_forked_readers_read_what_a_scan_reads(roots: Roots) -> None:
    write_tree_with_a_problem(roots)
    result = run_check(roots.datastore, "child-only")
    assert result["same"] is True
    assert result["problems"] == 1 and isinstance(result["events"], int) and result["events"] > 20
    assert all(isinstance(pid, int) and pid > 0 for pid in result["children"])  # type: ignore[union-attr]


def test_a_killed_reader_is_read_again_in_the_server(roots: Roots) -> None:
    write_tree_with_a_problem(roots)
    assert run_check(roots.datastore, "kill")["same"] is True


def test_close_stops_and_reaps_readers_whose_result_is_not_wanted(roots: Roots) -> None:
    demo.write_fixture_run(roots.datastore, "F", tasks=200)
    assert run_check(roots.datastore, "close") == {"reaped": True, "after": [[[], []], [[], []]]}


def test_the_wire_form_gives_back_each_event_and_the_shared_documents(roots: Roots) -> None:
    write_tree_with_a_problem(roots)
    events, _ = disk.scan(roots, Limits(), Scope())
    back = [prescan._decode(wire) for wire in through_marshal([prescan._encode(e) for e in events])]
    assert back == events
    docs = [doc for e in back if isinstance(e, TaskMetaRead) for _, _, doc in e.files]
    assert any(doc is disk.NO_DOC for doc in docs) and any(doc is disk.FIRST_ATTEMPT for doc in docs)


def through_marshal(wire: list[prescan.Wire]) -> list[prescan.Wire]:
    """As the child writes it and the server reads it."""
    loaded: list[prescan.Wire] = marshal.loads(marshal.dumps(wire))
    return loaded
