"""A smoke run of bench/run.py so the benchmark never rots. No targets asserted:
speed is measured in bench/, not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from avatarproxy.demo.photos import portrait

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
            "avatarproxy behind the front (browser Accept)",
            "behind the front, cache-busted (every request misses it)",
            "avatarproxy (Redis tier only)", "bare aiohttp + one redis-py GET"} <= set(hits)
    for name, row in hits.items():
        assert row["rps"] > 0 and row["errors"] == 0, (name, row)
    assert hits["nginx"]["rps_vs_nginx"] == 1.0
    # The caching front's hot row, also against nginx in alternated runs.
    front = hits["avatarproxy behind the front (browser Accept)"]
    assert front["rps_vs_nginx_interleaved"] > 0 and front["p99_vs_nginx_interleaved"] > 0
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
    herd = data["cold_herd"]
    for row in (herd, herd["saturated"]):  # unloaded, and with bench/cpuload.py running
        assert row["graph_photo_downloads"] >= 1 and row["p50_ms"] <= row["p99_ms"], row
    economy = data["graph_economy"]
    assert economy["graph_calls"] >= economy["minimum"] > 0
    memory = data["memory"]
    assert memory["workers"] == 2  # bench/run.py's default server.workers
    assert 0 < memory["peak_rss_mib"] < memory["all_processes_peak_rss_mib"]


def test_the_quality_ssim_is_scikit_images() -> None:
    """docs/performance.md's SSIM figures come from bench/quality.py (Pillow only):
    scikit-image 0.19's ``structural_similarity(win_size=7, data_range=255,
    use_sample_covariance=False)`` gave 0.9602134 on the same luma."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import quality
    finally:
        sys.path.remove(str(ROOT / "bench"))
    sharp = portrait(96, 96, "#1f4e79", "#9dc3e6", "#c55a11")
    assert quality.ssim(sharp, sharp) == pytest.approx(1.0)
    blurred = sharp.filter(ImageFilter.GaussianBlur(1.5))
    assert quality.ssim(sharp, blurred) == pytest.approx(0.9602134, abs=1e-5)
    with pytest.raises(ValueError):
        quality.ssim(sharp, Image.new("RGB", (48, 48)))
