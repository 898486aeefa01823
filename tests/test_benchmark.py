"""The benchmark program runs end to end (tiny sizes: this checks the program, not speed)."""

import json
import subprocess
import sys

import pytest


def test_benchmark_cli_writes_table_json_markdown_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = subprocess.run(
        [sys.executable, "-m", "involution.benchmark", "--shapes", "stage4,stem", "--batch", "1",
         "--repeats", "1", "--warmup", "0", "--dtype", "float32,bfloat16", "--threads", "1",
         "--json", str(tmp_path / "out" / "r.json"), "--plot", str(tmp_path / "r.png"),
         "--markdown", str(tmp_path / "md" / "r.md")],
        capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "forward+backward" in out.stdout and "speed-up" in out.stdout
    results = json.loads((tmp_path / "out" / "r.json").read_text())
    assert [r["dtype"] for r in results] == ["float32", "bfloat16"]
    for result in results:
        for row in result["rows"]:
            for impl in ("ours", "unfold"):
                assert all(t > 0 for t in row[impl]["times"].values())
            assert row["max_abs_diff"] < (1e-4 if result["dtype"] == "float32" else 0.5)
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert "stage4" in (tmp_path / "md" / "r.md").read_text()


def test_benchmark_rejects_unknown_shape():
    out = subprocess.run([sys.executable, "-m", "involution.benchmark", "--shapes", "nope"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "no shape matches 'nope'" in out.stderr
