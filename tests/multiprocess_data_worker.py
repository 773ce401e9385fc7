"""One of two JAX processes (jax.distributed on localhost) reading its share of the training batches.

Usage: python tests/multiprocess_data_worker.py PROCESS_ID PORT OUT.json
Writes the row ids of its first 6 local batches, those of 3 batches after restoring the iterator
state saved after batch 3, and the sum of the assembled global batch.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id,
                           initialization_timeout=120)

import numpy as np  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from md4_jax.data import pipeline  # noqa: E402
from md4_jax.engine import sharding  # noqa: E402

SEQ_LEN, NUM_ROWS, GLOBAL_BATCH = 4, 10, 4
rows = pipeline.StreamRows(np.arange(NUM_ROWS * SEQ_LEN, dtype=np.int32), SEQ_LEN)
dataset = pipeline.train_dataset(rows, GLOBAL_BATCH, seed=3)
iterator = iter(dataset.to_iter_dataset())
batches = [next(iterator) for _ in range(3)]
state = iterator.get_state()
batches += [next(iterator) for _ in range(3)]
resumed = iter(dataset.to_iter_dataset())
resumed.set_state(state)
after_resume = [next(resumed) for _ in range(3)]
mesh = sharding.make_mesh(ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
global_tokens = sharding.global_batch(batches[0], mesh)["tokens"]
row_ids = lambda batch: (batch["tokens"][:, 0] // SEQ_LEN).tolist()  # noqa: E731
pathlib.Path(out).write_text(json.dumps({
    "process_index": jax.process_index(), "process_count": jax.process_count(),
    "batches": [row_ids(b) for b in batches], "after_resume": [row_ids(b) for b in after_resume],
    "global_shape": list(global_tokens.shape), "global_sum": int(jax.jit(jax.numpy.sum)(global_tokens))}))
jax.distributed.shutdown()
