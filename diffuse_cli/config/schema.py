"""Structured-config schemas: one dataclass per config group.

Every YAML file of a group is merged into its dataclass, so a misspelt key or a value of the wrong
type fails at composition, naming the key, before any work starts or any file is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class ScheduleConfig:
    name: str = MISSING
    num_timesteps: int = 1000
    beta_start: float = 1e-4  # linear (Ho et al. 2020): beta_1 and beta_T for T = 1000,
    beta_end: float = 0.02
    scale_betas: bool = True  # ... times 1000/T for other T (improved-diffusion); false: as given
    s: float = 0.008  # cosine offset (Nichol & Dhariwal 2021)
    max_beta: float = 0.999  # cosine clipping
    sigma_max: float = 1.0  # ncsn: sigma_1 (Song & Ermon 2019); num_timesteps is L; edm: grid top
    sigma_min: float = 0.01  # ncsn: sigma_L; edm: the smallest sigma of the sampling grid
    sigma_data: float = 0.5  # edm: the data's standard deviation the preconditioning assumes
    p_mean: float = -1.2  # edm: training noise levels ln sigma ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    rho: float = 7.0  # edm: the sampling grid's exponent (Karras et al. 2022, eq. 5)


@dataclass
class PredictionConfig:
    # eps | x0 | v; score (ncsn only: the output is the score itself); edm (schedule=edm only:
    # the network is F of D = c_skip x + c_out F(c_in x; c_noise))
    name: str = MISSING


@dataclass
class VarianceConfig:
    name: str = MISSING  # fixed_small | fixed_large | learned | learned_range


@dataclass
class LossConfig:
    name: str = MISSING  # simple | vlb | hybrid (DDPM); dsm (ncsn); simple (edm: EDM's loss)
    lam: float = 0.001  # hybrid: L_simple + lam * L_VLB (Nichol & Dhariwal 2021)
    timesteps: str = "uniform"  # uniform | importance (needs a VLB term: vlb or hybrid)
    weighting: str = "uniform"  # uniform | min_snr | edm: per-t weight on L_simple (simple, hybrid)
    snr_gamma: float = 5.0  # min_snr: min(SNR, gamma) on the x0 error (Hang et al. 2023)


@dataclass
class SamplerConfig:
    # ddpm | ddim | euler | heun | dpm_solver | pc (DDPM); langevin (ncsn); heun | euler | ddim |
    # dpm_solver (edm: samplers/edm.py)
    name: str = MISSING
    eta: float = 0.0  # ddim
    # linspace | leading | trailing | even | karras | logsnr (edm: karras or logsnr only)
    spacing: str = "even"
    clip_denoised: bool = True
    order: int = 2  # dpm_solver: 1 (= DDIM) or 2 (2M)
    predictor: str = "ddpm"  # pc: ddpm (ancestral) | ddim
    corrector_steps: int = 1  # pc: Langevin steps after each predictor step
    snr: float = 0.16  # pc: the corrector's target signal-to-noise ratio
    steps_per_level: int = 100  # langevin: T, Langevin steps at each noise level
    epsilon: float | None = None  # langevin: alpha_L (null: 0.4 sigma_L^2, NCSN's released code)
    denoise: bool = True  # langevin: end with x + sigma_L^2 s(x, sigma_L)
    s_churn: float = 0.0  # heun, schedule=edm: EDM Algorithm 2's noise (0: Algorithm 1)
    s_tmin: float = 0.0  # heun, schedule=edm: add noise only at sigma in [s_tmin, s_tmax]
    s_tmax: float = float("inf")
    s_noise: float = 1.0  # heun, schedule=edm: the added noise's standard deviation factor


@dataclass
class NetworkKeys:
    """The model keys every architecture reads."""

    name: str = MISSING
    arch: str = "unet"  # unet | mlp: which of UNetKeys and MLPKeys the network reads
    dropout: float = 0.0
    num_classes: int | None = None  # class-conditional: a label embedding for this many classes
    rescale_timesteps: bool = False  # the network sees t * 1000 / T (improved-diffusion's default)


@dataclass
class UNetKeys(NetworkKeys):
    """The keys of model.arch=unet (models/unet.py, built by build.build_unet)."""

    model_channels: int = 128
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    num_res_blocks: int = 2
    attention_resolutions: list[int] = field(default_factory=lambda: [16])
    num_heads: int = 1
    num_head_channels: int = -1  # > 0: channels per attention head, overrides num_heads (ADM)
    resblock_updown: bool = False  # BigGAN residual blocks for up/downsampling
    use_scale_shift_norm: bool = False  # AdaGN
    residual_rescale: bool = False  # residual sums times 1/sqrt(2)
    image_size: int | None = None  # the size the preset was published for; null: any size
    use_checkpoint: bool = False  # gradient checkpointing: less memory, more compute
    channels_last: bool = False  # NHWC memory format for weights and activations
    # sinusoidal timestep features, embedded in 4x as many channels; null: model_channels
    # (ADM 512x512 has twice its first level's width: its channel_mult starts at 0.5)
    time_channels: int | None = None
    norm_groups: int | None = None  # GroupNorm groups everywhere; null: <= 32, 2+ channels each
    norm_eps: float = 1e-5  # GroupNorm eps (the TensorFlow DDPM's: 1e-6)
    freq_shift: float = 0.0  # timestep frequencies max_period^(-i / (half - freq_shift))
    downsample_padding: int = 1  # 1: stride-2 convs pad every side; 0: right and bottom only


@dataclass
class MLPKeys(NetworkKeys):
    """The keys of model.arch=mlp (models/mlp.py)."""

    hidden: int = 256
    num_layers: int = 4


@dataclass
class ModelConfig(MLPKeys, UNetKeys):
    """The model group: the keys of every architecture, each read by its own only (ARCH_KEYS);
    a key of another architecture set away from its default is refused when a run starts."""


# The keys each model.arch reads, by the dataclass that lists them.
ARCH_KEYS = {"unet": UNetKeys, "mlp": MLPKeys}


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = "data"
    image_size: int = 32
    channels: int = 3
    # generated sets: how many to make; cifar10/mnist: the first N; image_folder: N files as
    # `subset` says (null: all)
    num_train: int | None = None
    num_test: int | None = None
    # image_folder with a cap: evenly_spaced over the sorted files (each class keeps its share),
    # or first (sorted by path; what runs from before this key read back as)
    subset: str = "evenly_spaced"
    hflip: bool = False
    download: bool = False
    seed: int = 0
    num_workers: int = 0


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    batch_size: int = 64  # global batch: split over processes and accumulation steps
    grad_accum: int = 1
    lr: float = 2e-4
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    lr_decay: str = "constant"  # constant | linear | cosine: after warmup, to 0 at lr_decay_steps
    lr_decay_steps: int | None = None  # null: max_steps; set past it to extend the run later
    grad_clip: float = 1.0  # <= 0 disables clipping
    mixed_precision: str = "no"  # no | fp16 (CUDA, with loss scaling) | bf16
    compile: bool = False  # torch.compile the network for training; checkpoints keep plain keys
    ema: str = "exponential"  # exponential (ema_decay) | power (EDM2's post-hoc EMA, ema_std)
    ema_decay: float = 0.999
    # ema=power: the relative widths sigma_rel of the power-function EMAs tracked; the first is
    # the checkpoint's ema.safetensors
    ema_std: list[float] = field(default_factory=lambda: [0.050, 0.100])
    ema_snapshot_every: int = 100  # ema=power: steps between snapshots; must divide ckpt_every
    ckpt_every: int = 500
    keep_last: int = 2
    sample_every: int = 500
    sample_num: int = 64
    sample_steps: int = 100  # ancestral (ddpm) steps for the grids made during training
    log_every: int = 50
    progress: bool = True
    # class-conditional models: probability of training a batch element with the null label
    # instead of its own, so the model also learns p(x) (classifier-free guidance)
    label_dropout: float = 0.1
    max_bad_steps: int = 10  # stop after this many steps in a row with non-finite gradients


@dataclass
class ClassifierConfig:
    """task=classifier: f_phi(y | x_t, t) on images noised by the run's forward process."""

    noised: bool = True  # false: a plain classifier of clean images (t = 0, no noise)
    buckets: int = 10  # accuracy reported per this many equal timestep ranges
    num_classes: int | None = None  # written by the trainer: the data's number of classes


