"""diffuse: train, sample and evaluate diffusion models from one Hydra config.

The public names are those of diffuse_cli.api (its __all__), re-exported here.
"""

from diffuse_cli.api import *  # noqa: F403
from diffuse_cli.api import __all__  # noqa: F401
from diffuse_cli.version import __version__  # noqa: F401
