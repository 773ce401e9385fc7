"""md4-jax: masked discrete diffusion (MD4) in JAX and Flax NNX."""

import os

# Paths go through etils.epath (gs:// by gcsfs). Before any etils call: epath would pick TensorFlow's gfile for
# gs:// if TensorFlow happens to be installed (we do not depend on it), and gcsfs's zonal-bucket probe asks a
# second, gRPC control-plane API on every new bucket, which an emulator does not serve and a plain bucket
# does not need. A user's own setting wins.
os.environ.setdefault("EPATH_USE_TF", "false")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
