"""GPU-only checks (skipped where CUDA is absent; run them on a machine with a GPU).

The BAQ and FQ-QAT training steps must not synchronize the host with the device: a ``.item()``
or a ``bool(tensor)`` per layer per step stalls the GPU pipeline (the public implementation syncs
once per channel). ``torch.cuda.set_sync_debug_mode("error")`` turns any such sync into an error.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _session(kind: str):
    import timm
    from fq_baq import BAQConfig, BAQTrainer, FP32Trainer

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    config = BAQConfig(lr=1e-4, lr_bits=1e-3, lambda_fair=0.5)
    trainer = BAQTrainer(model, config) if kind == "baq" else FP32Trainer(model, config)
    return trainer.session()


@pytest.mark.parametrize("kind", ["baq", "fp32"])
def test_training_step_makes_no_host_device_sync(kind: str) -> None:
    session = _session(kind)
    dev = session.accelerator.device
    assert dev.type == "cuda"
    g = torch.Generator().manual_seed(0)
    batch = (
        torch.randn(16, 3, 64, 64, generator=g).to(dev),
        torch.randint(0, 10, (16,), generator=g).to(dev),
        torch.randint(0, 3, (16,), generator=g).to(dev),
    )
    session.step(batch)  # warm-up: lazy allocations and cuDNN autotuning may sync once
    torch.cuda.synchronize()
    before = [p.detach().clone() for p in session.params[:3]]
    torch.cuda.set_sync_debug_mode("error")
    try:
        session.step(batch)
        session.step(batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert any(not torch.equal(b, p) for b, p in zip(before, session.params[:3], strict=False))


def test_fixed_bits_forward_makes_no_sync() -> None:
    import timm
    from fq_quant import BitAssignment, ScopeLayout, quantize_model

    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    layout = ScopeLayout.from_model(model, "channel")
    gen = torch.Generator().manual_seed(0)
    bits = {n: torch.randint(2, 9, s.scope_shape, generator=gen) for n, s in layout.layers.items()}
    quantize_model(model, BitAssignment("channel", bits)).cuda()
    x = torch.randn(8, 3, 64, 64, device="cuda")
    model(x).sum().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model(x).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
