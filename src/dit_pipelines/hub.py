"""Sharing saved pipelines on the Hugging Face Hub: a model card written from what the run left in the folder, then
one commit that uploads the folder (never training checkpoints, optimizer state or logs).

    from dit_pipelines.hub import push_pipeline
    push_pipeline("outputs/dit", "my-user/my-dit")   # honours HF_TOKEN and HF_ENDPOINT

Users load it back with `import dit_pipelines` and `DiffusionPipeline.from_pretrained("my-user/my-dit")`.

The card (`model_card_templates/{image,video}.md`, rendered by `huggingface_hub.ModelCard.from_template`) has the
Hub's YAML metadata (`library_name: diffusers` and the `pipeline_tag` the Hub cannot infer for custom classes,
`tags`, `license`, `datasets` and `base_model` when they are Hub repos), the model and sampler configuration, the
training arguments (`training_args.json`, written by the training scripts), every evaluation record a benchmark
saved (`dit_pipelines.evaluation.EvaluationRecord`) and a sample picture when the folder has one.
"""

import json
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from .atomic_files import read_json
from .evaluation.record import EvaluationRecord
from .latents import downsampling_factor
from .models.flops import saved_config_gflops

#: what a component folder may upload: configs, safetensors weights, tokenizer vocabularies (never pickles)
COMPONENT_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")  # never uploaded: a component holding only these fails
#: what the pipeline folder itself may upload, besides the card and the pictures it shows
RECORD_FILES = ("model_index.json", "training_args.json", "evaluation/*.json")
TEMPLATES = Path(__file__).parent / "model_card_templates"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # a LoRA run's adapter (diffusers' file name)
PIPELINES = {
    "DiTImagePipeline": ("image.md", "unconditional-image-generation", ["class-conditional"]),
    "DiTTextToVideoPipeline": ("video.md", "text-to-video", ["text-to-video"]),
}
SAMPLES = ["samples.png", "samples.gif"]  # a picture of samples the run left, when no evaluation names one
MODEL_KEYS = ["sample_size", "sample_frames", "patch_size", "temporal_patch_size", "in_channels", "hidden_size"]
MODEL_KEYS += ["depth", "num_heads", "block_type", "attention_layout", "learn_sigma", "conditioning"]
MODEL_KEYS += ["block_out_channels", "layers_per_block", "num_class_embeds"]  # the U-Net baseline
SCHEDULER_KEYS = ["timestep_respacing", "variance_type", "prediction_type", "beta_schedule"]
#: training options that say where the run went, not how it trained
UNREPORTED = {"output_dir", "push_to_hub", "hub_model_id", "hub_private_repo", "hub_token", "report_to"}
UNREPORTED |= {"logging_dir", "resume_from_checkpoint", "validation_prompts"}


def _table(rows: Iterable[Tuple], header: Sequence[str] = ("", "")) -> str:
    rows = [tuple(str(cell) for cell in row) for row in rows]
    if not rows:
        return ""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _hub_repo_id(value) -> Optional[str]:
    """`value` if it names a Hub repo ("user/name") rather than a local folder, else None."""
    if isinstance(value, str) and not os.path.exists(value) and value.count("/") == 1 and value[0] not in "./~":
        return value
    return None


def _run_sources(training: dict, datasets, base_model):
    """`datasets` and `base_model` for a card: as given, or the run's own (`--dataset` / `--dataset_name`,
    `--init_from` / `--init_from_image_dit`), each if it is a Hub repo."""
    if base_model is None:
        base_model = _hub_repo_id(training.get("init_from") or training.get("init_from_image_dit"))
    if datasets is None:
        datasets = [d for d in [_hub_repo_id(training.get("dataset") or training.get("dataset_name"))] if d]
    return list(datasets) or None, base_model


def _card_data(training: dict, license, datasets, base_model, tags, pipeline_tag=None):
    """The Hub metadata of a card (`ModelCardData`): the run's datasets and base model (`_run_sources`), our tags."""
    from huggingface_hub import ModelCardData

    datasets, base_model = _run_sources(training, datasets, base_model)
    return ModelCardData(
        library_name="diffusers",
        pipeline_tag=pipeline_tag,
        license=license,
        datasets=datasets,
        base_model=base_model,
        tags=["dit_pipelines", "diffusion-transformer", "dit", *tags],
    )


def _training_rows(training: dict, leave_out=()) -> list:
    """The training arguments a card reports (not where the run went, nor unset options), local paths shortened."""
    return [
        (k, _local_path_hidden(v))
        for k, v in sorted(training.items())
        if k not in UNREPORTED and k not in leave_out and v not in (None, False, [])
    ]


