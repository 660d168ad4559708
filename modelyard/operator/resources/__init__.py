"""Pure builders: Model (+ plan) in, whole manifests out. No client calls."""
from modelyard.operator.resources.autoscaling import build_inference_pool, build_scaled_object
from modelyard.operator.resources.common import SPEC_HASH, Settings, labels
from modelyard.operator.resources.convert import build_convert_job, convert_recipe, converted_dir
from modelyard.operator.resources.download import base_dir, build_cache_pvc, build_download_job
from modelyard.operator.resources.server import build_adapters_configmap, build_deployment, build_service, endpoint, served_adapters

__all__ = [
    "SPEC_HASH", "Settings", "labels", "build_convert_job", "convert_recipe", "converted_dir",
    "base_dir", "build_cache_pvc", "build_download_job", "build_deployment", "build_service", "endpoint",
    "build_adapters_configmap", "served_adapters", "build_inference_pool", "build_scaled_object",
]
