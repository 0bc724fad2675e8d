from .pipeline_dit_image import DiTImagePipeline

__all__ = ["DiTImagePipeline"]
