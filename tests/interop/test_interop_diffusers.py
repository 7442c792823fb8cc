"""diffusers folders in and out: an imported UNet2DModel computes what diffusers computes, an
exported run loads in diffusers and computes what the run computes, and what cannot be expressed
is refused in one line. diffusers is the reference here (a test-only extra); every weight is
drawn at random, since zero-initialised layers would hide a wrong map."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import diffuse_cli as dc
from diffuse_cli import runs
from diffuse_cli.errors import UserError
from diffuse_cli.interop.diffusers import read_diffusers
from diffuse_cli.interop.diffusers_export import export_diffusers
from diffuse_cli.train.checkpoint import save_checkpoint

diffusers = pytest.importorskip("diffusers")

SMALL = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=8,
)
# google/ddpm-cifar10-32's conventions (the TensorFlow DDPM's), at a small size
TF_DDPM = dict(freq_shift=1, flip_sin_to_cos=False, norm_eps=1e-6, downsample_padding=0)
# ADM's options: AdaGN and BigGAN up/downsampling residual blocks
ADM = dict(
    resnet_time_scale_shift="scale_shift",
    attn_norm_num_groups=8,
    down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
    downsample_type="resnet",
    upsample_type="resnet",
)
OUR_RUN = [
    "model.model_channels=16",
    "model.channel_mult=[1,2]",
    "model.attention_resolutions=[8]",
    "model.norm_groups=8",
    "data.image_size=16",
    "schedule.num_timesteps=50",
]


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn from N(0, 0.2^2): outputs of order 1, no layer left at zero."""
    torch.manual_seed(seed)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return module.eval()


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory) -> Path:
    """One random SMALL pipeline, saved once; tests that edit it take a copy (pipeline_copy)."""
    folder = tmp_path_factory.mktemp("pipeline")
    save_pipeline(folder, {})
    return folder


@pytest.fixture
def pipeline_copy(saved_pipeline, tmp_path) -> Path:
    return Path(shutil.copytree(saved_pipeline, tmp_path / "pipeline"))


def save_pipeline(folder: Path, unet_options: dict, scheduler=None) -> torch.nn.Module:
    """A DDPMPipeline of a random UNet2DModel saved as diffusers saves it; returns the UNet."""
    unet = randomized(diffusers.UNet2DModel(**{**SMALL, **unet_options}))
    scheduler = scheduler or diffusers.DDPMScheduler(num_train_timesteps=100)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return unet


def imported_network(folder: Path, overrides=()):
    """(config, our UNet with the imported weights) as the import command would build them."""
    cfg = dc.compose_config(list(overrides), command="sample")
    found = read_diffusers(folder, cfg)
    cfg = OmegaConf.merge(cfg, found.config)
    model = dc.build_model(cfg)
    model.load_state_dict(found.state_dict)
    return cfg, model.eval(), found


def inputs(labels: bool, channels: int = 3):
    torch.manual_seed(1)
    x = torch.randn(3, channels, 16, 16)
    t = torch.tensor([0, 37, 99])
    return x, t, torch.tensor([0, 2, 4]) if labels else None


@pytest.mark.parametrize(
    "options",
    [
        {},
        {**ADM, "num_class_embeds": 5},
        {"out_channels": 6, "attention_head_dim": None, "dropout": 0.1},
        TF_DDPM,
    ],
    ids=["plain", "adm_class_conditional", "learned_variance_one_head", "tf_ddpm"],
)
def test_an_imported_diffusers_unet_computes_what_diffusers_computes(tmp_path, options):
    learned = options.get("out_channels") == 6
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=100, variance_type="learned_range" if learned else "fixed_small"
    )
    theirs = save_pipeline(tmp_path, options, scheduler)
    cfg, ours, _ = imported_network(tmp_path)
    x, t, y = inputs("num_class_embeds" in options)
    with torch.no_grad():
        expected = theirs(x, t, class_labels=y).sample
        got = ours(x, t, y)
    assert got.shape == expected.shape == (3, 6 if learned else 3, 16, 16)
    assert (got - expected).abs().max() < 1e-4
    assert expected.abs().mean() > 0.1  # a network that computes something
    assert cfg.variance.name == ("learned_range" if learned else "fixed_small")


