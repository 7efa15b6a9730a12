"""The numpy dtype a GGUF reader's tensor views should have for each non-quantized GGML type
(BF16 as its raw uint16 bits): written out here, independently of smallmind.gguf's own table,
for the reader's and the writer's tests."""

import numpy as np

from smallmind.gguf import GGMLType

NP_DTYPES = {
    GGMLType.F32: np.float32,
    GGMLType.F16: np.float16,
    GGMLType.BF16: np.uint16,
    GGMLType.I8: np.int8,
    GGMLType.I16: np.int16,
    GGMLType.I32: np.int32,
    GGMLType.I64: np.int64,
    GGMLType.F64: np.float64,
}
