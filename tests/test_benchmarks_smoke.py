"""The benchmarks run (tiny sizes), so they cannot rot between measurement campaigns."""

from __future__ import annotations

import importlib.util
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/<script>`` with ``args``; it must succeed."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_core_fanout_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(BENCHMARKS / "core_fanout.py"), run_name="smoke")
    module["main"](["--clients", "20", "--messages", "5", "--repeat", "1"])
    assert "deliveries/s" in capsys.readouterr().out


def test_fanout_call_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(BENCHMARKS / "fanout_call.py"), run_name="smoke")
    module["main"](["--members", "1,5", "--deliveries", "50", "--repeat", "2"])
    assert "ns per delivery" in capsys.readouterr().out


def test_fanout_quick_smoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The socket benchmark's --quick mode: a server process per variant, a row for each,
    and its JSON, which --replot draws again when matplotlib is there.

    It needs neither python-socketio nor matplotlib: --quick runs only variants built on
    websockets and wsroom.
    """
    # The benchmark scripts import each other, as they do when run from benchmarks/.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = runpy.run_path(str(BENCHMARKS / "fanout.py"), run_name="smoke")
    expected = {module["VARIANTS"][name].label for name in module["QUICK_VARIANTS"]}
    result = run_script("fanout.py", "--quick", "--json", str(tmp_path / "q.json"), timeout=50)
    if importlib.util.find_spec("matplotlib") is not None:
        run_script(
            "fanout.py",
            *("--replot", str(tmp_path / "q.json")),
            *("--plot", str(tmp_path / "q.png")),
            timeout=50,
        )
        assert (tmp_path / "q.png").read_bytes().startswith(b"\x89PNG")
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in result.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| variant")
    ]
    assert {row[0] for row in rows} == expected, result.stdout
    for row in rows:
        assert row[1] == "5", row
        assert row[2] not in ("failed", "-"), row  # deliveries per second were measured


def test_fanout_quick_compressed_paced_smoke() -> None:
    """--quick with --compress and --rate: every client offers permessage-deflate (the
    websockets servers accept it; the inflating clients give the latency samples) and the
    servers publish a paced burst."""
    result = run_script("fanout.py", "--quick", "--compress", "--rate", "1000", timeout=50)
    assert "publishing: paced, 1000 messages/s" in result.stdout, result.stdout
    assert "compression: clients offer permessage-deflate" in result.stdout, result.stdout
    assert "| deflate |" in result.stdout, result.stdout
    rows = _table_rows(result.stdout)
    assert len(rows) == 4, result.stdout
    for row in rows:
        assert row[1] == "5", row
        assert row[2] not in ("failed", "-"), row
        assert row[5] != "-", row  # a p99 from the inflated messages
        assert row[-1] == "5/5", row  # every connection negotiated permessage-deflate


@pytest.mark.parametrize("relay", [False, True], ids=["burst", "relay"])
def test_fanout_aiohttp_variants_smoke(relay: bool) -> None:
    """The aiohttp variants, server-published and, with --relay, sent by a client and
    relayed by the server: each delivers every message to every client."""
    variants = "seed-aiohttp,socketio-aiohttp,wsroom-aiohttp,wsroom-aiohttp-sendframe"
    args = ("--sizes", "5", "--messages", "10", "--repeat", "1", "--variants", variants)
    result = run_script("fanout.py", *args, *(("--relay",) if relay else ()), timeout=50)
    if relay:
        assert "publishing: relayed" in result.stdout, result.stdout
    rows = _table_rows(result.stdout)
    assert len(rows) == 4, result.stdout
    for row in rows:
        assert row[1] == "5", row
        assert row[2] not in ("failed", "-"), row


def _table_rows(stdout: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| variant")
    ]


def test_slow_reader_quick_smoke() -> None:
    """The slow-reader scenario's --quick mode: each variant with and without the reader,
    the threaded ones (a plain thread publishing) included."""
    result = run_script("slow_reader.py", "--quick")
    assert "| variant | non-reader |" in result.stdout, result.stdout
    rows = _table_rows(result.stdout)
    assert [(row[0], row[1]) for row in rows] == [
        ("wsroom, websockets asyncio", "without"),
        ("wsroom, websockets asyncio", "with"),
        ("seed loop, websockets asyncio", "without"),
        ("seed loop, websockets asyncio", "with"),
        ("wsroom, websockets sync", "without"),
        ("wsroom, websockets sync", "with"),
        ("seed loop, websockets sync", "without"),
        ("seed loop, websockets sync", "with"),
    ], result.stdout
    for row in rows:
        assert row[2] != "failed", row
        assert row[4] != "-", row  # a p99 was measured
        assert row[6] != "-" and row[7] != "-", row  # so were the publish calls


def test_joins_quick_smoke() -> None:
    """The join/leave scenario's --quick mode; the Redis row only when a Redis answers."""
    result = run_script("joins.py", "--quick")
    assert "| variant | join p50 ms |" in result.stdout, result.stdout
    rows = _table_rows(result.stdout)
    assert rows, result.stdout
    assert rows[0][0] == "wsroom asyncio, memory backplane", result.stdout
    for row in rows:
        assert row[1] != "failed", row


def test_profile_summary_counts_self_and_inclusive_samples(tmp_path: Path) -> None:
    stacks = tmp_path / "server.txt"
    stacks.write_text(
        "main (srv.py:1);flush (t.py:10);serialize (frames.py:5) 6\n"
        "main (srv.py:1);flush (t.py:12) 3\n"
        "main (srv.py:1);select (selectors.py:4) 1\n"
    )
    result = run_script("profile_summary.py", str(stacks), timeout=30)
    assert "10 samples in 1 file(s)" in result.stdout
    self_table, inclusive_table = result.stdout.split("| inclusive |")
    assert "| 60.0% | `serialize (frames.py)` |" in self_table
    assert "| 30.0% | `flush (t.py)` |" in self_table  # lines of one function together
    assert "| 90.0% | `flush (t.py)` |" in inclusive_table
    assert "| 100.0% | `main (srv.py)` |" in inclusive_table


def test_admin_snapshot_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(BENCHMARKS / "admin_snapshot.py"), run_name="smoke")
    module["main"](["--clients", "50", "--rooms", "10", "--repeat", "1"])
    assert "ms to take" in capsys.readouterr().out
