"""Quantization from scratch, one idea per module, and the production anchors next to it.

- ``affine``: integer grids, ``compute_qparams``, ``quantize``, ``dequantize``, ``fake_quantize``
  (straight-through gradient), ``sqnr_db``;
- ``calibration``: ``calibrate`` activation ranges (min-max, percentile, MSE), ``calibrate_weight``
  weight ranges per channel (also TWN's ternary rule), ``mse_curve``;
- ``fakequant``: ``QuantWrapper``, ``quantize_model``, ``calibrate_model``, ``ptq``, ``qat``;
- ``kmeans``: k-means weight sharing (``kmeans_quantize``, ``kmeans_model``, ``share_weights``);
- ``packing``: bit packing and the saved artifact (``packed_state_dict``, ``packed_size_bytes``,
  ``load_packed``), and onnxruntime's MatMulNBits 4-bit layout (``pack_matmulnbits``);
- ``weight_only``: group-wise RTN, GPTQ and AWQ for linear layers, the salient-channel ablation,
  calibration Hessians, GPTQ's sequential variant, exact bytes per layer, int4 artifact;
- ``mixed_precision``: a bit width per layer under a budget (per-layer sensitivity, greedy allocation);
- ``integer``: integer-only inference (zero-point expansion, int32 accumulation, int32 bias,
  requantization in float32 as onnxruntime does or with a fixed-point multiplier and shift,
  ReLU folded into the clamp): ``quantized_linear``, ``quantized_conv2d`` and their parts;
- ``torch_ao``: torch.ao dynamic/static int8 (the deprecated PyTorch anchors).

The real int8 deployment with onnxruntime lives in ``course_lib.deploy``. Everything public is
re-exported here, so ``from course_lib import quantization as Q; Q.ptq(...)`` works.
"""
from .affine import EPS, MAX_BITS, compute_qparams, dequantize, fake_quantize, qrange, quantize, sqnr_db
from .calibration import (CALIBRATION_METHODS, MSE_SEARCH_MAX_SAMPLES, TWN_THRESHOLD, WEIGHT_CALIBRATION_METHODS,
                          calibrate, calibrate_weight, mse_curve)
from .integer import (ACC_MAX_TERMS, fixed_point_multiplier, integer_conv2d, integer_linear, output_multiplier,
                      quantize_bias, quantized_conv2d, quantized_linear, requantize, requantize_fixed_point)
from .fakequant import FLOAT_BITS, QuantWrapper, calibrate_model, observing_float_inputs, ptq, qat, quantize_model
from .kmeans import KMeansWrapper, bake_shared, kmeans_model, kmeans_quantize, share_weights, shared_weights_model
from .mixed_precision import allocation_bytes, apply_bits, greedy_allocation, layer_sensitivity
from .packing import (MATMULNBITS_BLOCK_SIZES, check_block_size, load_packed, pack_bits, pack_int4,
                      pack_matmulnbits, packed_size_bytes, packed_state_dict, unpack_bits, unpack_int4,
                      unpack_matmulnbits)
from .torch_ao import (Int8DynamicLinear, captured_warnings, quantize_dynamic_int8, quantized_engine,
                       set_quantized_engine, torch_ao_dynamic, torch_ao_static_fx)
from .weight_only import (AWQ_GRID, WEIGHT_ONLY_BITS, WEIGHT_ONLY_METHODS, activation_magnitude, awq_quantize,
                          GPTQ_SETTINGS, choose_gptq_settings, collect_hessians, holdout_error_ratio,
                          forward_groups, gptq_quantize, int4_bytes, int4_state, layer_bytes,
                          load_int4, output_error, quantize_sequential, quantize_weights, replace_weights,
                          rtn_keep_channels, rtn_quantize, rtn_scaled_channels, salient_channels)

__all__ = [
    "EPS", "MAX_BITS", "qrange", "compute_qparams", "quantize", "dequantize", "fake_quantize", "sqnr_db",
    "CALIBRATION_METHODS", "MSE_SEARCH_MAX_SAMPLES", "calibrate",
    "WEIGHT_CALIBRATION_METHODS", "TWN_THRESHOLD", "calibrate_weight", "mse_curve",
    "ACC_MAX_TERMS", "integer_linear", "integer_conv2d", "quantize_bias", "output_multiplier", "requantize",
    "fixed_point_multiplier", "requantize_fixed_point", "quantized_linear", "quantized_conv2d",
    "FLOAT_BITS", "QuantWrapper", "quantize_model", "observing_float_inputs", "calibrate_model", "ptq", "qat",
    "kmeans_quantize", "KMeansWrapper", "kmeans_model", "share_weights", "shared_weights_model", "bake_shared",
    "pack_bits", "unpack_bits", "pack_int4", "unpack_int4", "packed_state_dict", "packed_size_bytes", "load_packed",
    "MATMULNBITS_BLOCK_SIZES", "check_block_size", "pack_matmulnbits", "unpack_matmulnbits",
    "WEIGHT_ONLY_BITS", "WEIGHT_ONLY_METHODS", "rtn_quantize", "gptq_quantize", "collect_hessians", "output_error",
    "holdout_error_ratio", "GPTQ_SETTINGS", "choose_gptq_settings",
    "replace_weights", "AWQ_GRID", "awq_quantize", "activation_magnitude", "salient_channels", "rtn_keep_channels", "rtn_scaled_channels",
    "quantize_weights", "quantize_sequential", "forward_groups", "layer_bytes", "int4_state", "int4_bytes", "load_int4",
    "apply_bits", "layer_sensitivity", "allocation_bytes", "greedy_allocation",
    "captured_warnings", "torch_ao_dynamic", "torch_ao_static_fx", "Int8DynamicLinear", "quantize_dynamic_int8",
    "quantized_engine", "set_quantized_engine",
]
