"""`diffuse import` of openai improved-/guided-diffusion checkpoints: the imported network computes
what openai's own UNetModel computes (guided-diffusion-sdk, a test-only reference), bad sources
are refused in one line, and the run it makes samples, evaluates and fine-tunes like any run."""

from __future__ import annotations

import warnings

import pytest
import torch
from omegaconf import OmegaConf

import diffuse_cli as dc
from diffuse_cli import import_command
from diffuse_cli.errors import UserError

with warnings.catch_warnings():  # its torch.cuda.amp decorators are deprecated
    warnings.simplefilter("ignore", FutureWarning)
    unet = pytest.importorskip("guided_diffusion.unet")

# Small networks of the three published layouts; openai's flags -> our overrides. Widths of at
# least 64 keep openai's 32 GroupNorm groups (see interop.openai.check_norm_widths).
LAYOUTS = {
    # DDPM as improved-diffusion writes it: 1 head, attention at 8 px, no AdaGN, fixed sigma
    "ddpm": (
        dict(image_size=8, model_channels=64, channel_mult=(1, 2), num_res_blocks=1,
             attention_resolutions=(2,), num_heads=1, out_channels=3),
        ["model.num_heads=1", "data.image_size=8"],
    ),
    # improved DDPM: learned sigma, AdaGN, 4 heads (legacy order), T = 40 with rescaled t
    "iddpm": (
        dict(image_size=8, model_channels=64, channel_mult=(1, 2), num_res_blocks=2,
             attention_resolutions=(1, 2), num_heads=4, out_channels=6,
             use_scale_shift_norm=True),
        ["model.num_heads=4", "data.image_size=8", "model.rescale_timesteps=true",
         "schedule=cosine", "schedule.num_timesteps=40"],
    ),
    # ADM: BigGAN up/down, AdaGN, 32 channels per head at 2 resolutions, 4 classes (as the
    # embedded shapes data, so the run fine-tunes on them), learned sigma
    "adm": (
        dict(image_size=8, model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=1,
             attention_resolutions=(2, 4), num_head_channels=32, out_channels=6,
             use_scale_shift_norm=True, resblock_updown=True, num_classes=4),
        ["model.num_head_channels=32", "data.image_size=8"],
    ),
    # ADM 512x512's shape: channel_mult starts at 0.5, so the time embedding is twice as wide
    # as the first level (model.time_channels)
    "adm_half": (
        dict(image_size=8, model_channels=128, channel_mult=(0.5, 1), num_res_blocks=1,
             attention_resolutions=(2,), num_head_channels=32, out_channels=6,
             use_scale_shift_norm=True, resblock_updown=True),
        ["model.num_head_channels=32", "data.image_size=8"],
    ),
}  # fmt: skip


def openai_unet(seed: int, new_order: bool = False, **options) -> torch.nn.Module:
    """openai's UNetModel with every weight drawn at random (its output layers start at zero,
    and a network computing 0 would prove nothing)."""
    torch.manual_seed(seed)
    net = unet.UNetModel(in_channels=3, dropout=0.0, use_new_attention_order=new_order, **options)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (0.5 if p.dim() == 1 else 0.0))
    return net.eval()


@pytest.fixture
def given(monkeypatch):
    """given(overrides): the command line the import command sees (Hydra's overrides)."""

    def _given(overrides):
        monkeypatch.setattr(import_command, "hydra_overrides", lambda: list(overrides))
        return overrides

    return _given


def imported(tmp_path, net, overrides, given, name="run"):
    """(cfg, model) of the run `diffuse import` makes from `net`'s state dict."""
    path = tmp_path / f"{name}.pt"
    torch.save(net.state_dict(), path)
    args = [f"source={path}", f"run_dir={tmp_path / name}", *overrides]
    given(args)
    import_command.import_command(dc.compose_config(args, command="import"))
    cfg, model, _ = dc.load_run(tmp_path / name)
    return cfg, model


def openai_time(cfg, t: torch.Tensor) -> torch.Tensor:
    """The timesteps openai's network sees: improved-diffusion rescales t to 1000 steps outside
    it (rescale_timesteps), guided-diffusion passes them as they are."""
    return t.float() * (1000.0 / cfg.schedule.num_timesteps) if cfg.model.rescale_timesteps else t


