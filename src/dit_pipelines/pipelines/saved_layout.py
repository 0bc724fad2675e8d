"""Where a saved pipeline folder keeps its transformer, for code that accepts a pipeline or a bare model folder."""

import os


def transformer_folder(path: str) -> str:
    """The model folder of a saved pipeline (its transformer/), or `path` itself for a saved model."""
    folder = os.path.join(path, "transformer")
    return folder if os.path.isdir(folder) else path