def _local_path_hidden(value):
    """An absolute local path shown by its last part (a card should not publish the trainer's home folder)."""
    return f".../{os.path.basename(value.rstrip('/'))}" if isinstance(value, str) and os.path.isabs(value) else value


def evaluation_section(records: List[EvaluationRecord]) -> str:
    """Markdown of every record: its metrics (name, value, note), its settings and how it was measured."""
    parts = []
    for record in records:
        rows = [(m.name, m.formatted(), m.note) for m in record.metrics]
        settings = ", ".join(f"{k} = {v}" for k, v in record.settings.items())
        text = [f"### {record.name}", _table(rows, ("metric", "value", "note"))]
        text += [f"Settings: {settings}."] if settings else []
        text += [record.description] if record.description else []
        parts.append("\n\n".join(text))
    return "\n\n".join(parts)


def model_card(
    folder: str,
    repo_id: str,
    license: str = "apache-2.0",
    datasets: Optional[Sequence[str]] = None,
    base_model: Optional[str] = None,
    extra_tags=(),
    uploaded: Optional[Sequence[str]] = None,
) -> "huggingface_hub.ModelCard":  # noqa: F821
    """The model card of the saved pipeline in `folder`, to be published as `repo_id`. `datasets` defaults to the
    training run's `--dataset` and `base_model` to the model it started from (`--init_from`,
    `--init_from_image_dit`), each if it is a Hub repo. `uploaded` (the files pushed with it) is listed."""
    from huggingface_hub import ModelCard

    root = Path(folder)
    index = read_json(root / "model_index.json")
    if index is None and (root / LORA_WEIGHTS).is_file():
        return adapter_card(folder, repo_id, license, datasets, base_model, extra_tags, uploaded)
    if index is None:
        raise ValueError(f"{folder} is not a saved pipeline folder (no model_index.json).")
    if index["_class_name"] not in PIPELINES:
        raise ValueError(f"No model card template for {index['_class_name']}; known: {', '.join(PIPELINES)}.")
    template, pipeline_tag, tags = PIPELINES[index["_class_name"]]
    transformer = read_json(root / "transformer" / "config.json") or {}
    scheduler = read_json(root / "scheduler" / "scheduler_config.json") or {}
    training = read_json(root / "training_args.json") or {}
    card_data = _card_data(training, license, datasets, base_model, [*tags, *extra_tags], pipeline_tag)
    records = EvaluationRecord.load_all(folder)
    samples = [r.sample for r in records if r.sample] + [s for s in SAMPLES if (root / s).is_file()]
    sample = next((s.replace(os.sep, "/") for s in samples if (root / s).is_file()), None)
    text = transformer.get("conditioning") == "text"
    model_keys = MODEL_KEYS + (
        ["text_embed_dim", "pooled_text_conditioning"] if text else ["num_classes", "class_dropout_prob"]
    )
    model_rows = [(k, transformer[k]) for k in model_keys if k in transformer]
    if transformer.get("decoder_depth"):  # a MaskDiT decoder (masked training): its width defaults to the model's
        width = transformer.get("decoder_hidden_size") or transformer["hidden_size"]
        model_rows += [("decoder_depth", transformer["decoder_depth"]), ("decoder_hidden_size", width)]
    if transformer.get("_class_name") in ("DiTModel", "ClassConditionalUNet"):
        gflops = saved_config_gflops(transformer)
        model_rows.append(("Gflops per image (forward, counted as DiT's Table 4)", f"{gflops:.4g}"))
    vae = read_json(root / "vae" / "config.json")
    if vae:
        factor = downsampling_factor(vae["block_out_channels"])
        model_rows.append(("vae", f"{vae['_class_name']}, f = {factor}, {vae['latent_channels']} latent channels"))
    sampler_rows = [("scheduler", scheduler.get("_class_name"))]
    sampler_rows += [(k, scheduler[k]) for k in SCHEDULER_KEYS if k in scheduler]
    training_rows = _training_rows(training)
    labels = [v for _, v in sorted((index.get("id2label") or {}).items(), key=lambda kv: int(kv[0]))]
    prompts = training.get("validation_prompts") or ["a description of the clip"]
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / template),
        repo_id=repo_id,
        model_name=repo_id.split("/")[-1],
        model_table=_table(model_rows),
        sampler_table=_table(sampler_rows),
        training_table=_table(training_rows),
        evaluation=evaluation_section(records),
        sample=sample,
        example_labels=json.dumps(labels[:3]) if labels else "[0, 1, 2]",
        example_prompt=json.dumps(prompts[0]),
        num_frames=transformer.get("sample_frames", 8),
        files="\n".join(f"- `{f}`" for f in uploaded or []),
    )


