"""The class-conditional image pipeline, the text-to-video pipeline, and the denoising loop they share."""

from .pipeline_dit_image import DiTImagePipeline
from .pipeline_dit_text_to_video import DiTTextToVideoPipeline, DiTVideoPipelineOutput

__all__ = ["DiTImagePipeline", "DiTTextToVideoPipeline", "DiTVideoPipelineOutput"]
