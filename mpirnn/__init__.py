"""mpirnn: exact parallel training of recurrent networks over MPI (data, sequence, pipeline, tensor).

`mpirnn.load_checkpoint(DIR) -> (model, config)` opens a trained checkpoint by itself
(mpirnn/inference/load.py). It is imported on first use, so `import mpirnn` (and the
trainer's config check, which runs before torch is loaded) stays light.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name == "load_checkpoint":
        from mpirnn.inference.load import load_checkpoint
        return load_checkpoint
    raise AttributeError(f"module 'mpirnn' has no attribute {name!r}")
