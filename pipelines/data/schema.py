"""The parquet data contract: one row per ECG, the columns every later stage reads.

| column     | arrow type                                  | meaning                                       |
| ---------- | ------------------------------------------- | --------------------------------------------- |
| ecg_id     | string                                      | source-qualified id, e.g. `ptbxl/00001`       |
| patient_id | string, nullable                            | for patient-disjoint splits                   |
| signal     | fixed_shape_tensor<float16>[12, T]          | leads I II III aVR aVL aVF V1–V6              |
| lead_mask  | fixed_size_list<bool>[12]                   | which leads are real (others zero-filled)     |
| fs         | int32                                       | sampling rate after resampling                |
| report     | string                                      | cleaned report text                           |
| labels     | list<string>                                | the source's label codes                      |
| split      | string                                      | train / val / test, patient-disjoint          |
| source     | string                                      | ptbxl, mimic-iv-ecg, wfdb, synthetic, …       |
| flags      | list<string>                                | repairs applied (interpolation, masked leads) |

`signal` is Arrow's canonical fixed-shape tensor extension: plain pyarrow reads it as
`[n, 12, T]` via `to_numpy_ndarray()`, and Ray Data yields `[B, 12, T]` float16 batches.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.data.leads import STANDARD_LEADS

N_LEADS = len(STANDARD_LEADS)


def signal_type(n_samples: int) -> pa.DataType:
    return pa.fixed_shape_tensor(pa.float16(), [N_LEADS, n_samples])


def shard_schema(n_samples: int, fs: int) -> pa.Schema:
    return pa.schema(
        [
            ("ecg_id", pa.string()),
            ("patient_id", pa.string()),
            ("signal", signal_type(n_samples)),
            ("lead_mask", pa.list_(pa.bool_(), N_LEADS)),
            ("fs", pa.int32()),
            ("report", pa.string()),
            ("labels", pa.list_(pa.string())),
            ("split", pa.string()),
            ("source", pa.string()),
            ("flags", pa.list_(pa.string())),
        ],
        metadata={"leads": ",".join(STANDARD_LEADS), "fs": str(fs), "samples": str(n_samples)},
    )


def signal_array(signals: np.ndarray) -> pa.ExtensionArray:
    """float16 [n, 12, T] → the `signal` column."""
    n, leads, samples = signals.shape
    storage = pa.FixedSizeListArray.from_arrays(pa.array(signals.reshape(-1), pa.float16()), leads * samples)
    return pa.ExtensionArray.from_storage(signal_type(samples), storage)


def lead_mask_array(masks: np.ndarray) -> pa.FixedSizeListArray:
    """bool [n, 12] → the `lead_mask` column."""
    return pa.FixedSizeListArray.from_arrays(pa.array(masks.reshape(-1), pa.bool_()), N_LEADS)


def signals_of(table: pa.Table) -> np.ndarray:
    """The `signal` column of a shard table as float16 [n, 12, T]."""
    return table["signal"].combine_chunks().to_numpy_ndarray()


def lead_masks_of(table: pa.Table) -> np.ndarray:
    """The `lead_mask` column of a shard table as bool [n, 12]."""
    column = table["lead_mask"].combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), N_LEADS)