@dataclass
class GuidanceConfig:
    name: str = MISSING  # none | classifier | cfg
    scale: float = 1.0  # classifier: s; cfg: w (eps_u + w (eps_c - eps_u); 1 = conditional)
    classifier: str | None = None  # classifier: the run directory of a task=classifier run


@dataclass
class LoggerConfig:
    name: str = MISSING  # none | wandb
    project: str = "diffuse"
    entity: str | None = None
    mode: str = "online"  # online | offline
    tags: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    num_batches: int = 8
    batch_size: int = 256
    buckets: int = 10
    repeats: int = 1
    nll_examples: int | None = 256  # nll: held-out examples for the full bound; null: all
    # sample quality (fid, kid, is, pr; swd, energy for 2-D data)
    num_samples: int | None = None  # null: 50000 for published model presets, else 1000
    samples: str | None = None  # a samples.npz (uint8 NHWC arr_0) to read instead of sampling
    ema: bool = True  # sample with the EMA weights (false: the raw weights)
    features: str | None = None  # inception | builtin | <classifier run>; null: by data
    inception_weights: str | None = None  # torch-fidelity's Inception file; null: hub cache
    reference_split: str | None = None  # train | test; null: train for presets, else test
    reference_num: int | None = None  # N images of the reference split, evenly spaced; null: all
    cache_dir: str | None = None  # reference statistics; null: <data.root>/reference_stats
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    is_splits: int = 10
    pr_neighborhood: int = 3  # k of the k-NN balls (Kynkaanniemi et al. 2019)
    swd_projections: int = 1000


