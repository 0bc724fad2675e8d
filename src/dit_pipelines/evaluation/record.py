"""`EvaluationRecord`: what a benchmark measured on a saved pipeline, written beside it for its model card.

A record is a metric table (name, value, and how it was measured) plus the settings of the run (sampler, steps,
guidance, number of samples). Any benchmark writes one into the pipeline folder as `evaluation/<name>.json`;
`dit_pipelines.hub.model_card` renders every record it finds there, knowing nothing of the dataset or metric.

>>> import tempfile
>>> record = EvaluationRecord("sample_quality", [Metric("FID", 12.3456, "{:.2f}", "50K samples")],
...                           settings={"guidance_scale": 1.5}, sample="samples.png")
>>> folder = tempfile.mkdtemp()
>>> path = record.save(folder)
>>> [r.metrics[0].formatted() for r in EvaluationRecord.load_all(folder)]
['12.35']
"""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

FOLDER = "evaluation"  # inside a saved pipeline folder


@dataclass
class Metric:
    """One measured figure."""

    name: str  # what was measured, as the card shows it ("class accuracy", "FID")
    value: Any  # the number (or text)
    format: str = "{}"  # how to print the value ("{:.1%}", "{:.2f}")
    note: str = ""  # how it was measured, when the name does not say it

    def formatted(self) -> str:
        return self.format.format(self.value) if self.value is not None else "—"


@dataclass
class EvaluationRecord:
    """The metrics and settings of one benchmark run on one pipeline."""

    name: str  # the benchmark, also the file name (`evaluation/<name>.json`)
    metrics: List[Metric]
    settings: Dict[str, Any] = field(default_factory=dict)  # sampler, steps, guidance, samples, seed, ...
    description: str = ""  # how the figures were measured, a sentence or two for the card
    sample: Optional[str] = None  # a picture or GIF of samples, relative to the pipeline folder
    details: Dict[str, Any] = field(default_factory=dict)  # anything else the benchmark keeps (per-class results)

    def save(self, pipeline_folder: str) -> str:
        """Write the record to `pipeline_folder/evaluation/<name>.json` and return the path."""
        path = os.path.join(pipeline_folder, FOLDER, f"{self.name}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=2, default=str)
        return path

    @classmethod
    def from_dict(cls, data: dict) -> "EvaluationRecord":
        return cls(**{**data, "metrics": [Metric(**m) for m in data.get("metrics", [])]})

    @classmethod
    def load_all(cls, pipeline_folder: str) -> List["EvaluationRecord"]:
        """Every record saved in `pipeline_folder`, by name."""
        folder = Path(pipeline_folder, FOLDER)
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        return [cls.from_dict(json.loads(path.read_text())) for path in files]
