"""scripts/bench_quality.py: the arithmetic and the diffusers settings it rests on (fast), and a
tiny invocation end to end (slow)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import diffuse_cli as dc
from diffuse_cli.errors import UserError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_quality.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module
    spec.loader.exec_module(module)
    return module


bq = load_script()


def test_a_budget_becomes_the_steps_that_fit_after_the_fixed_cost():
    calibration = bq.Calibration.measured(seconds=12.0, steps=20, rate=2.0)  # 10 s of steps
    assert calibration.overhead == pytest.approx(2.0)
    assert calibration.steps_for(60) == 116  # (60 - 2) s at 2 steps/s
    assert calibration.steps_for(61.9) == 119  # whole steps, never past the budget
    assert calibration.steps_for(1) == 1  # a budget below the fixed cost still trains a step
    assert bq.Calibration.measured(seconds=5.0, steps=20, rate=2.0).overhead == 0


def test_the_tuned_learning_rate_has_the_lowest_finite_fd():
    assert bq.best_lr({1e-4: 9.0, 3e-4: 4.0, 1e-3: math.nan, 2e-3: 5.0}) == 3e-4
    with pytest.raises(UserError, match="finite"):
        bq.best_lr({1e-4: math.nan, 3e-4: None})


def test_recipe_names_carry_their_learning_rates_and_unknown_names_are_refused():
    assert bq.lr_of("diffusers") == bq.DIFFUSERS["learning_rate"] == 1e-4
    assert bq.lr_of("diffusers_lr3e-4") == 3e-4 and bq.lr_of("diffusers_tuned", 2e-3) == 2e-3
    assert {bq.family(r) for r in ("diffusers", "diffusers_lr1e-3", "diffusers_tuned")} == {
        "diffusers"
    }
    bq.check_recipes(["classic", "quickstart", "diffusers", "diffusers_lr2e-3"], tune=False)
    with pytest.raises(UserError, match="unknown recipe 'clasic'"):
        bq.check_recipes(["clasic"], tune=False)
    with pytest.raises(UserError, match="--tune-lr-at"):
        bq.check_recipes(["diffusers_tuned"], tune=False)
    with pytest.raises(UserError, match="diffusers_lr3e-4"):
        bq.check_recipes(["diffusers_lrfast"], tune=False)


def test_bad_settings_stop_the_script_in_one_line_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="error: recipe 'diffusers_lrx': write the learning"):
        bq.main(["--tune-lr-at", "3", "--diffusers-lrs", "1e-3,x", "--out", str(out)])
    with pytest.raises(SystemExit, match="error: unknown recipe 'edm'"):
        bq.main(["--recipes", "classic,edm", "--out", str(out)])
    assert not out.exists()


def test_the_ratio_is_our_best_recipe_against_diffusers_tuned_where_it_ran_and_when_we_catch_up():
    def row(recipe, budget, fd):
        return {"recipe": recipe, "budget_s": budget, "metrics": {"fd_builtin": fd}}

    runs = [
        row("classic", 60, 6.0),
        row("quickstart", 60, 3.0),
        row("diffusers", 60, 2.0),
        row("diffusers_tuned", 60, 12.0),
        row("classic", 120, 4.0),
        row("diffusers", 120, 8.0),
    ]
    first, second = bq.ratios(runs)
    assert [first[k] for k in ("toolkit", "diffusers", "ratio")] == [
        "quickstart",
        "diffusers_tuned",
        0.25,
    ]
    assert [second[k] for k in ("toolkit", "diffusers", "ratio")] == ["classic", "diffusers", 0.5]
    # diffusers at 120 s reaches 8.0, which our best recipe reached by 60 s (3.0)
    assert bq.catch_up({"ratios": [first, second]})[-1].endswith("reaches it at 60 s.")
    second["toolkit_fd"] = first["toolkit_fd"] = 9.0
    assert bq.catch_up({"ratios": [first, second]})[-1].endswith("at none of the budgets.")


# diffusers is a bench-only extra (and a test-only reference)
needs_diffusers = pytest.mark.skipif(
    importlib.util.find_spec("diffusers") is None, reason="needs diffusers"
)


@needs_diffusers
def test_the_diffusers_network_has_the_quickstart_networks_layout_and_size():
    cfg = dc.compose_config(bq.QUICKSTART["train"], "train")
    m = cfg.model
    unet = bq.diffusers_unet()
    assert list(unet.config.block_out_channels) == [m.model_channels * k for k in m.channel_mult]
    assert unet.config.layers_per_block == m.num_res_blocks
    sizes = [cfg.data.image_size // 2**level for level in range(len(m.channel_mult))]
    attention = [s in m.attention_resolutions for s in sizes]
    assert [t.startswith("Attn") for t in unet.config.down_block_types] == attention
    with torch.device("meta"):
        ours = sum(p.numel() for p in dc.build_model(cfg).parameters())
    assert sum(p.numel() for p in unet.parameters()) == ours


@needs_diffusers
def test_the_diffusers_ema_and_learning_rate_follow_the_recipes_closed_forms():
    s = bq.DIFFUSERS
    net = torch.nn.Linear(2, 1)
    net.config = {}  # EMAModel records a diffusers model's config; a plain layer has none
    ema = bq.diffusers_ema(net)
    for step in (1, 2, 3, 50, 10**4, 10**7):
        k = step - 1  # EMAModel counts the updates from 0
        closed = 0.0 if k == 0 else min(1 - (1 + k / s["ema_inv_gamma"]) ** -s["ema_power"], 0.9999)
        assert ema.get_decay(step) == pytest.approx(closed, abs=1e-12)
    assert ema.get_decay(10**7) == s["ema_max_decay"] and ema.get_decay(2) == 1 - 2**-0.75
    first = net.weight.detach().clone()
    with torch.no_grad():
        net.weight += 1.0
    ema.step(net.parameters())  # update 1: decay 0, a copy
    with torch.no_grad():
        net.weight += 1.0
    ema.step(net.parameters())  # update 2: d (first + 1) + (1 - d) (first + 2)
    d = 1 - 2**-0.75
    assert torch.allclose(ema.shadow_params[0], first + 1 + (1 - d), atol=1e-6)

    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    schedule = bq.diffusers_lr_schedule(opt, max_steps=1500)  # 500 warm-up steps, then cosine
    lrs = []
    for _ in range(1500):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    warm = s["lr_warmup_steps"]
    assert (
        lrs[0] == 0 and lrs[warm // 2] == pytest.approx(5e-4) and lrs[warm] == pytest.approx(1e-3)
    )
    for step in (750, 1000, 1499):
        progress = (step - warm) / (1500 - warm)
        assert lrs[step] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * progress)))


@pytest.mark.slow
@needs_diffusers
def test_a_tiny_invocation_writes_every_output_with_finite_numbers(tmp_path, capsys):
    out = tmp_path / "out"
    bq.main(
        [
            "--budgets",
            "3",
            "--samples",
            "16",
            "--recipes",
            "classic,diffusers",
            "--diffusers-sample-steps",
            "5",
            "--tune-lr-at",
            "3",
            "--diffusers-lrs",
            "1e-3,2e-3",
            "--calibration-steps",
            "4",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ]
    )
    import diffusers

    record = json.loads((out / "quality.json").read_text())
    assert record["threads"] == 1 and record["versions"]["diffusers"] == diffusers.__version__
    assert record["command"].startswith("python scripts/bench_quality.py --budgets 3")
    assert set(record["calibrations"]) == {"classic", "diffusers"}  # one per family
    assert [r["recipe"] for r in record["runs"]] == ["classic", "diffusers", "diffusers_tuned"]
    sweep = record["lr_sweep"]
    assert [r["lr"] for r in sweep["runs"]] == [1e-3, 2e-3] and sweep["budget_s"] == 3
    best = min(sweep["runs"], key=lambda r: r["metrics"]["fd_builtin"])
    tuned = record["runs"][2]
    assert sweep["best_lr"] == best["lr"] == tuned["lr"] and tuned["from_sweep"]
    for r in [*record["runs"], *sweep["runs"]]:
        assert r["steps"] >= 1 and r["train_s"] > 0 and r["sample_and_judge_s"] > 0
        assert all(math.isfinite(r["metrics"][k]) for k in ("fd_builtin", "precision_builtin"))
        assert (out / r["grid"]).is_file()
    assert record["runs"][0]["steps"] == record["runs"][0]["max_steps"]  # the toolkit's count
    assert math.isfinite(record["floor"]["metrics"]["fd_builtin"])
    assert record["ratios"][0]["diffusers"] == "diffusers_tuned"
    assert (
        record["recipes"]["classic"]["parameters"] == record["recipes"]["diffusers"]["parameters"]
    )
    md = (out / "quality.md").read_text()
    assert "| classic | 3 | " in md and "| diffusers_tuned (the sweep's run) | 3 | " in md
    assert "Floor (16 training images vs the held-out split)" in md and "learning rate 0.0001" in md
    assert "num_inference_steps=5" in md and (out / "quality.png").is_file()
    assert md in capsys.readouterr().out
