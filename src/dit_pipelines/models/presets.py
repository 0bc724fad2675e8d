"""The DiT model family of Peebles & Xie (2023), Table 1: four sizes times three patch sizes."""

from typing import Dict

# name -> transformer size; the patch size is the number after the slash.
_SIZES = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}

#: The 12 presets by name, e.g. ``DIT_PRESETS["DiT-XL/2"] == {"depth": 28, "hidden_size": 1152,
#: "num_heads": 16, "patch_size": 2}``. Everything else (input size, channels, classes) is a `DiTModel` default.
DIT_PRESETS: Dict[str, dict] = {
    f"DiT-{size}/{patch}": {**dims, "patch_size": patch} for size, dims in _SIZES.items() for patch in (2, 4, 8)
}


def preset_config(name: str) -> dict:
    """The config of preset `name` (a copy), or a `ValueError` listing the known names."""
    if name not in DIT_PRESETS:
        raise ValueError(f"Unknown DiT preset {name!r}; choose one of {', '.join(DIT_PRESETS)}.")
    return dict(DIT_PRESETS[name])
