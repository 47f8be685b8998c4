"""A smoke run of bench/run.py so the benchmark never rots. No targets asserted:
speed is measured in bench/, not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(420)  # about 2 minutes alone; a loaded machine takes longer
def test_benchmark_smoke_run_measures_every_section(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke",
                             "--output", str(output)],
                            capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "x nginx" in result.stdout  # the table was printed
    data = json.loads(output.read_text())
    hits = data["hits"]
    assert {"nginx", "bare aiohttp", "avatarproxy", "avatarproxy (browser Accept)",
            "avatarproxy (Redis tier only)"} <= set(hits)
    for name, row in hits.items():
        assert row["rps"] > 0 and row["errors"] == 0, (name, row)
    assert hits["nginx"]["rps_vs_nginx"] == 1.0
    counted = data["instructions"]  # callgrind: valgrind is installed by tests/run
    # The smoke run leaves out the Redis-tier row (a second service start under valgrind).
    assert set(counted) == {"nginx", "bare aiohttp", "avatarproxy",
                            "avatarproxy (browser Accept)"}
    for name, row in counted.items():
        assert row["requests"] > 0 and row["instructions_per_request"] > 0, (name, row)
    assert counted["nginx"]["x_nginx"] == 1.0
    assert len(data["misses"]) == 12
    assert all(row["added_p50_ms"] > 0 for row in data["misses"].values())
    # 600 px from the 648 px photo, as JPEG, WebP and AVIF, Graph at 0 and 50 ms.
    assert len(data["large_misses"]) == 6
    assert all(row["added_p50_ms"] > 0 for row in data["large_misses"].values())
    assert "miss_instructions" not in data  # full runs only: another start under valgrind
    assert data["cold_herd"]["graph_photo_downloads"] >= 1
    economy = data["graph_economy"]
    assert economy["graph_calls"] >= economy["minimum"] > 0
    memory = data["memory"]
    assert memory["workers"] == 2  # bench/run.py's default server.workers
    assert 0 < memory["peak_rss_mib"] < memory["all_processes_peak_rss_mib"]