@pytest.mark.parametrize(
    "layout, new_order",
    [("ddpm", False), ("iddpm", False), ("adm", False), ("adm", True), ("adm_half", False)],
)
def test_the_imported_network_computes_openais_output(tmp_path, given, layout, new_order):
    options, overrides = LAYOUTS[layout]
    net = openai_unet(0, new_order, **options)
    order = [f"use_new_attention_order={str(new_order).lower()}"]
    cfg, model = imported(tmp_path, net, [*overrides, *order], given)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=g)
    t = torch.randint(0, cfg.schedule.num_timesteps, (2,), generator=g)
    kwargs = {"y": torch.tensor([3, 1])} if options.get("num_classes") else {}
    with torch.no_grad():
        ours, theirs = model(x, t, **kwargs), net(x, openai_time(cfg, t), **kwargs)
    assert theirs.abs().mean() > 0.1  # every layer carries a signal
    assert (ours - theirs).abs().max() < 1e-4
    assert cfg.variance.name == ("learned_range" if options["out_channels"] == 6 else "fixed_large")
    assert cfg.loss.name == ("hybrid" if options["out_channels"] == 6 else "simple")
    if layout == "adm":
        check_adm_layout(cfg, model, net, x, t, kwargs, theirs, new_order)
    if layout == "adm_half":
        m = cfg.model
        assert (m.model_channels, m.time_channels, list(m.channel_mult)) == (64, 128, [1, 2])


def check_adm_layout(cfg, model, net, x, t, kwargs, theirs, new_order):
    """The layout read from the tensors, the null label, and that the attention order is not
    decorative: the other order is another function of the same tensors."""
    from diffuse_cli.interop.openai import convert

    m = cfg.model
    assert (m.name, m.model_channels, list(m.channel_mult), m.num_res_blocks) == (
        "openai", 64, [1, 2, 2], 1)  # fmt: skip
    assert list(m.attention_resolutions) == [4, 2] and m.num_classes == 4
    assert m.resblock_updown and m.use_scale_shift_norm
    rows = model.label_embed.weight
    assert rows.shape[0] == 5 and torch.equal(rows[:4], net.label_emb.weight)
    assert not rows[4].any()  # the null label: no class information
    heads = {"num_heads": 1, "num_head_channels": 32}
    model.load_state_dict(convert(net.state_dict(), heads, not new_order))
    with torch.no_grad():
        assert (model(x, t, **kwargs) - theirs).abs().max() > 1e-2


@pytest.fixture(scope="module")
def ddpm_state():
    """The ddpm layout's tensors, drawn once for the refusal tests."""
    return openai_unet(0, **LAYOUTS["ddpm"][0]).state_dict()


class NotATensor:
    """An object a pickle can only rebuild by running code (importing this class)."""


@pytest.mark.parametrize(
    "source, overrides, message",
    [
        ("missing", [], "source=.*missing.pt: no such file or folder"),
        ("random bytes", [], "is not a torch checkpoint that can be read"),
        ("a pickle with code", [], "refused unread \\(loading it could run code\\)"),
        ("a missing key", [], "not a network this toolkit can express as read \\(missing: "
                              "input_blocks.1.0.in_norm.weight"),
        ("a wrong shape", [], "middle_block.1.qkv.weight has shape \\(96, 128, 1, 1\\), the "
                              "network .* needs \\(384, 128, 1, 1\\)"),
        ("32 channels", [], "input_blocks.1.0.in_layers.0.weight normalises 32 channels in 32 "
                            "groups"),
        ("no heads", ["model.num_heads=1"], "does not record model.num_heads or "
                                           "model.num_head_channels: pass"),
        ("no size", ["data.image_size=8"], "does not record data.image_size or model.image_size"),
        ("a contradiction", ["model.model_channels=128"],
         "model.model_channels: '.*' has 64, the command gives 128; drop the setting"),
        ("a preset's contradiction",
         ["model=ddpm", "model.model_channels=64", "data.image_size=32"],
         "model.channel_mult: '.*' has \\[1, 2\\], the command gives \\[1, 2, 2, 2\\]"),
        ("learned sigma for 3 channels", ["variance=learned_range"],
         "variance=learned_range needs 6 output channels; '.*' has 3"),
        ("a folder", [], "is not a diffusers folder: it has neither model_index.json"),
        ("an upsampler", [], "takes 6 input channels: an upsampler \\(SuperResModel\\)"),
        ("a classifier", [], "has no output_blocks. \\(a noisy classifier, EncoderUNetModel, "
                            "has none"),
    ],
)  # fmt: skip
def test_bad_sources_are_refused_in_one_line_before_anything_is_written(
    tmp_path, given, ddpm_state, source, overrides, message
):
    options, base = LAYOUTS["ddpm"]
    path = tmp_path / "net.pt"
    state = dict(ddpm_state)
    if source == "32 channels":
        state = openai_unet(0, **{**options, "model_channels": 32}).state_dict()
    if source == "a missing key":
        del state["input_blocks.1.0.in_layers.0.weight"]
    small = dict(image_size=8, in_channels=3, model_channels=64, num_res_blocks=1,
                 attention_resolutions=(2,), channel_mult=(1, 2))  # fmt: skip
    if source == "an upsampler":
        state = unet.SuperResModel(out_channels=6, **small).state_dict()
    if source == "a classifier":
        state = unet.EncoderUNetModel(out_channels=4, pool="adaptive", **small).state_dict()
    if source == "a wrong shape":
        state["middle_block.1.qkv.weight"] = state["middle_block.1.qkv.weight"][:96]
    torch.save(state, path)
    if source == "random bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    if source == "a pickle with code":
        torch.save({"w": NotATensor()}, path)
    if source == "missing":
        path = tmp_path / "missing.pt"
    if source == "a folder":
        path = tmp_path
    if source in ("no heads", "no size"):
        base = [o for o in base if o not in overrides]
        overrides = []
    args = [f"source={path}", f"run_dir={tmp_path / 'run'}", *base, *overrides]
    given(args)
    with pytest.raises(UserError, match=message) as refused:
        import_command.import_command(dc.compose_config(args, command="import"))
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "run").exists()


