"""Sharing saved pipelines on the Hugging Face Hub: a model card written from what the run left in the folder, then
one commit that uploads the folder (never training checkpoints, optimizer state or logs).

    from dit_pipelines.hub import push_pipeline
    push_pipeline("outputs/dit-mnist", "my-user/dit-mnist")   # honours HF_TOKEN and HF_ENDPOINT

Users load it back with `import dit_pipelines` and `DiffusionPipeline.from_pretrained("my-user/dit-mnist")`.

The card (`model_card_templates/{image,video}.md`, rendered by `huggingface_hub.ModelCard.from_template`) has the
Hub's YAML metadata (`library_name: diffusers` and the `pipeline_tag` the Hub cannot infer for custom classes,
`tags`, `license`, `datasets`, `base_model` for fine-tuned models), the model and sampler configuration, the
training arguments (`training_args.json`, written by the training scripts), the benchmark figures
(`sample_quality.json` / `prompt_following/prompt_following.json`) and a sample picture when the folder has them.
"""

import json
import os
from pathlib import Path
from typing import Optional

#: never uploaded: resumable training state, logs, temporary files, the validation samples of every N steps
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "**/checkpoint-*/**", "*.tmp", "**/*.tmp", "logs/**",
                   "validation/**", "optimizer*.bin", "**/optimizer*.bin", "random_states_*.pkl",
                   "training_state.json"]  # fmt: skip
TEMPLATES = Path(__file__).parent / "model_card_templates"
PIPELINES = {
    "DiTImagePipeline": ("image.md", "unconditional-image-generation", ["class-conditional"]),
    "DiTTextToVideoPipeline": ("video.md", "text-to-video", ["text-to-video"]),
}
#: figures shown in the card, in this order, when the benchmark wrote them
EVALUATIONS = {
    "sample_quality.json": [
        ("class accuracy (MNIST classifier)", "class_accuracy", "{:.1%}"),
        ("Fréchet distance (classifier features)", "frechet_distance", "{:.1f}"),
        ("real-vs-real floor of that distance", "frechet_distance_real_floor", "{:.2f}"),
        ("samples", "num_samples", "{}"),
        ("guidance scale", "guidance_scale", "{}"),
        ("sampling steps", "num_inference_steps", "{}"),
    ],
    os.path.join("prompt_following", "prompt_following.json"): [
        ("right digit (per-frame classifier, majority vote)", "generated.digit_accuracy", "{:.1%}"),
        ("right direction (centroid displacement signs)", "generated.direction_accuracy", "{:.1%}"),
        ("both", "generated.both", "{:.1%}"),
        ("the same measures on real clips: digit", "real.digit_accuracy", "{:.1%}"),
        ("the same measures on real clips: direction", "real.direction_accuracy", "{:.1%}"),
        ("clips (held-out prompts)", "clips", "{}"),
        ("guidance scale", "guidance_scale", "{}"),
        ("scheduler", "scheduler", "{}"),
        ("sampling steps", "num_inference_steps", "{}"),
    ],
}
SAMPLES = ["samples.png", os.path.join("prompt_following", "held_out_prompts.gif")]


def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def _lookup(data: dict, dotted: str):
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _table(rows) -> str:
    rows = [(str(k), str(v)) for k, v in rows]
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]) if rows else ""