def test_the_tf_ddpm_conventions_become_model_keys(tmp_path):
    save_pipeline(tmp_path, TF_DDPM)
    cfg, _, found = imported_network(tmp_path)
    m = cfg.model
    assert (m.freq_shift, m.norm_eps, m.downsample_padding, m.norm_groups) == (1.0, 1e-6, 0, 8)
    assert any("flip_sin_to_cos=false" in note for note in found.notes)


def test_attention_weights_under_their_old_names_import_the_same(saved_pipeline, pipeline_copy):
    from safetensors.torch import load_file, save_file

    file = pipeline_copy / "unet" / "diffusion_pytorch_model.safetensors"
    renames = {
        ".to_q.": ".query.",
        ".to_k.": ".key.",
        ".to_v.": ".value.",
        ".to_out.0.": ".proj_attn.",
    }
    old = {}
    for key, value in load_file(file).items():
        for new, legacy in renames.items():
            key = key.replace(new, legacy)
        old[key] = value
    assert any(".query." in k for k in old)
    save_file(old, file)
    cfg = dc.compose_config([], command="sample")
    current = read_diffusers(saved_pipeline, cfg).state_dict
    legacy = read_diffusers(pipeline_copy, cfg).state_dict
    assert current.keys() == legacy.keys()
    assert all(torch.equal(current[k], legacy[k]) for k in current)


def test_a_bin_file_is_read_without_running_code(saved_pipeline, pipeline_copy):
    from safetensors.torch import load_file

    unet = pipeline_copy / "unet"
    state = load_file(unet / "diffusion_pytorch_model.safetensors")
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, unet / "diffusion_pytorch_model.bin")
    cfg = dc.compose_config([], command="sample")
    current = read_diffusers(saved_pipeline, cfg).state_dict
    from_bin = read_diffusers(pipeline_copy, cfg).state_dict
    assert all(torch.equal(current[k], from_bin[k]) for k in current)

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"w": Payload()}, unet / "diffusion_pytorch_model.bin")
    with pytest.raises(UserError, match="is not a plain tensor file|cannot be read as weights"):
        read_diffusers(pipeline_copy, cfg)


