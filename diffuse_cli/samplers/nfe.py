"""Counting network evaluations (NFE, "number of function evaluations")."""


class NFECounter:
    """Wraps a model and counts its calls: `calls` is the number of network evaluations so far.

    One call evaluates the network once for every sample of the batch, so after one sampler run
    `calls` is the number of evaluations per sample.

    Args:
        model: any callable model(x_t, t, **model_kwargs).
    """

    def __init__(self, model):
        self.model = model
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)
