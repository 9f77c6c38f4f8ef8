"""docs/hyperparameters.md's stated facts hold in the code: kdengine's defaults (temperature,
alpha, loss), the apr profile's own (temperature 4.0, alpha 0.3), and the demo pair the sweep
was run on (teacher 4x128 trained 400 steps, student 2x64, batch 16 x 128, lr 3e-3, 25 warm-up
steps, cosine)."""

from __future__ import annotations

import re
from pathlib import Path

from kdengine import demo
from kdengine.config import RunConfig, demo_config

DOC = (Path(__file__).resolve().parents[1] / "docs" / "hyperparameters.md").read_text()
DOC = " ".join(DOC.split())  # the sentences wrap across lines


def test_the_documented_defaults_are_the_schemas() -> None:
    said = re.search(r"defaults are `temperature = ([\d.]+)`, `alpha = ([\d.]+)`, `loss = (\w+)`",
                     DOC)
    defaults = RunConfig()
    assert said and (float(said[1]), float(said[2]), said[3]) == (
        defaults.temperature, defaults.alpha, defaults.loss)


def test_the_apr_profiles_documented_defaults_are_its_forms() -> None:
    from kdtui.profiles.apr.schema import form_fields

    said = re.search(r"apr profile keeps its own \(`temperature ([\d.]+)`, `alpha ([\d.]+)`", DOC)
    apr = {f.name: f.default for f in form_fields()}
    assert said and (float(said[1]), float(said[2])) == (apr["temperature"], apr["alpha"])


def test_the_documented_demo_pair_is_the_demos() -> None:
    said = re.search(r"a (\d+)-layer, (\d+)-wide teacher \(trained once for (\d+) steps.*?\) and "
                     r"a fresh (\d+)-layer, (\d+)-wide student, byte-level, batch (\d+) x (\d+) "
                     r"tokens, lr ([\d.e-]+) with (\d+) warm-up steps and (\w+) decay", DOC)
    assert said, "the demo pair's sentence moved"
    config = demo_config()
    assert [int(said[i]) for i in range(1, 8)] == [
        demo.TEACHER.num_hidden_layers, demo.TEACHER.hidden_size, demo.TEACHER_STEPS,
        demo.STUDENT.num_hidden_layers, demo.STUDENT.hidden_size, config.batch_size,
        config.seq_len]
    assert (float(said[8]), int(said[9]), said[10]) == (config.lr, config.warmup_steps,
                                                         config.lr_schedule)