@pytest.mark.parametrize(
    "scheduler, schedule",
    [
        (dict(num_train_timesteps=100, beta_start=2e-4, beta_end=0.04), "linear"),
        (dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2"), "cosine"),
        (
            dict(num_train_timesteps=100, trained_betas=torch.linspace(1e-4, 0.05, 100).tolist()),
            "linear",
        ),
    ],
)
def test_the_scheduler_gives_the_same_betas(tmp_path, scheduler, schedule):
    reference = diffusers.DDPMScheduler(
        **scheduler, prediction_type="v_prediction", variance_type="fixed_large"
    )
    save_pipeline(tmp_path, {}, reference)
    cfg, _, _ = imported_network(tmp_path)
    assert cfg.schedule.name == schedule
    assert (cfg.prediction.name, cfg.variance.name) == ("v", "fixed_large")
    betas = dc.build_diffusion(cfg).betas
    assert ((betas - reference.betas.double()).abs() / betas).max() <= 1e-6


def test_a_bare_unet_takes_its_schedule_from_the_command(tmp_path):
    unet = randomized(diffusers.UNet2DModel(**SMALL))
    unet.save_pretrained(tmp_path)
    cfg = dc.compose_config(["schedule=cosine", "schedule.num_timesteps=40"], command="sample")
    found = read_diffusers(tmp_path, cfg)
    assert set(found.config) == {"model", "data"}
    assert any("bare UNet" in note for note in found.notes)
    assert found.needs_given == [("schedule", "schedule.num_timesteps"), ("prediction",)]
    learned = randomized(diffusers.UNet2DModel(**{**SMALL, "out_channels": 6}))
    learned.save_pretrained(tmp_path / "learned")
    with pytest.raises(
        UserError,
        match=r"3 channels in and 6 out, but variance=fixed_small \(the command's\); its "
        r"variance is learned: variance=learned_range",
    ):
        read_diffusers(tmp_path / "learned", cfg)
    cfg = dc.compose_config(["variance=learned_range"], command="sample")
    assert "variance" not in read_diffusers(tmp_path / "learned", cfg).config


def _edit_json(path: Path, **changes) -> None:
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "where, changes, message",
    [
        ("scheduler", {"beta_schedule": "scaled_linear"}, "beta_schedule='scaled_linear'"),
        ("scheduler", {"variance_type": "learned"}, "'learned' reads the output as the variance"),
        ("scheduler", {"_class_name": "PNDMScheduler"}, "scheduler PNDMScheduler cannot"),
        ("scheduler", {"trained_betas": [0.01, 0.5, 0.02]}, "neither linear nor the cosine"),
        (
            "scheduler",
            {"variance_type": "learned_range"},
            r"3 out, but variance=learned_range \(the scheduler's\)",
        ),
        ("unet", {"class_embed_type": "timestep"}, "class_embed_type='timestep'"),
        ("unet", {"time_embedding_type": "fourier"}, "time_embedding_type='fourier'"),
        ("unet", {"resnet_time_scale_shift": "scale_shift"}, "middle attention without GroupNorm"),
        ("unet", {"up_block_types": ["UpBlock2D", "AttnUpBlock2D"]}, "attention at different"),
        ("unet", {"down_block_types": ["SkipDownBlock2D", "AttnDownBlock2D"]}, "SkipDownBlock2D"),
        ("unet", {"layers_per_block": 2}, r"does not match its config.json \(missing down_blocks"),
        ("unet", {"block_out_channels": [16, 48]}, "has shape"),
        ("unet", {"_class_name": "UNet2DConditionModel"}, "only diffusers' UNet2DModel"),
        ("unet", {"block_out_channels": []}, "has 0 block_out_channels for 2 down blocks"),
        ("unet", {"upsample_type": "resnet"}, "residual blocks at others"),
        ("unet", {"block_out_channels": [16, "32"]}, "has a value this reader cannot use"),
        ("scheduler", {"trained_betas": "0.1"}, "has a value this reader cannot use"),
    ],
)
def test_what_this_unet_cannot_compute_is_refused_in_one_line(
    pipeline_copy, where, changes, message
):
    config = "unet/config.json" if where == "unet" else "scheduler/scheduler_config.json"
    _edit_json(pipeline_copy / config, **changes)
    with pytest.raises(UserError, match=message) as refused:
        read_diffusers(pipeline_copy, dc.compose_config([], command="sample"))
    assert "\n" not in str(refused.value)


def test_folders_that_are_not_diffusers_unets_are_refused(tmp_path):
    cfg = dc.compose_config([], command="sample")
    with pytest.raises(UserError, match="is not a diffusers folder"):
        read_diffusers(tmp_path, cfg)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="is not a readable JSON config"):
        read_diffusers(tmp_path, cfg)
    _edit_json_all = {"_class_name": "UNet2DModel", **SMALL}
    (tmp_path / "config.json").write_text(json.dumps(_edit_json_all))
    with pytest.raises(UserError, match="has no weights"):
        read_diffusers(tmp_path, cfg)
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="cannot be read as weights"):
        read_diffusers(tmp_path, cfg)
    (tmp_path / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "LDMPipeline",
                "unet": ["diffusers", "UNet2DModel"],
                "vqvae": ["diffusers", "VQModel"],
                "scheduler": ["diffusers", "DDIMScheduler"],
            }
        )
    )
    with pytest.raises(UserError, match="LDMPipeline with vqvae; only pixel-space"):
        read_diffusers(tmp_path, cfg)


# --- export ---


