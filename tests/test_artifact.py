"""Deploy artifact: torch.export round trip, dynamic batch, report next to it, no pickle, atomic."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from torch import nn

from reparam.artifact import load_artifact, read_artifact, report_path, save_artifact
from reparam.engine import convert
from reparam.errors import ReparamError
from reparam.numerics import randomize_batchnorm
from reparam.zoo import create_model


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("repvgg_a0", num_classes=5, width=0.25)).eval()
    x = torch.randn(1, 3, 32, 32)
    return model, convert(model, x), x


def test_round_trip_with_dynamic_batch_and_report(tmp_path, converted):
    model, result, x = converted
    path = save_artifact(
        result.model,
        (x,),
        tmp_path / "m.pt2",
        report=result.report,
        record=result.record,
        metadata={"arch": "repvgg_a0"},
    )
    report = json.loads(report_path(path).read_text())
    assert report["check"]["passed"] and report["fused"]["merge_branches"]
    artifact = read_artifact(path)
    loaded = artifact.module
    assert artifact.metadata["metadata"] == {"arch": "repvgg_a0"}
    assert artifact.metadata["dynamic_batch"] is True
    assert artifact.record.to_dict() == result.record.to_dict()
    assert artifact.record.boundaries == result.record.boundaries and artifact.record.boundaries
    for batch in (1, 3):
        y = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            ref, got = model(y), loaded(y)
        assert (ref - got).abs().max() <= 1e-5 * ref.abs().max()
    # only plain tensors inside: nothing in the archive would be unpickled
    with zipfile.ZipFile(path) as z:
        configs = [json.loads(z.read(n)) for n in z.namelist() if n.endswith("_config.json")]
    assert all(not v.get("use_pickle") for c in configs for v in c["config"].values())


class _NotExportable(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent Python control flow
            return x * 2
        return x


def test_export_failure_writes_nothing(tmp_path):
    with pytest.raises(ReparamError, match="torch.export"):
        save_artifact(_NotExportable(), (torch.randn(1, 3),), tmp_path / "m.pt2", report={"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_missing_and_corrupt_artifacts(tmp_path, converted):
    with pytest.raises(ReparamError, match="does not exist"):
        load_artifact(tmp_path / "none.pt2")
    _, result, x = converted
    path = save_artifact(result.model, (x,), tmp_path / "m.pt2")
    assert not report_path(path).exists()  # no report given, none written
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ReparamError, match="truncated"):
        load_artifact(path)


def test_archives_with_pickled_payloads_are_refused(tmp_path, converted):
    _, result, x = converted
    good = save_artifact(result.model, (x,), tmp_path / "good.pt2")
    bad = tmp_path / "bad.pt2"
    buf = io.BytesIO()
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"]))
                config["config"][first]["use_pickle"] = True
                data = json.dumps(config).encode()
            dst.writestr(info, data)
    bad.write_bytes(buf.getvalue())
    with pytest.raises(ReparamError, match="pickled payloads"):
        load_artifact(bad)


def test_every_block_boundary_resolves_in_the_loaded_program(tmp_path, converted):
    """A stage and its last block end in the same value; both are found in the re-traced .pt2 graph."""
    from reparam.equivalence import block_outputs, compute_metrics

    model, result, x = converted
    artifact = read_artifact(save_artifact(result, (x,), tmp_path / "m.pt2"))
    in_memory = block_outputs(result.model, result.record.boundaries, (x,))
    loaded = block_outputs(artifact.module, artifact.record.boundaries, (x,))
    stages = [p for p in result.record.boundaries if "." not in p]
    assert stages and set(loaded) == set(in_memory) == set(result.record.boundaries)
    for path, value in in_memory.items():
        assert compute_metrics(value[0], loaded[path][0]).scale_rel <= 1e-6, path