def adapter_card(folder, repo_id, license, datasets, base_model, extra_tags, uploaded):
    """The card of a LoRA run's folder (`pytorch_lora_weights.safetensors`, no pipeline): it says the repo holds only
    an adapter, names the base model (`--init_from`; Hub metadata when that is a Hub repo) and the adapted layers."""
    from huggingface_hub import ModelCard

    training = read_json(Path(folder) / "training_args.json") or {}
    card_data = _card_data(training, license, datasets, base_model, ["lora", *extra_tags])
    base_model = card_data.base_model
    adapter_keys = ("lora_rank", "lora_alpha", "lora_target_modules")
    base = training.get("init_from")
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "lora.md"),
        repo_id=repo_id,
        model_name=repo_id.split("/")[-1],
        base_model=base_model,  # a Hub repo, or None
        base_model_name=base_model or _local_path_hidden(base) or "its base model",
        target_modules=", ".join(f"`{m}`" for m in training.get("lora_target_modules") or []) or "its linear layers",
        adapter_table=_table((k, training[k]) for k in adapter_keys if training.get(k) is not None),
        training_table=_table(_training_rows(training, leave_out=adapter_keys)),
        files="\n".join(f"- `{f}`" for f in uploaded or []),
    )


def pipeline_files(folder: str) -> List[str]:
    """The files of the saved pipeline in `folder` that a Hub repo gets, chosen by an allow-list, as sorted paths
    relative to `folder`: `model_index.json`, each component's `COMPONENT_FILES` (one folder level, as
    `save_pretrained` writes them), the training arguments, the evaluation records and the sample pictures they name.
    Anything else (checkpoints, latent caches, logs, pickles, stray files) stays local. README.md (the card) is
    written and added by `push_pipeline`."""
    root = Path(folder)
    index = read_json(root / "model_index.json")
    if index is None and (root / LORA_WEIGHTS).is_file():  # a LoRA run's folder: the adapter and its records
        return sorted({p.relative_to(root).as_posix() for f in (LORA_WEIGHTS, *RECORD_FILES) for p in root.glob(f)})
    if index is None:
        raise ValueError(f"{folder} is not a saved pipeline folder (no model_index.json).")
    components = [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)]
    components = [name for name in components if index[name][0] is not None and (root / name).is_dir()]
    patterns = [*RECORD_FILES, *(f"{name}/{pattern}" for name in components for pattern in COMPONENT_FILES)]
    found = {p.relative_to(root).as_posix() for pattern in patterns for p in root.glob(pattern) if p.is_file()}
    for name in components:
        pickled = [p.name for pattern in PICKLED_WEIGHTS for p in (root / name).glob(pattern)]
        if pickled and not list((root / name).glob("*.safetensors")):
            raise ValueError(
                f"{folder}/{name} holds its weights only as pickles ({', '.join(sorted(pickled))}), which are not "
                "uploaded: save the pipeline with safe_serialization=True (the default) and push again."
            )
    samples = [r.sample for r in EvaluationRecord.load_all(folder) if r.sample] + SAMPLES
    found |= {s for s in samples if (root / s).is_file()}
    return sorted(found)


def push_pipeline(
    folder: str,
    repo_id: str,
    *,
    token: Optional[str] = None,
    private: Optional[bool] = None,
    commit_message: str = "Upload pipeline",
    revision: Optional[str] = None,
    **card_kwargs,
) -> str:
    """Write the model card into `folder` (README.md), create `repo_id` if needed and upload, in one commit, the
    card and `pipeline_files(folder)`, nothing else. Returns the commit URL. `card_kwargs` go to `model_card`."""
    from huggingface_hub import CommitOperationAdd, create_commit, create_repo

    files = ["README.md", *pipeline_files(folder)]
    card = model_card(folder, repo_id, uploaded=files, **card_kwargs)
    card.validate()  # the Hub checks the YAML metadata; a card it would reject is not uploaded
    card.save(os.path.join(folder, "README.md"))
    repo = create_repo(repo_id, token=token, private=private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=os.path.join(folder, f)) for f in files]
    commit = create_commit(repo.repo_id, operations, commit_message=commit_message, token=token, revision=revision)
    return commit.commit_url