def model_card(
    folder: str,
    repo_id: str,
    license: str = "apache-2.0",
    datasets=("ylecun/mnist",),
    base_model: Optional[str] = None,
    extra_tags=(),
) -> "huggingface_hub.ModelCard":  # noqa: F821
    """The model card of the saved pipeline in `folder`, to be published as `repo_id`. `base_model` defaults to
    the Hub model the run started from (`--init_from` / `--init_from_image_dit`), if it was one."""
    from huggingface_hub import ModelCard, ModelCardData

    root = Path(folder)
    index = _read_json(root / "model_index.json")
    if index is None:
        raise ValueError(f"{folder} is not a saved pipeline folder (no model_index.json).")
    if index["_class_name"] not in PIPELINES:
        raise ValueError(f"No model card template for {index['_class_name']}; known: {', '.join(PIPELINES)}.")
    template, pipeline_tag, tags = PIPELINES[index["_class_name"]]
    transformer = _read_json(root / "transformer" / "config.json") or {}
    scheduler = _read_json(root / "scheduler" / "scheduler_config.json") or {}
    training = _read_json(root / "training_args.json") or {}
    start = training.get("init_from") or training.get("init_from_image_dit")
    if base_model is None and start and not os.path.exists(start) and start.count("/") == 1:
        base_model = start  # a Hub repo id
    card_data = ModelCardData(
        library_name="diffusers", pipeline_tag=pipeline_tag, license=license, datasets=list(datasets) or None,
        base_model=base_model, tags=["dit_pipelines", "diffusion-transformer", "dit", *tags, *extra_tags],
    )  # fmt: skip
    evaluation = []
    for name, rows in EVALUATIONS.items():
        results = _read_json(root / name)
        for label, key, fmt in rows if results else ():
            value = _lookup(results, key)
            if value is not None:
                evaluation.append((label, fmt.format(value)))
    sample = next((s.replace(os.sep, "/") for s in SAMPLES if (root / s).is_file()), None)
    text = transformer.get("conditioning") == "text"
    model_keys = ["sample_size", "sample_frames", "patch_size", "temporal_patch_size", "in_channels", "hidden_size",
                  "depth", "num_heads", "attention_layout", "learn_sigma", "conditioning"]  # fmt: skip
    model_keys += ["text_embed_dim", "pooled_text_conditioning"] if text else ["num_classes", "class_dropout_prob"]
    model_rows = [(k, transformer[k]) for k in model_keys if k in transformer]
    vae = _read_json(root / "vae" / "config.json")
    if vae:
        factor = 2 ** (len(vae["block_out_channels"]) - 1)
        model_rows.append(("vae", f"{vae['_class_name']}, f = {factor}, {vae['latent_channels']} latent channels"))
    sampler_rows = [("scheduler", scheduler.get("_class_name"))] + [
        (k, scheduler[k]) for k in ("timestep_respacing", "variance_type", "prediction_type", "beta_schedule")
        if k in scheduler
    ]  # fmt: skip
    skip = {"output_dir", "push_to_hub", "hub_model_id", "hub_private_repo", "hub_token", "report_to",
            "logging_dir", "resume_from_checkpoint", "validation_prompts"}  # fmt: skip
    training_rows = [(k, v) for k, v in sorted(training.items()) if k not in skip and v not in (None, False, [])]
    labels = [v for _, v in sorted((index.get("id2label") or {}).items(), key=lambda kv: int(kv[0]))]
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / template),
        repo_id=repo_id,
        model_name=repo_id.split("/")[-1],
        model_table=_table(model_rows),
        sampler_table=_table(sampler_rows),
        training_table=_table(training_rows),
        evaluation_table=_table(evaluation),
        sample=sample,
        example_labels=repr(labels[:3]) if labels else "[0, 1, 2]",
        num_frames=transformer.get("sample_frames", 8),
    )


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
    """Write the model card into `folder` (README.md), create `repo_id` if needed and upload the folder in one
    commit, without `IGNORE_PATTERNS`. Returns the commit URL. `card_kwargs` go to `model_card`."""
    from huggingface_hub import create_repo, upload_folder

    card = model_card(folder, repo_id, **card_kwargs)
    card.validate()  # the Hub checks the YAML metadata; a card it would reject is not uploaded
    card.save(os.path.join(folder, "README.md"))
    repo = create_repo(repo_id, token=token, private=private, exist_ok=True)
    commit = upload_folder(repo_id=repo.repo_id, folder_path=folder, commit_message=commit_message, token=token,
                           ignore_patterns=IGNORE_PATTERNS, revision=revision)  # fmt: skip
    return commit.commit_url