def test_an_existing_run_folder_is_refused(tmp_path, given):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("name: mine\n")
    args = [f"source={tmp_path / 'x.pt'}", f"run_dir={tmp_path / 'run'}"]
    given(args)
    with pytest.raises(UserError, match="is not empty; import into a new run"):
        import_command.import_command(dc.compose_config(args, command="import"))
    assert (tmp_path / "run" / "config.yaml").read_text() == "name: mine\n"


@pytest.mark.cli
def test_cli_import_then_sample_and_refusal_leaves_no_folder(tmp_path):
    """The round trip a user types: `diffuse import`, then `diffuse sample` on the new run; a
    refused import is one line, exit status 2, and leaves no run folder."""
    import numpy as np
    from conftest import run_cli

    options, overrides = LAYOUTS["iddpm"]
    torch.save(openai_unet(0, **options).state_dict(), tmp_path / "net.pt")
    proc = run_cli("import", "source=net.pt", "name=imp", *overrides, cwd=tmp_path)
    assert "learned sigma" in proc.stdout
    run_cli("sample", "run_dir=runs/imp", "steps=2", "num_samples=2", "progress=false",
            cwd=tmp_path)  # fmt: skip
    arr = np.load(tmp_path / "runs/imp/samples/ddpm-2/samples.npz")["arr_0"]
    assert arr.shape == (2, 8, 8, 3)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    proc = run_cli("import", "source=bad.pt", "name=bad", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("diffuse import: error: 'bad.pt' is not a torch checkpoint")
    assert not (tmp_path / "runs" / "bad").exists()


@pytest.mark.slow
@pytest.mark.cli
def test_import_fine_tune_and_sample_through_the_cli(tmp_path):
    """import, then `diffuse train run_dir=R` with trainer overrides only: the first step starts
    from the imported weights (EMA after one step = d imported + (1 - d) raw, exactly), and the
    fine-tuned run samples and evaluates."""
    import numpy as np
    from conftest import run_cli
    from safetensors.torch import load_file

    options, overrides = LAYOUTS["adm"]
    overrides = [o.replace("image_size=8", "image_size=16") for o in overrides]  # shapes' size
    net = openai_unet(0, **options)
    torch.save(net.state_dict(), tmp_path / "adm.pt")
    run_cli("import", "source=adm.pt", "name=adm", *overrides, "data.num_train=64",
            "data.num_test=32", cwd=tmp_path)  # fmt: skip
    run = tmp_path / "runs" / "adm"
    start = load_file(run / "checkpoints/step_00000000/model.safetensors")
    run_cli("train", "run_dir=runs/adm", "trainer.max_steps=1", "trainer.batch_size=4",
            "trainer.ema_decay=0.9", "trainer.sample_num=0", "trainer.progress=false",
            cwd=tmp_path)  # fmt: skip
    raw = load_file(run / "checkpoints/step_00000001/model.safetensors")
    ema = load_file(run / "checkpoints/step_00000001/ema.safetensors")
    assert any(not torch.equal(raw[k], start[k]) for k in raw)  # it trained
    for k in raw:
        torch.testing.assert_close(ema[k], 0.9 * start[k] + 0.1 * raw[k], rtol=0, atol=1e-6)
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.model.num_classes == 4 and saved.variance.name == "learned_range"
    assert saved.trainer.max_steps == 1 and saved.loss.name == "hybrid"
    run_cli("sample", "run_dir=runs/adm", "steps=3", "num_samples=2", "progress=false",
            cwd=tmp_path)  # fmt: skip
    samples = np.load(run / "samples/ddpm-3/samples.npz")
    assert samples["arr_0"].shape == (2, 16, 16, 3) and samples["arr_1"].shape == (2,)
    run_cli("eval", "run_dir=runs/adm", "eval.num_batches=1", "eval.batch_size=4",
            "progress=false", cwd=tmp_path)  # fmt: skip
    assert (run / "eval" / "loss.json").is_file()


ADM = dict(learn_sigma=True, attention_resolutions="32,16,8", resblock_updown=True,
           use_scale_shift_norm=True)  # fmt: skip
IDDPM = dict(learn_sigma=True, attention_resolutions="16,8", num_heads=4, use_scale_shift_norm=True)
PUBLISHED = {  # README's table: the file, its flags (create_model's names), our command's overrides
    "64x64_diffusion.pt": (
        dict(ADM, image_size=64, num_channels=192, num_res_blocks=3, class_cond=True,
             num_head_channels=64, use_new_attention_order=True, dropout=0.1),
        ["experiment=adm_imagenet64", "use_new_attention_order=true"],
    ),
    "128x128_diffusion.pt": (
        dict(ADM, image_size=128, num_channels=256, num_res_blocks=2, class_cond=True,
             num_heads=4),
        ["experiment=adm_imagenet128"],
    ),
    "256x256_diffusion.pt": (
        dict(ADM, image_size=256, num_channels=256, num_res_blocks=2, class_cond=True,
             num_head_channels=64),
        ["experiment=adm_imagenet256"],
    ),
    "256x256_diffusion_uncond.pt": (
        dict(ADM, image_size=256, num_channels=256, num_res_blocks=2, num_head_channels=64),
        ["experiment=adm_imagenet256", "model.num_classes=null"],
    ),
    "lsun_bedroom.pt": (
        dict(ADM, image_size=256, num_channels=256, num_res_blocks=2, num_head_channels=64,
             dropout=0.1),
        ["model=adm_lsun", "data=image_folder", "data.image_size=256"],
    ),
    "512x512_diffusion.pt": (
        dict(ADM, image_size=512, num_channels=256, num_res_blocks=2, class_cond=True,
             num_head_channels=64),
        ["model.num_head_channels=64", "data=image_folder", "data.image_size=512"],
    ),
    "cifar10_uncond_50M_500K.pt": (
        dict(IDDPM, image_size=32, num_channels=128, num_res_blocks=3, dropout=0.3,
             channel_mult="1,2,2,2"),  # improved-diffusion's for 32 px
        ["experiment=cifar10_iddpm"],
    ),
    "imagenet64_uncond_100M_1500K.pt": (
        dict(IDDPM, image_size=64, num_channels=128, num_res_blocks=3),
        ["experiment=imagenet64_iddpm"],
    ),
    "imagenet64_cond_270M_250K.pt": (
        dict(IDDPM, image_size=64, num_channels=192, num_res_blocks=3, class_cond=True),
        ["experiment=imagenet64_iddpm", "model.model_channels=192", "model.num_classes=1000",
         "model.rescale_timesteps=false", "loss.lam=0.00025"],
    ),
    "lsun_uncond_100M_1200K_bs128.pt": (
        dict(image_size=256, num_channels=128, num_res_blocks=2, num_heads=1, learn_sigma=True,
             use_scale_shift_norm=False, attention_resolutions="16"),
        ["model.num_heads=1", "data=image_folder", "data.image_size=256"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("file", sorted(PUBLISHED))
def test_each_published_checkpoint_imports_with_readmes_command(file):
    """The layout of each released network (built on the meta device from its flags) is read and
    fits the network its README command configures, tensor for tensor."""
    from pathlib import Path

    from guided_diffusion.script_util import create_model

    from diffuse_cli.interop.openai import from_state_dict

    flags, overrides = PUBLISHED[file]
    with torch.device("meta"):
        state = create_model(**flags).state_dict()
    args = [f"source={file}", *overrides]
    cfg = dc.compose_config(args, command="import")
    network = from_state_dict(state, Path(file), cfg)
    run_cfg = import_command.merged_config(
        cfg, network, import_command.GivenSettings(args), Path(file)
    )
    with torch.device("meta"):
        own = dc.build_model(run_cfg).state_dict()
    import_command.check_fit(own, network.state_dict, Path(file))
    assert run_cfg.variance.name == "learned_range" and run_cfg.loss.name == "hybrid"


def test_the_import_config_has_only_known_keys_and_unread_ones_are_refused():
    from diffuse_cli.config import SCHEMAS, unknown_keys

    assert unknown_keys(dc.compose_config([], "import", check_keys=False), SCHEMAS["import"]) == {}
    with pytest.raises(UserError, match=r"use_new_attention is not a setting of `diffuse import` "
                       r"\(did you mean use_new_attention_order\?"):  # fmt: skip
        dc.compose_config(["source=x.pt", "+use_new_attention=true"], command="import")
