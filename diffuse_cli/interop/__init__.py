"""Networks of other codebases: openai's improved-/guided-diffusion and diffusers read into this
toolkit's UNet (`diffuse import`), and runs written out as diffusers folders (`diffuse export`).

One module per foreign format holds its key map and what it cannot express; each reader returns an
`ImportedNetwork`, which the import command turns into a run.
"""

from .imported import ImportedNetwork

__all__ = ["ImportedNetwork"]