def make_run(folder: Path, overrides=(), seed: int = 0, base=OUR_RUN, weights=True) -> tuple:
    """A run folder with one checkpoint: random EMA weights, and other random raw weights
    (`weights=False`: its config only, enough for what is refused before weights are read)."""
    cfg = dc.compose_config([*base, *overrides, f"run_dir={folder}"])
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / runs.CONFIG_FILE)
    if not weights:
        return cfg, None
    ema = randomized(dc.build_model(cfg), seed)
    raw = randomized(dc.build_model(cfg), seed + 1)
    save_checkpoint(
        folder, 1, raw.state_dict(), ema.state_dict(), {"state": {}, "param_groups": []}, {}
    )
    return cfg, ema


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        [
            "model.use_scale_shift_norm=true",
            "model.resblock_updown=true",
            "model.num_classes=4",
            "model.num_head_channels=8",
            "variance=learned_range",
            "prediction=v",
            "schedule=cosine",
        ],
        [
            "model.num_heads=2",
            "model.attention_resolutions=[]",
            "model.dropout=0.1",
            "prediction=x0",
            "variance=fixed_large",
            "model.norm_eps=1e-6",
            "model.freq_shift=1",
            "model.downsample_padding=0",
        ],
    ],
    ids=["plain", "adm_classes_learned_v_cosine", "tf_conventions_x0"],
)
def test_an_exported_run_loads_in_diffusers_and_computes_the_same(tmp_path, overrides):
    cfg, ours = make_run(tmp_path / "run", overrides)
    out = export_diffusers(tmp_path / "run", tmp_path / "out")
    unet = diffusers.UNet2DModel.from_pretrained(out / "unet").eval()
    scheduler = diffusers.DDPMScheduler.from_pretrained(out / "scheduler")
    classes = cfg.model.num_classes
    x, t, y = inputs(classes is not None)
    if classes:
        y = torch.tensor([0, classes - 1, classes])  # the null label is class num_classes there
    with torch.no_grad():
        expected = ours(x, t, y)
        got = unet(x, t, class_labels=y).sample
    assert (got - expected).abs().max() < 1e-4 and expected.abs().mean() > 0.1
    betas = dc.build_diffusion(cfg).betas
    assert ((scheduler.betas.double() - betas).abs() / betas).max() <= 1e-6
    predictions = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
    assert scheduler.config.prediction_type == predictions[cfg.prediction.name]
    assert scheduler.config.variance_type == cfg.variance.name
    assert unet.config.num_class_embeds == (None if classes is None else classes + 1)


def test_export_writes_the_ema_weights_unless_told_and_imports_back(tmp_path):
    from safetensors.torch import load_file

    cfg, ema = make_run(tmp_path / "run")
    export_diffusers(tmp_path / "run", tmp_path / "ema")
    _, back, _ = imported_network(tmp_path / "ema")
    x, t, _ = inputs(False)
    with torch.no_grad():
        assert (back(x, t) - ema(x, t)).abs().max() < 1e-4
    export_diffusers(tmp_path / "run", tmp_path / "raw", ema=False)
    raw = load_file(tmp_path / "run" / "checkpoints" / "step_00000001" / "model.safetensors")
    written = load_file(tmp_path / "raw" / "unet" / "diffusion_pytorch_model.safetensors")
    assert torch.equal(written["conv_out.weight"], raw["out.2.weight"])
    assert not torch.equal(raw["out.2.weight"], ema.state_dict()["out.2.weight"])


def test_cosine_betas_other_than_diffusers_own_are_written_out(tmp_path):
    cfg, _ = make_run(tmp_path / "run", ["schedule=cosine", "schedule.s=0.02"])
    out = export_diffusers(tmp_path / "run", tmp_path / "out")
    config = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert len(config["trained_betas"]) == 50
    scheduler = diffusers.DDPMScheduler.from_pretrained(out / "scheduler")
    betas = dc.build_diffusion(cfg).betas
    assert ((scheduler.betas.double() - betas).abs() / betas).max() <= 1e-6


@pytest.mark.parametrize(
    "pipeline", ["DDPMPipeline", pytest.param("DDIMPipeline", marks=pytest.mark.slow)]
)
def test_the_exported_pipeline_samples(tmp_path, pipeline):
    make_run(tmp_path / "run")
    out = export_diffusers(tmp_path / "run", tmp_path / "out")
    sampler = getattr(diffusers, pipeline).from_pretrained(out)
    sampler.set_progress_bar_config(disable=True)
    images = sampler(batch_size=2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 16, 16, 3) and ((images >= 0) & (images <= 1)).all()


