"""Integer activations on awkward inputs: ragged calibration batches, pruned channels, the CLI.

References: ranges from ragged batches against the same images in one batch per group and
against numpy quantiles of the values; a pruned model's ONNX Runtime output against
``int8_reference`` and against the weight-only float model; the CLI's file against the API's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fq_quant import (
    BitAssignment,
    ScopeLayout,
    calibrate_activations,
    export_onnx,
    export_packed,
    int8_reference,
    ort_session,
    quantize_model,
    widest_ranges,
)
from fq_quant.__main__ import main as cli_main
from torch import nn

S = 8


def _ragged(seed: int = 0) -> tuple[list[tuple[torch.Tensor, ...]], dict[int, torch.Tensor]]:
    """Batches of 7, 5, 6 and a short 3 whose groups split them unevenly (group 1 is rare: 1, 3,
    0 and 2 images; group 0 is dim, so a calibrator that kept group 0's data while estimating
    group 1 would narrow group 1's range); also each group's images in order."""
    g = torch.Generator().manual_seed(seed)
    groups = [torch.tensor(c) for c in ([0, 0, 1, 0, 0, 0, 0], [1, 0, 1, 0, 1], [0] * 6, [1, 0, 1])]
    batches = []
    for gs in groups:
        x = torch.randn(len(gs), 3, S, S, generator=g) * torch.where(gs == 0, 0.2, 1.0).reshape(
            -1, 1, 1, 1
        )
        batches.append((x, torch.zeros(len(gs), dtype=torch.long), gs))
    per = {code: torch.cat([x[gs == code] for x, _, gs in batches]) for code in (0, 1)}
    return batches, per


@pytest.mark.parametrize("estimator", ["minmax", "percentile", "entropy"])
def test_histogram_estimators_take_ragged_group_batches(
    identity_onnx: Callable[[int], Path], estimator: str
) -> None:
    """Group-balanced calibration splits each batch by group (shares of 6/1, 2/3, 6/0 and 1/2
    images) and the last batch is short: ONNX Runtime's histogram calibrators used to fail on
    that. The ranges equal those of each group's images given as one batch, widest over groups."""
    path = identity_onnx(S)
    batches, per = _ragged()
    got = calibrate_activations(path, batches, estimator=estimator, group_balanced=True)
    alone = {code: calibrate_activations(path, [x], estimator=estimator) for code, x in per.items()}
    want = widest_ranges(alone)
    assert got.group_balanced and got.groups == (0, 1)
    assert dict(got.ranges) == dict(want.ranges)
    # and the pooled estimate does not depend on how the images were batched either
    pooled = calibrate_activations(path, batches, estimator=estimator)
    one = calibrate_activations(path, [torch.cat([b[0] for b in batches])], estimator=estimator)
    assert dict(pooled.ranges) == dict(one.ranges)
    # the dim group's own range is far narrower than the bright group's: the test has teeth
    assert alone[0].ranges["y"][1] < 0.5 * alone[1].ranges["y"][1]


def test_percentile_from_ragged_batches_matches_numpy_quantiles(
    identity_onnx: Callable[[int], Path],
) -> None:
    """At percentile 90 a group's range is [-t, t] with t the 90% quantile of |x| (ONNX Runtime's
    symmetric percentile: a 2048-bin histogram of |x|, so to a bin), cut to the observed
    [min, max]; the group-balanced range is the widest over groups."""
    path = identity_onnx(S)
    batches, per = _ragged(seed=3)
    got = calibrate_activations(
        path, batches, estimator="percentile", group_balanced=True, percentile=90.0
    )
    lows, highs = [], []
    for x in per.values():
        v = x.numpy().astype(np.float64).ravel()
        a = np.abs(v)
        t, width = np.quantile(a, 0.90), (a.max() - a.min()) / 2048
        lows.append((max(-t, v.min()), width))
        highs.append((min(t, v.max()), width))
    lo, hi = got.ranges["y"]
    want_lo, w_lo = min(lows)
    want_hi, w_hi = max(highs)
    assert abs(lo - want_lo) <= 1.01 * w_lo and abs(hi - want_hi) <= 1.01 * w_hi
    assert hi > 3 * highs[0][0]  # the bright group 1 sets it, not the dim group 0


def _pruned_cnn() -> tuple[nn.Module, BitAssignment]:
    """conv-BN-ReLU x2, pool, linear; channels 1 and 4 of each conv and row 2 of the linear are
    pruned (0 bits), the BatchNorms have nonzero statistics (so a pruned channel's folded bias,
    beta - mean * k, is nonzero), the linear's bias is nonzero."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1.0, 1.0)
        model[8].bias.uniform_(-1.0, 1.0)
    layout = ScopeLayout.from_model(model, "channel")
    bits = {n: torch.full(s.scope_shape, 4) for n, s in layout.layers.items()}
    bits["0"][[1, 4]] = 0
    bits["3"][[1, 4]] = 0
    bits["8"][2] = 0
    return model, BitAssignment("channel", bits)


def test_pruned_channels_keep_a_sane_scale_and_bias(tmp_path: Path) -> None:
    model, assignment = _pruned_cnn()
    quantize_model(model, assignment)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, 3, S, S, generator=g) for _ in range(4)]
    path = export_onnx(
        model, torch.randn(1, 3, S, S), tmp_path / "p.onnx", activations="int8", calibration=calib
    )
    proto = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for name in ("0.weight", "3.weight", "8.weight"):
        codes, scales = inits[f"{name}_quantized"], inits[f"{name}_scale"]
        assert (codes[[2] if name == "8.weight" else [1, 4]] == 0).all()
        # a pruned channel's scale is one of the layer's live scales, not ~1e-12
        assert (
            scales.min() > 1e-4
            and scales.max() == scales[codes.reshape(len(codes), -1).any(1)].max()
        )
    int32 = [a for a in inits.values() if a.dtype == np.int32]
    assert int32 and max(int(np.abs(a).max()) for a in int32) < 2**24  # far from overflow
    x = torch.randn(256, 3, S, S, generator=g)
    got = ort_session(path, exact=False).run(None, {"input": x.numpy()})[0]
    want = int8_reference(model, torch.randn(1, 3, S, S), path)(x).numpy()
    with torch.no_grad():
        fp = model(x).numpy()  # the weight-only model: float activations
    scale = np.abs(want).max()
    # equal to float rounding (the reference's BatchNorm carries the file's int32-rounded folded
    # bias; without that, about 1 row in 10 here had a code one step apart, 3e-3 of the range)
    err = np.abs(got - want).max(1)
    assert np.median(err) <= 1e-5 * scale and err.max() <= 1e-3 * scale
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.995
    # the pruned row of the linear outputs its bias alone, in both
    np.testing.assert_allclose(got[:, 2], model[8].bias[2].item(), atol=0.02 * scale)
    assert np.abs(got - fp).max() <= 0.1 * scale  # activation rounding only, no wrong bias


def test_cli_int8_export_matches_the_api(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model, assignment = _pruned_cnn()
    builder = tmp_path / "cli_int8_builder.py"
    builder.write_text(
        "from torch import nn\n"
        "def build(name, num_classes, image_size):\n"
        "    return nn.Sequential(\n"
        "        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n"
    )
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        quantize_model(model, assignment)
        packed = export_packed(model, tmp_path / "m.safetensors")
        g = torch.Generator().manual_seed(2)
        images = torch.randn(21, 3, S, S, generator=g)  # batches of 8, 8 and a short 5
        groups = torch.tensor([0, 1, 1] * 7)
        npz = tmp_path / "calib.npz"
        np.savez(npz, image=images.numpy(), group=groups.numpy())
        base = [
            "export-onnx", str(packed), "--model", "m", "--num-classes", "4",
            "--image-size", str(S), "--builder", "cli_int8_builder:build",
        ]  # fmt: skip
        out = tmp_path / "cli.onnx"
        args = ["--out", str(out), "--activations", "int8", "--calibration", str(npz)]
        args += ["--estimator", "percentile", "--group-balanced", "--calib-batch-size", "8"]
        assert cli_main([*base, *args]) == 0
        api = export_onnx(
            model,
            torch.zeros(1, 3, S, S),
            tmp_path / "api.onnx",
            activations="int8",
            calibration=[
                (
                    images[i : i + 8],
                    torch.zeros(len(images[i : i + 8]), dtype=torch.long),
                    groups[i : i + 8],
                )
                for i in range(0, 21, 8)
            ],  # fmt: skip
            estimator="percentile",
            group_balanced=True,
        )
        x = torch.randn(64, 3, S, S, generator=g).numpy()
        a = ort_session(out, exact=False).run(None, {"input": x})[0]
        b = ort_session(api, exact=False).run(None, {"input": x})[0]
        np.testing.assert_array_equal(a, b)
        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert '"group_balanced": true' in meta["activations"]
        assert '"estimator": "percentile"' in meta["activations"]
        capsys.readouterr()
        np.save(tmp_path / "bad.npy", images.numpy()[:, :, :4])
        np.save(tmp_path / "good.npy", images.numpy())  # images alone: no groups
        for extra, message in (
            (["--activations", "int8"], "--activations int8 needs --calibration"),
            (["--calibration", str(npz)], "--calibration: only with --activations int8"),
            (["--estimator", "entropy"], "--estimator: only with --activations int8"),
            (["--activations", "int8", "--calibration", str(tmp_path / "bad.npy")],
             f"images must be [N, 3, {S}, {S}]"),
            (["--activations", "int8", "--calibration", str(tmp_path / "good.npy"),
              "--group-balanced"], "--group-balanced needs an integer array 'group'"),
            (["--activations", "int8", "--calibration", str(npz), "--calib-batches", "0"],
             "--calib-batches must be >= 1"),
        ):  # fmt: skip
            assert cli_main([*base, "--out", str(tmp_path / "bad.onnx"), *extra]) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: ") and message in err, err
        assert not (tmp_path / "bad.onnx").exists()
        with pytest.raises(SystemExit):
            cli_main([*base, "--out", str(out), "--activations", "int4"])
        assert "invalid choice: 'int4'" in capsys.readouterr().err
    finally:
        sys.path.remove(str(tmp_path))


def test_trained_cnn_int8_matches_its_reference(tmp_path: Path) -> None:
    """A conv-BN network trained (BatchNorm statistics from data, not their initial 0 and 1) on a
    learnable rule, U4 weights, percentile group-balanced ranges: ONNX Runtime's argmax equals
    the reference's on >= 99.5% of held-out images and the logits agree to 1e-3 of their range."""
    model, _ = _pruned_cnn()
    g = torch.Generator().manual_seed(4)

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 3, S, S, generator=g) + torch.randn(n, 3, 1, 1, generator=g)
        return x, x.mean((2, 3)).argmax(1)  # the class: the brightest colour channel (3 of 4)

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(60):
        x, y = data(32)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    x, y = data(512)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.6  # it learned (chance 1/3)
    quantize_model(model, BitAssignment.uniform(ScopeLayout.from_model(model, "channel"), 4))
    calib = [(*data(24), torch.arange(24) % 3) for _ in range(3)]
    path = export_onnx(
        model,
        torch.zeros(1, 3, S, S),
        tmp_path / "t.onnx",
        activations="int8",
        calibration=calib,
        estimator="percentile",
        group_balanced=True,
    )
    got = ort_session(path, exact=False).run(None, {"input": x.numpy()})[0]
    want = int8_reference(model, torch.zeros(1, 3, S, S), path)(x).numpy()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.995
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
