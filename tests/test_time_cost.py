"""benchmarks/time_cost.py end to end on a tiny configuration: the --json schema, the extrapolation."""

import json
import os
import sys

import torch
import torchvision
from torchvision.models.resnet import Bottleneck, ResNet

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import time_cost  # noqa: E402


def test_time_cost_quick_smoke(tmp_path, monkeypatch):
    # ResNet-50's bottleneck structure with one block per stage and inner widths 8 to 64, at 32²: all
    # eight prune calls take seconds; --images 2 exercises the extrapolation and the CHIP copy estimate.
    def tiny(name, weights):
        assert (name, weights) == ("resnet50", None)
        return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, width_per_group=8)

    monkeypatch.setattr(torchvision.models, "get_model", tiny)
    out = tmp_path / "times.json"
    # One thread: with two, MKL's threads spin-wait whenever another process holds a core, and the
    # many small LAPACK calls of HRank and CHIP slow down a hundredfold.
    argv = ["--image-size", "32", "--quick", "--images", "2", "--flops-reduction", "0.1", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        record = time_cost.main([*argv, "--results", str(tmp_path), "--json", str(out), "--quiet"])
    finally:
        torch.set_num_threads(threads)
    short = json.loads(out.read_text())
    assert short["device"] == record["environment"]["device"]
    methods = short["methods"]
    assert set(methods) == {"L1", "FPGM", "APIB", "APIB-128", "HRank", "CHIP", "HRank-fast", "CHIP-fast"}
    for name, m in methods.items():
        assert set(m) == {"seconds", "extrapolated"}
        assert m["seconds"] > 0, name
        assert m["extrapolated"] == (name.split("-")[0] in ("HRank", "CHIP")), name
    # only the scoring phase is scaled: 2 images -> 640 multiplies it by 320
    hrank = record["methods"]["HRank"]
    phases = hrank["phases"]
    want = phases["setup"] + 320 * phases["scoring"] + phases["search"]
    assert abs(hrank["seconds"] - want) <= 1e-9 * want
    assert record["chip_missing_copies_s"] > 0
    assert len(list(tmp_path.glob("time_cost_*_quick.md"))) == 1
    assert len(list(tmp_path.glob("time_cost_*_quick.json"))) == 1
