"""Inception-v3 features by torch-fidelity, the network FID, KID and IS were defined with
(Heusel et al. 2017; Salimans et al. 2016), ported bit-exactly from the TensorFlow graph.

Weights come from torch's hub cache (`<torch hub dir>/checkpoints/`, where torch-fidelity's own
download puts them; TORCH_HOME moves it), fetched once when missing, or from
`eval.inception_weights=<file>`. On an offline machine without them the error names the file and
the folder in one sentence.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from diffuse_cli.errors import UserError

FILENAME = "weights-inception-2015-12-05-6726825d.pth"
URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{FILENAME}"
FEATURES, LOGITS = "2048", "logits_unbiased"  # pool3 features; the logits IS is defined on


def default_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / FILENAME


def missing_weights_message(path: Path) -> str:
    return (
        f"the Inception-v3 weights are missing and could not be downloaded: place {FILENAME} "
        f"(from torch-fidelity's v0.2.0 release) in {path.parent}/, or pass "
        "eval.inception_weights=<file> (or use eval.features=builtin on the shapes data)"
    )


def resolve_weights(weights: str | None) -> Path:
    """The weights file to load: `weights` if given, else the hub cache, downloaded once."""
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise UserError(
                f"eval.inception_weights={weights}: no such file; give the path of {FILENAME}"
            )
        return path
    path = default_weights_path()
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(URL, str(path), progress=False)
        except Exception as err:  # offline, proxy, disk: all end in the same advice
            raise UserError(missing_weights_message(path)) from err
    return path


def load_inception(path: Path, device: torch.device) -> torch.nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3 on `device`, giving (pool3, logits)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:  # weights_only: a file that would run code when loaded is refused here, before
        # torch-fidelity loads it without that guard
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path}: not a readable Inception-v3 state dict ({err})") from err
    net = FeatureExtractorInceptionV3(
        "inception-v3-compat", [FEATURES, LOGITS], feature_extractor_weights_path=str(path)
    )
    return net.to(device)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float NCHW -> uint8 NCHW with 3 channels (grey images repeated)."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def inception_extractor(cfg: DictConfig, device: torch.device):
    import torch_fidelity

    from diffuse_cli.evaluate.features.extractor import Extractor, file_digest

    if cfg.data.channels not in (1, 3):
        raise UserError(
            f"eval.features=inception takes grey or RGB images, not {cfg.data.channels} channels"
        )
    path = resolve_weights(cfg.eval.inception_weights)
    net = load_inception(path, device)
    digest = file_digest(path)  # other weights never reuse these reference statistics

    def extract(x: torch.Tensor):
        features, logits = net(to_uint8(x).to(device))
        return features, logits

    return Extractor(
        name="inception",
        key=f"inception-v3-compat-{digest}",
        implementation={
            "implementation": "torch-fidelity",
            "version": torch_fidelity.__version__,
            "network": "inception-v3-compat",
            "weights": path.name,
            "weights_sha256": digest,
        },  # fmt: skip
        extract=extract,
    )