@dataclass
class CommandConfig:
    """The keys train, sample and eval share: the run's name and folder, the seed, and the
    groups that define the network and its diffusion."""

    name: str = "default"
    run_dir: str = "runs/${name}"
    seed: int = 0
    debug: bool = False
    schedule: ScheduleConfig = MISSING
    prediction: PredictionConfig = MISSING
    variance: VarianceConfig = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING


@dataclass
class TrainConfig(CommandConfig):
    name: str = "${diffuse_run_name:${task}}"  # "default", or "classifier" for task=classifier
    task: str = "diffusion"  # diffusion | classifier (a noisy classifier for guidance)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    loss: LossConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING


@dataclass
class SampleConfig(CommandConfig):
    sampler: SamplerConfig = MISSING
    guidance: GuidanceConfig = MISSING
    # class-conditional sampling: "random" (uniform, seeded per sample), a list of labels that
    # samples take in turn ([3] = all class 3), or null (unconditional: needs label dropout)
    class_labels: Any = "random"
    steps: int | None = None  # None: the full chain, T steps
    num_samples: int = 64
    batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str | None = None  # default: <run_dir>/samples/<tag> (generate.sampler_tag)
    progress: bool = True
    checkpoint: int | None = None  # the step whose checkpoint to draw from; null: the latest
    # a power-EMA run: the EMA of this sigma_rel, reconstructed from its snapshots (checkpoint:
    # the snapshot step); null: the checkpoint's EMA
    ema_std: float | None = None


@dataclass
class EvalCommandConfig(CommandConfig):
    loss: LossConfig = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    metrics: list[str] = field(
        default_factory=lambda: ["loss"]
    )  # loss nll fid kid is pr swd energy
    sampler: SamplerConfig = MISSING  # sample quality: how the samples are drawn
    guidance: GuidanceConfig = MISSING  # sample quality: guided sampling, as `diffuse sample`
    class_labels: Any = "random"  # sample quality of a conditional run: labels, as `sample`
    steps: int | None = None  # None: the full chain, T steps
    batch_size: int = 256  # samples per sampling batch
    checkpoint: int | None = None  # the step whose checkpoint to evaluate; null: the latest
    ema_std: float | None = None  # a power-EMA run: the EMA of this sigma_rel, as in `sample`
    device: str = "auto"
    progress: bool = True


@dataclass
class ImportConfig(TrainConfig):
    """`diffuse import`: a train config (what the new run's config.yaml holds) and the source."""

    source: str = MISSING  # an openai .pt state dict (a file) or a diffusers folder
    use_new_attention_order: bool = False  # openai: q/k/v, then heads (guided-diffusion's 64x64)


@dataclass
class ExportConfig:
    """`diffuse export`: a run's checkpoint written in another library's format."""

    run_dir: str = "runs/default"  # the run to export
    format: str = "diffusers"  # diffusers (a DDPMPipeline folder)
    out: str = MISSING  # the folder to write; must not exist or be empty
    ema: bool = True  # the EMA weights (false: the raw weights)
    checkpoint: int | None = None  # the step whose checkpoint to export; null: the latest
    debug: bool = False


SCHEMAS = {
    "train": TrainConfig,
    "sample": SampleConfig,
    "eval": EvalCommandConfig,
    "import": ImportConfig,
    "export": ExportConfig,
}
# Keys of `diffuse import` that are not the new run's settings: not written to its config.yaml.
IMPORT_ONLY_KEYS = ("source", "use_new_attention_order")

# Config groups whose values define the network and its diffusion: `sample` and `eval` read them
# from the run's config.yaml and refuse a command-line override that differs.
MODEL_DEFINING = ("model", "prediction", "variance", "schedule", "data")
# Keys of those groups that say how the work is done, not what is computed: where the data are
# read from, and memory layout or recomputation of the network. A command that resumes, samples
# from or evaluates a run may set its own (a moved data set, more workers, channels_last).
EXECUTION_KEYS = {
    "data": ("root", "download", "num_workers"),
    "model": ("channels_last", "use_checkpoint"),
}
