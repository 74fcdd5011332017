"""Quantization from scratch, one idea per module, and the production anchors next to it.

- ``affine``: integer grids, ``compute_qparams``, ``quantize``, ``dequantize``, ``fake_quantize``
  (straight-through gradient), ``sqnr_db``;
- ``calibration``: ``calibrate`` activation ranges (min-max, percentile, MSE);
- ``fakequant``: ``QuantWrapper``, ``quantize_model``, ``calibrate_model``, ``ptq``, ``qat``;
- ``kmeans``: k-means weight sharing (``kmeans_quantize``, ``kmeans_model``, ``share_weights``);
- ``packing``: bit packing and the saved artifact (``packed_state_dict``, ``packed_size_bytes``,
  ``load_packed``);
- ``weight_only``: group-wise RTN and GPTQ for linear layers, calibration Hessians, int4 artifact;
- ``torch_ao``: torch.ao dynamic/static int8 (the deprecated PyTorch anchors).

The real int8 deployment with onnxruntime lives in ``course_lib.deploy``. Everything public is
re-exported here, so ``from course_lib import quantization as Q; Q.ptq(...)`` works.
"""
from .affine import EPS, MAX_BITS, compute_qparams, dequantize, fake_quantize, qrange, quantize, sqnr_db
from .calibration import CALIBRATION_METHODS, MSE_SEARCH_MAX_SAMPLES, calibrate
from .fakequant import FLOAT_BITS, QuantWrapper, calibrate_model, observing_float_inputs, ptq, qat, quantize_model
from .kmeans import KMeansWrapper, kmeans_model, kmeans_quantize, share_weights
from .packing import (load_packed, pack_bits, pack_int4, packed_size_bytes, packed_state_dict, unpack_bits,
                      unpack_int4)
from .torch_ao import (Int8DynamicLinear, captured_warnings, quantize_dynamic_int8, torch_ao_dynamic,
                       torch_ao_static_fx)
from .weight_only import (WEIGHT_ONLY_BITS, WEIGHT_ONLY_METHODS, collect_hessians, gptq_quantize, int4_bytes,
                          int4_state, load_int4, output_error, quantize_weights, rtn_quantize)

__all__ = [
    "EPS", "MAX_BITS", "qrange", "compute_qparams", "quantize", "dequantize", "fake_quantize", "sqnr_db",
    "CALIBRATION_METHODS", "MSE_SEARCH_MAX_SAMPLES", "calibrate",
    "FLOAT_BITS", "QuantWrapper", "quantize_model", "observing_float_inputs", "calibrate_model", "ptq", "qat",
    "kmeans_quantize", "KMeansWrapper", "kmeans_model", "share_weights",
    "pack_bits", "unpack_bits", "pack_int4", "unpack_int4", "packed_state_dict", "packed_size_bytes", "load_packed",
    "WEIGHT_ONLY_BITS", "WEIGHT_ONLY_METHODS", "rtn_quantize", "gptq_quantize", "collect_hessians", "output_error",
    "quantize_weights", "int4_state", "int4_bytes", "load_int4",
    "captured_warnings", "torch_ao_dynamic", "torch_ao_static_fx", "Int8DynamicLinear", "quantize_dynamic_int8",
]
