"""`benchmarks/speed.py` on tiny sizes: its FLOP count, and every section's rows."""

import json

import torch
from torch.utils.flop_counter import FlopCounterMode

import benchmarks.speed as speed


def test_the_flop_count_matches_torch_flop_counter_plus_attention():
    ours, _ = speed.dit_pair(width=32, depth=2, heads=2)
    x, t, y = speed.dit_inputs(batch=3)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        ours(x, t, y)
    tokens, width = 16 * 16, 32
    attention = 3 * 2 * 4 * tokens**2 * width  # SDPA, which the counter does not see on the CPU
    assert speed.dit_forward_flops(3, tokens, width, 2, 2 * 2 * 4, 2 * 2 * 8) == counter.get_total_flops() + attention


def test_the_video_flop_count_matches_torch_flop_counter_plus_attention():
    from dit_pipelines import VideoDiTModel

    (width, pairs, heads), frames, tokens, text_tokens, text_width = (32, 2, 2), 3, 16 * 16, 5, 24
    model = VideoDiTModel(
        sample_size=32,
        sample_frames=frames,
        hidden_size=width,
        depth=pairs,
        num_heads=heads,
        attention_layout="interleaved",
        text_embed_dim=text_width,
        temporal_cross_attention=False,
    )
    x, text = torch.randn(2, 4, frames, 32, 32), torch.randn(2, text_tokens, text_width)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, 10, encoder_hidden_states=text)
    t = frames * tokens  # SDPA, which the counter does not see: per frame, per location, to the text
    attention = 2 * pairs * (4 * t * tokens * width + 4 * t * frames * width + 4 * t * text_tokens * width)
    expected = speed.video_forward_flops(2, frames, tokens, width, pairs, text_tokens, text_width)
    assert expected == counter.get_total_flops() + attention


def test_every_section_reports_both_implementations(tmp_path, monkeypatch):
    monkeypatch.setattr(speed, "DIT_SIZES", {"tiny": (32, 2, 2)})
    monkeypatch.setattr(speed, "TRAIN_SIZE", "tiny")
    monkeypatch.setattr(speed, "VIDEO_SIZE", (32, 1, 2))
    monkeypatch.setattr(speed, "VAE_CHANNELS", (8, 8))
    out = tmp_path / "speed.json"
    threads = torch.get_num_threads()
    result = speed.main(speed.parse_args(["--repeats", "2", "--batch_sizes", "2", "--output", str(out)]))
    assert json.loads(out.read_text()) == result and result["matmul_flops"] > 0
    assert torch.get_num_threads() == threads  # restored for the rest of the process
    sections = [row["section"] for row in result["rows"]]
    assert sections == ["forward", "train", "pipeline", "pipeline", "pipeline", "video", "video"]
    variants = [row["variant"] for row in result["rows"] if row["section"] == "pipeline"]
    assert variants == ["ours", "ours, cache_interval=2", "ours, cache_interval=3"]
    forward = result["rows"][0]
    assert forward["max_abs_difference"] < 1e-5  # the same weights compute the same function
    for row in result["rows"]:
        assert row["ratio"] == row["diffusers"]["median_s"] / row["ours"]["median_s"]
        assert row["ours"]["min_s"] <= row["ours"]["median_s"] <= row["ours"]["max_s"]
    train = result["rows"][1]
    assert train["ours"]["peak_memory_mib"] >= 0 and train["diffusers"]["peak_memory_mib"] >= 0  # tiny: maybe 0


def test_peak_memory_is_the_steps_own_even_after_a_larger_parent(monkeypatch):
    big = torch.ones(64, 1024, 1024)  # 256 MiB in this process: a child's ru_maxrss would start above its step
    monkeypatch.setattr(speed, "DIT_SIZES", {"small": (128, 4, 2)})
    monkeypatch.setattr(speed, "TRAIN_SIZE", "small")
    grown = speed.peak_memory_of_step("ours", threads=1)
    assert 10 < grown < big.numel() * 4 / 2**20  # activations and AdamW state of a small DiT, not the parent's
