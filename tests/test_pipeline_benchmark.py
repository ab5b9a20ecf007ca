"""Smoke test: benchmarks/pipeline.py --quick runs end to end and writes its results."""
import json

import pytest


@pytest.mark.slow
def test_pipeline_benchmark_quick(tmp_path):
    pytest.importorskip("PIL")
    pytest.importorskip("matplotlib")
    from benchmarks import pipeline

    result = pipeline.main(["--quick", "--out", str(tmp_path), "--name", "smoke"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke.json", "smoke.log", "smoke.md"]
    saved = json.loads((tmp_path / "smoke.json").read_text())
    entry, = saved["pipelines"]
    assert set(entry["pipelines"]) >= {"memory", f"folder_w{saved['default_workers']}"}
    assert all(p["images_per_s"] > 0 for p in entry["pipelines"].values())
    assert saved["pretrain"]["pipelines"]["folder"]["images_per_s"] > 0, saved["pretrain"]  # pretrain() ran on both
    assert saved["monitoring"]["share_of_step"] > 0 and saved["scan"]["files"] == 500
    assert result["scan"]["find_images_seconds"] >= 0
