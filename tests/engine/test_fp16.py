"""float16 training: dynamic loss scaling, through the fused loss, skipped overflows, resume."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import torch

from kdengine.config import ConfigError, RunConfig
from kdengine.data import TokenSplits
from kdengine.distributed import Dist
from kdengine.events import read_events
from kdengine.losses import KDLossSpec, fused_kd_loss
from kdengine.providers import BigramStudent, BigramTeacher
from kdengine.runlog import RunLog
from kdengine.trainer import KDTrainer, LossNotFinite


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_the_loss_scale_keeps_float16_logit_gradients_from_flushing_to_zero() -> None:
    # Entries of d(loss)/d(logits) are about (q - p) / tokens: at a vocab of thousands they are
    # below float16's smallest subnormal unless the loss scale lifts them first.
    gen = torch.Generator().manual_seed(0)
    n, hidden, vocab = 2048, 16, 8192
    h, th = (torch.randn(n, hidden, generator=gen, dtype=torch.float64) for _ in range(2))
    w, tw = (torch.randn(vocab, hidden, generator=gen, dtype=torch.float64) * 0.3
             for _ in range(2))
    labels = torch.randint(0, vocab, (n,), generator=gen)
    spec = KDLossSpec(temperature=1.0, alpha=0.0)

    def grads(dtype: torch.dtype, scale: float | None):
        master = torch.float64 if dtype == torch.float64 else torch.float32  # fp32 masters
        hh, ww = (x.to(master).clone().requires_grad_() for x in (h, w))
        parts = fused_kd_loss(hh, ww, th.to(hh.dtype), tw.to(hh.dtype), labels, spec, 512,
                              compute_dtype=dtype, compile_math=False, loss_scale=scale)
        (parts.loss * (scale or 1.0)).backward()  # what GradScaler.scale(loss) does
        return parts.loss.detach(), hh.grad / (scale or 1.0), ww.grad / (scale or 1.0)

    ref_loss, ref_h, ref_w = grads(torch.float64, None)
    loss_plain, h_plain, w_plain = grads(torch.float16, None)
    loss_scaled, h_scaled, w_scaled = grads(torch.float16, 2.0**16)
    assert _rel(loss_scaled, ref_loss) == _rel(loss_plain, ref_loss) < 1e-4  # loss unscaled
    assert _rel(h_scaled, ref_h) < 2e-3 and _rel(w_scaled, ref_w) < 2e-3
    assert _rel(h_plain, ref_h) > 10 * _rel(h_scaled, ref_h)  # what fp16 lost without it
    assert _rel(w_plain, ref_w) > 10 * _rel(w_scaled, ref_w)


def fp16_trainer(tmp_path: Path, **overrides) -> KDTrainer:
    values = dict(teacher="t", student="s", data="d", steps=40, batch_size=4, seq_len=8,
                  lr=0.05, eval_batches=1, temperature=2.0, alpha=0.3)
    values.update(overrides)
    config = RunConfig.from_mapping(values)
    stream = torch.arange(400) % 32
    splits = TokenSplits(train=stream, val=stream.flip(0), eos_id=0)
    return KDTrainer(config, BigramTeacher(), BigramStudent(), splits, RunLog(tmp_path),
                     torch.device("cpu"), torch.float16)


def test_float16_steps_train_with_a_loss_scale_and_report_it(tmp_path: Path) -> None:
    trainer = fp16_trainer(tmp_path)
    first = trainer.evaluate()["val_loss"]
    metrics = [trainer.train_step() for _ in range(20)]
    assert all(m["loss_scale"] == 2.0**16 for m in metrics)
    assert trainer.evaluate()["val_loss"] < first


def test_an_overflowed_float16_step_is_skipped_and_the_scale_halved(tmp_path: Path) -> None:
    trainer = fp16_trainer(tmp_path)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # overflows at once
    before = {k: v.clone() for k, v in trainer.student.module.state_dict().items()}
    first = trainer.train_step()
    assert not math.isfinite(first["grad_norm"]) and first["loss_scale"] == 2.0**40
    assert trainer.scaler.get_scale() == 2.0**39
    for name, value in trainer.student.module.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} was updated by an overflowed step"
    metrics = [trainer.train_step() for _ in range(30)]
    assert metrics[-1]["grad_norm"] < float("inf")  # the scale came down to where it fits
    assert trainer.overflows_in_a_row == 0
    assert any(not torch.equal(v, before[k])
               for k, v in trainer.student.module.state_dict().items())
    warnings = [e for e in read_events(tmp_path / "events.jsonl")
                if e["type"] == "log" and e["level"] == "warning"]
    assert "step 1: float16 gradients overflowed at loss scale 1.09951e+12" in \
        warnings[0]["message"]


def test_float16_that_overflows_at_every_scale_fails_with_the_fix(tmp_path: Path,
                                                                   monkeypatch) -> None:
    trainer = fp16_trainer(tmp_path)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)
    monkeypatch.setattr(KDTrainer, "MAX_OVERFLOWS_IN_A_ROW", 3)
    trainer.train_step()
    trainer.train_step()
    with pytest.raises(LossNotFinite, match="use --dtype bfloat16 or float32"):
        trainer.train_step()


def test_the_loss_scale_is_checkpointed_and_restored(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    trainer = fp16_trainer(tmp_path / "a")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)
    trainer.train_step()
    trainer.train_step()
    state = trainer.state()
    assert state["scaler"]["scale"] == trainer.scaler.get_scale() < 2.0**20
    again = fp16_trainer(tmp_path / "b")
    again.restore(state)
    assert again.scaler.get_scale() == trainer.scaler.get_scale()
    assert "scaler" not in KDTrainer(
        RunConfig.from_mapping(dict(teacher="t", student="s", data="d", batch_size=4,
                                    seq_len=8)),
        BigramTeacher(), BigramStudent(),
        TokenSplits(torch.arange(400) % 32, torch.arange(400) % 32, 0), RunLog(tmp_path),
        torch.device("cpu"), torch.float32).state()


def test_float16_under_torchrun_is_refused_naming_dtype(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        config = RunConfig.from_mapping(dict(teacher="t", student="s", data="d", batch_size=4,
                                             seq_len=8))
        KDTrainer(config, BigramTeacher(), BigramStudent(),
                  TokenSplits(torch.arange(400) % 32, torch.arange(400) % 32, 0),
                  RunLog(tmp_path), torch.device("cpu"), torch.float16,
                  dist=Dist(rank=0, world_size=2))
    assert err.value.field == "dtype" and "bfloat16" in str(err.value)


def test_a_real_float16_run_reaches_a_passing_verdict(tmp_path, tiny_run_inputs, tiny_args,
                                                      engine_cmd) -> None:
    run_dir = tmp_path / "run"
    out = subprocess.run([*engine_cmd, *tiny_args(tiny_run_inputs, run_dir, steps=30,
                                                  dtype="float16")],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    events = read_events(run_dir / "events.jsonl")
    assert events[0]["dtype"] == "float16"
    steps = [e for e in events if e["type"] == "step"]
    assert steps[-1]["loss_scale"] >= 1.0
    assert next(e for e in events if e["type"] == "verdict")["status"] == "pass"
