from .pipeline_dit_image import DiTImagePipeline
from .pipeline_dit_text_to_video import DiTTextToVideoPipeline, DiTVideoPipelineOutput

__all__ = ["DiTImagePipeline", "DiTTextToVideoPipeline", "DiTVideoPipelineOutput"]
