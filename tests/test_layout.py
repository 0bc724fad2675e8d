"""The library/sandbox cut: what `import dit_pipelines` does, the sandbox staying out of the library, old saved
layouts loading, and every module short with one job."""

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dit_pipelines import DiTModel, VideoDiTModel

ROOT = Path(__file__).resolve().parents[1]
OLD_LAYOUT = ROOT / "tests" / "data" / "old_layout"  # saved by dit_pipelines before the cut (commit fe5c4e0)


def python_modules(*folders):
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_the_library_knows_no_sandbox_dataset():
    sandbox_words = re.compile(r"mnist|\bdigits?\b", re.IGNORECASE)
    files = [p for p in (ROOT / "src" / "dit_pipelines").rglob("*") if p.is_file() and p.suffix in (".py", ".md")]
    assert len(files) > 30
    assert [str(p) for p in files if sandbox_words.search(p.read_text())] == []


def test_importing_the_package_imports_no_sandbox_module_and_starts_no_process():
    script = textwrap.dedent("""
        import sys
        events = []
        sys.addaudithook(lambda event, args: events.append(event) if event.split(".")[0] in ("subprocess", "os")
                         and event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                                       "os.fork") else None)
        import dit_pipelines, dit_pipelines.training, dit_pipelines.evaluation, dit_pipelines.hub
        sandbox = [m for m in sys.modules if m.split(".")[0] in ("examples", "training", "benchmarks") or "mnist" in m]
        print(events, sandbox)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd="/")
    assert done.stdout.strip() == "[] []"


@pytest.fixture(scope="module")
def saved_outputs():
    return load_file(str(OLD_LAYOUT / "outputs.safetensors"))


def test_models_saved_before_the_cut_load_bit_for_bit_and_predict_the_same(saved_outputs):
    """The factorized video DiT was saved with 9D-row modulations (the temporal rows inside the spatial layer);
    loading splits them into `temporal_modulation`. The image DiT's layout did not change."""
    o, t = saved_outputs, torch.tensor([10, 700])
    video = VideoDiTModel.from_pretrained(OLD_LAYOUT / "video_dit_factorized").eval()
    assert video.blocks[0].modulation.out_features == 6 * 16 and video.blocks[0].temporal_modulation is not None
    image = DiTModel.from_pretrained(OLD_LAYOUT / "dit").eval()
    with torch.no_grad():
        video_out = video(o["video_input"], t, encoder_hidden_states=o["text"], encoder_attention_mask=o["mask"])
        image_out = image(o["image_input"], t, torch.tensor([0, 3]))
    # bit for bit on the machine that saved them; other CPUs' kernels round float32 differently (4.8e-7 measured)
    assert torch.allclose(video_out.sample, o["video_output"], rtol=0, atol=1e-5)
    assert torch.allclose(image_out.sample, o["image_output"], rtol=0, atol=1e-5)

    # the same through a plain load_state_dict of the old file (a user's own loading code)
    old = load_file(str(OLD_LAYOUT / "video_dit_factorized" / "diffusion_pytorch_model.safetensors"))
    assert old["blocks.0.modulation.weight"].shape[0] == 9 * 16
    fresh = VideoDiTModel.from_config(video.config).eval()
    fresh.load_state_dict(old)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), video.state_dict().values()))


def test_every_module_is_short_and_opens_with_what_it_is_for():
    modules = python_modules("src", "training", "examples", "benchmarks")
    long = [f"{p.relative_to(ROOT)}: {n}" for p in modules if (n := len(p.read_text().splitlines())) > 400]
    assert long == []
    undocumented = [
        str(p.relative_to(ROOT))
        for p in modules
        if p.name != "__init__.py" or p.read_text().strip()
        if not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert undocumented == []


def test_the_training_scripts_import_only_the_library():
    for script in (ROOT / "training").glob("train_*.py"):
        tree = ast.parse(script.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"examples", "training", "benchmarks"} and "sys.path" not in script.read_text()


def test_the_training_scripts_run_as_plain_scripts_from_anywhere(tmp_path):
    """`python training/x.py` resolves its imports from the installed package alone (no sys.path edits)."""
    for script in ("train_dit.py", "train_video_dit.py"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "training" / script), "--help"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=300,
        )
        assert done.returncode == 0 and "--output_dir" in done.stdout, done.stderr[-2000:]


def test_a_seeded_new_model_draws_the_initial_weights_it_drew_before_the_cut():
    """The same seed gives the same initial weights as before the cut in every layout and conditioning, so runs
    started before it are reproducible after it (the 9D-row modulations of the old layout compared split)."""
    old = load_file(str(OLD_LAYOUT / "fresh_initialisation.safetensors"))
    for layout in ("interleaved", "factorized", "full"):
        for conditioning in ("text", "class"):
            torch.manual_seed(0)
            size = dict(sample_size=4, sample_frames=2, in_channels=2, hidden_size=16, depth=2, num_heads=2)
            text = dict(text_embed_dim=8, pooled_text_conditioning=conditioning == "text")
            model = VideoDiTModel(**size, attention_layout=layout, conditioning=conditioning, num_classes=3, **text)
            prefix = f"{layout}.{conditioning}."
            saved = {k[len(prefix) :]: v for k, v in old.items() if k.startswith(prefix)}
            fresh = VideoDiTModel.from_config(model.config)
            fresh.load_state_dict(saved)  # converts the old modulation rows
            for name, tensor in model.state_dict().items():
                assert torch.equal(tensor, fresh.state_dict()[name]), (layout, conditioning, name)
    torch.manual_seed(0)
    image = DiTModel(sample_size=4, patch_size=2, in_channels=2, hidden_size=16, depth=2, num_heads=2, num_classes=3)
    assert all(torch.equal(v, old[f"dit.{k}"]) for k, v in image.state_dict().items())
