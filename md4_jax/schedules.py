"""The library API (docs/design.md, CONTRACT): `md4_jax.schedules.get_schedule(name)`; the schedules live in
md4_jax/core/schedules.py."""

from md4_jax.core.schedules import *  # noqa: F401,F403
from md4_jax.core.schedules import EPS, Schedule, get_schedule  # noqa: F401 (named: what scripts use)