@pytest.mark.parametrize(
    "overrides, reason",
    [
        (["model.residual_rescale=true"], "residual sums by sqrt\\(2\\)"),
        (["model.rescale_timesteps=true"], "t x 1000/50"),
        (["model.channel_mult=[2,2]"], "channel_mult starts at 2"),
        (["variance=learned"], "variance=learned \\(log Sigma\\)"),
        (["model.norm_groups=null"], "GroupNorms have \\[8, 16, 24, 32\\] groups"),
        (["model.num_heads=2", "model.attention_resolutions=[16,8]"], "heads have \\[8, 16\\]"),
        (["schedule=ncsn", "prediction=score", "loss=dsm"], "NCSN score model"),
        (["experiment=toy2d"], "not a UNet"),
    ],
)
def test_runs_unet2dmodel_cannot_express_are_refused_before_writing(tmp_path, overrides, reason):
    base = [] if "toy2d" in overrides[0] else OUR_RUN
    make_run(tmp_path / "run", overrides, base=base, weights=False)
    with pytest.raises(UserError, match=f"cannot be exported to diffusers: .*{reason}") as refused:
        export_diffusers(tmp_path / "run", tmp_path / "out")
    assert "\n" not in str(refused.value) and not (tmp_path / "out").exists()


def test_export_refuses_a_folder_with_files(tmp_path):
    make_run(tmp_path / "run")
    (tmp_path / "out").mkdir()
    export_diffusers(tmp_path / "run", tmp_path / "out")  # an empty folder is taken
    with pytest.raises(UserError, match="exists and is not an empty folder"):
        export_diffusers(tmp_path / "run", tmp_path / "out")


def test_diffuse_export_on_the_command_line(cli, monkeypatch, capsys):
    from conftest import run_cli_in_process

    from diffuse_cli.cli import _task

    make_run(cli.cwd / "runs" / "default")
    done = run_cli_in_process("export", "format=diffusers", "out=exported", cwd=cli.cwd)
    assert "DDPMPipeline.from_pretrained('exported')" in done.stdout
    assert (cli.cwd / "exported" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    monkeypatch.chdir(cli.cwd)  # the same refusal in-process: one line, exit status 2
    cfg = dc.compose_config(["out=exported", "format=diffusers"], command="export")
    with pytest.raises(SystemExit) as exit_:
        _task("export")(cfg)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "diffuse export: error: out=exported exists and is not an empty folder; choose a new one"
    ]
    from diffuse_cli.interop.export import export_command

    with pytest.raises(UserError, match="format=onnx is unknown; choose one of: diffusers"):
        export_command(dc.compose_config(["out=elsewhere", "format=onnx"], command="export"))
    with pytest.raises(UserError, match="say where to write the export: out=DIR"):
        export_command(dc.compose_config([], command="export"))
    assert not (cli.cwd / "elsewhere").exists()


def test_runs_from_before_the_convention_keys_read_back_with_what_they_computed(tmp_path):
    cfg = OmegaConf.to_container(dc.compose_config([f"run_dir={tmp_path}"]))
    for key in runs.CONVENTIONS_BEFORE_KEYS:
        del cfg["model"][key]
    OmegaConf.save(OmegaConf.create(cfg), tmp_path / runs.CONFIG_FILE)
    model = runs.read_run_config(tmp_path).model
    assert {k: model[k] for k in runs.CONVENTIONS_BEFORE_KEYS} == runs.CONVENTIONS_BEFORE_KEYS


def test_google_ddpm_cifar10_32s_config_is_the_ddpm_cifar10_unet():
    """The published config of google/ddpm-cifar10-32 (its keys as on the hub), read without its
    weights: the DDPM paper's 35.7M-parameter network, as many parameters as diffusers builds."""
    from diffuse_cli.interop.diffusers import unet_settings

    config = {
        "_class_name": "UNet2DModel",
        "act_fn": "silu",
        "attention_head_dim": None,
        "block_out_channels": [128, 256, 256, 256],
        "center_input_sample": False,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "in_channels": 3,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-06,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 32,
        "time_embedding_type": "positional",
        "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    }
    model, data, _ = unet_settings(config, [])
    ddpm = OmegaConf.to_container(dc.compose_config(["model=ddpm"]).model)
    keys = ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions")
    assert {k: model[k] for k in keys} == {k: ddpm[k] for k in keys}
    cfg = OmegaConf.merge(dc.compose_config(["model=ddpm"]), {"model": model, "data": data})
    with torch.device("meta"):
        ours = sum(p.numel() for p in dc.build_model(cfg).parameters())
        theirs = sum(p.numel() for p in diffusers.UNet2DModel(**config).parameters())
    assert ours == theirs and round(ours / 1e6, 1) == 35.7


@pytest.mark.slow
def test_an_imported_pipeline_samples_what_diffusers_ddim_samples(tmp_path):
    """Network, betas and sampler together: our ddim from the same x_T equals diffusers'
    DDIMScheduler with eta 0, x0 clipped and eps recomputed from it (use_clipped_model_output,
    the DDIM of improved-diffusion, which ours follows), on diffusers' default "leading" grid."""
    spacing = "leading"
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    unet = save_pipeline(tmp_path, {}, scheduler)
    overrides = ["sampler=ddim", "steps=10", f"sampler.spacing={spacing}"]
    cfg, ours, _ = imported_network(tmp_path, overrides)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x0 = dc.sample(cfg, ours, dc.build_diffusion(cfg), noise=x_T)
    ddim = diffusers.DDIMScheduler.from_pretrained(tmp_path / "scheduler", timestep_spacing=spacing)
    ddim.set_timesteps(10)
    x = x_T
    with torch.no_grad():
        for t in ddim.timesteps:
            x = ddim.step(unet(x, t).sample, t, x, eta=0.0, use_clipped_model_output=True)
            x = x.prev_sample
    assert (x0 - x).abs().max() < 1e-4 and x.std() > 0.1


def test_a_timestep_feature_width_other_than_the_first_level_is_refused():
    """ADM 512x512's 256 sinusoidal features over a first level of 128 (model.time_channels,
    read with .get so that runs and configs without the key export as before)."""
    from diffuse_cli.interop.diffusers_export import check_exportable

    cfg = OmegaConf.create(OmegaConf.to_container(dc.compose_config(OUR_RUN)))  # as read back
    cfg.model.time_channels = 32
    with pytest.raises(UserError, match="model.time_channels=32 sinusoidal features"):
        check_exportable(cfg)
    cfg.model.time_channels = 16
    check_exportable(cfg)


def test_diffuse_import_of_a_diffusers_folder_then_sample(tmp_path):
    """The round trip a user types: `diffuse import source=FOLDER`, then `diffuse sample`; the
    run holds the pipeline's schedule and the network's weights."""
    import numpy as np
    from conftest import run_cli_in_process as run_cli
    from safetensors.torch import load_file

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2")
    save_pipeline(tmp_path / "pipe", {}, scheduler)
    proc = run_cli("import", "source=pipe", "name=imp", cwd=tmp_path)
    assert "imported 'pipe' into" in proc.stdout
    run = tmp_path / "runs" / "imp"
    cfg = OmegaConf.load(run / runs.CONFIG_FILE)
    assert (cfg.schedule.name, cfg.schedule.num_timesteps, cfg.model.name) == (
        "cosine",
        50,
        "diffusers",
    )
    weights = load_file(run / "checkpoints" / "step_00000000" / "ema.safetensors")
    theirs = load_file(tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors")
    assert torch.equal(weights["out.2.weight"], theirs["conv_out.weight"])
    run_cli(
        "sample", "run_dir=runs/imp", "steps=2", "num_samples=2", "progress=false", cwd=tmp_path
    )
    assert np.load(run / "samples/ddpm-2/samples.npz")["arr_0"].shape == (2, 16, 16, 3)


def test_a_bare_unet_imports_only_with_its_schedule_and_prediction_given(tmp_path, monkeypatch):
    from diffuse_cli import import_command

    randomized(diffusers.UNet2DModel(**SMALL)).save_pretrained(tmp_path / "unet")
    for given, refused in (
        ([], "does not record schedule or schedule.num_timesteps: pass schedule=..."),
        (["schedule=cosine"], "does not record prediction: pass prediction=..."),
        (["schedule=cosine", "prediction=v"], None),
    ):
        args = [f"source={tmp_path / 'unet'}", f"run_dir={tmp_path / 'run'}", *given]
        monkeypatch.setattr(import_command, "hydra_overrides", lambda args=args: list(args))
        cfg = dc.compose_config(args, command="import")
        if refused:
            with pytest.raises(UserError, match=re.escape(refused)):
                import_command.import_command(cfg)
            assert not (tmp_path / "run").exists()
        else:
            import_command.import_command(cfg)
    saved = OmegaConf.load(tmp_path / "run" / runs.CONFIG_FILE)
    assert (saved.schedule.name, saved.prediction.name) == ("cosine", "v")
