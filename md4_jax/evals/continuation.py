"""A continuation's log-likelihood given its context, and generation from a context, for the evaluation harness
(run/harness.py): exact for AR; for MD4 and BD3 a Monte Carlo estimate of the bound on -log p(continuation |
context), K draws at stratified times with its standard error (LLaDA's estimator is the masked-count form of the
same bound); each objective says how (`Objective.conditional_loss`, `greedy_tokens`).

Every request shares the draws (common random numbers): window j of any request uses the same K times and the same
mask uniforms, so two candidate continuations of one context are compared on the same draws, and the noise of
their difference is far below that of either estimate (multiple-choice accuracy depends on the difference).

A request's tokens are cut into windows of the run's data.seq_len: each window scores up to seq_len tokens with as
many tokens before them as fit as clean context; a window shorter than seq_len has the rest of its row unknown
(mask ids: the model's own "text continues here"; AR's causal and BD3's block-causal attention never look there).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from md4_jax import models
from md4_jax.core import diffusion
from md4_jax.engine import generate, sharding


class Rows(NamedTuple):
  """The windows of a list of requests, one row each."""
  tokens_NxL: np.ndarray  # int32; unknown positions hold 0 (never read as text)
  scored_NxL: np.ndarray  # bool: the continuation's tokens this window scores
  unknown_NxL: np.ndarray  # bool: past the request's end
  request_N: np.ndarray  # which request each window belongs to
  rank_N: np.ndarray  # the window's place in its request (0, 1, ...): which draws it takes


class Score(NamedTuple):
  nats: float  # -log p(continuation | context), or the bound's estimate of it
  stderr: float  # the estimate's standard error over its draws (0 for an exact likelihood)
  greedy: bool  # whether the one-call greedy decode writes the continuation (AR: greedy decoding)


def windows(requests, length: int) -> Rows:
  """requests: (context ids, continuation ids) pairs (a continuation of at least one token)."""
  rows = []
  for index, (context, continuation) in enumerate(requests):
    rank = 0
    tokens = np.concatenate([np.asarray(context, np.int32), np.asarray(continuation, np.int32)])
    start, end = len(context), len(tokens)
    while start < end:
      stop = min(end, start + length)
      first = max(0, stop - length)
      row = np.zeros(length, np.int32)
      row[:stop - first] = tokens[first:stop]
      position = np.arange(length) + first
      rows.append((row, (position >= start) & (position < stop), position >= stop, index, rank))
      start, rank = stop, rank + 1
  tokens_N, scored_N, unknown_N, request_N, rank_N = zip(*rows)
  return Rows(np.stack(tokens_N), np.stack(scored_N), np.stack(unknown_N), np.asarray(request_N), np.asarray(rank_N))


class Scorer:
  """Scores requests and draws continuations with one run's model: `experiment` and its restored `params`."""

  def __init__(self, experiment, params, *, draws: int = 8, batch_size: int = 16, seed: int = 0):
    self.experiment, self.params, self.batch_size = experiment, params, batch_size
    self.draws = 1 if experiment.objective.exact else draws
    self.key = jax.random.key(seed)
    objective, graphdef = experiment.objective, experiment.graphdef

    def score(params, tokens_BxL, scored_BxL, unknown_BxL, rank_B, key):
      """([K, B] nats, one per draw, [B, L] greedy tokens)."""
      net = models.Network(nnx.merge(graphdef, params))

      def one_row(tokens_L, scored_L, unknown_L, rank):
        """[K] nats: the row's draws, from its rank's key alone (a batch of one, so every row draws alike)."""
        row_key = jax.random.fold_in(key, rank)
        t_K = diffusion.stratified_times(row_key, 1, self.draws)[:, 0]

        def one_draw(_, draw):
          index, t = draw
          return None, objective.conditional_loss(net, tokens_L[None], jax.random.fold_in(row_key, index),
                                                  t_B=t[None], scored_BxL=scored_L[None],
                                                  unknown_BxL=unknown_L[None])[0]

        return jax.lax.scan(one_draw, None, (jnp.arange(self.draws), t_K))[1]

      loss_BxK = jax.vmap(one_row)(tokens_BxL, scored_BxL, unknown_BxL, rank_B)
      return loss_BxK.T, objective.greedy_tokens(net, tokens_BxL, scored_BxL=scored_BxL, unknown_BxL=unknown_BxL)

    self._score = jax.jit(score, out_shardings=sharding.replicated(experiment.mesh))

  def score(self, requests) -> list[Score]:
    """One Score per (context ids, continuation ids) request."""
    rows = windows(requests, self.experiment.modality.length)
    losses, greedy = [], []
    for first in range(0, len(rows.request_N), self.batch_size):
      batch = [self._padded(x[first:first + self.batch_size]) for x in (*rows[:3], rows.rank_N)]
      loss_KxB, greedy_BxL = jax.device_get(self._score(self.params, *batch, self.key))
      count = min(self.batch_size, len(rows.request_N) - first)
      losses.append(np.asarray(loss_KxB)[:, :count])
      greedy.append(np.asarray(greedy_BxL)[:count])
    loss_KxN, greedy_NxL = np.concatenate(losses, axis=1), np.concatenate(greedy)
    mean_N = loss_KxN.mean(axis=0)
    variance_N = loss_KxN.var(axis=0, ddof=1) / self.draws if self.draws > 1 else np.zeros_like(mean_N)
    right_N = np.all((greedy_NxL == rows.tokens_NxL) | ~rows.scored_NxL, axis=1)
    scores = []
    for index in range(len(requests)):
      mine = rows.request_N == index
      scores.append(Score(float(mean_N[mine].sum()), float(np.sqrt(variance_N[mine].sum())),
                          bool(right_N[mine].all())))
    return scores

  def _padded(self, x_BxL: np.ndarray) -> np.ndarray:
    """A batch of batch_size rows (the last repeated): one compiled shape."""
    missing = self.batch_size - len(x_BxL)
    return np.concatenate([x_BxL, np.repeat(x_BxL[-1:], missing, axis=0)]) if missing else x_BxL

  def generate(self, contexts, max_tokens: int) -> list[np.ndarray]:
    """Each context's next max_tokens tokens (at most data.seq_len; the context cut from the left to fit beside
    them), drawn by the run's sampler (its caches included) in batches of batch_size."""
    length, mask_id = self.experiment.modality.length, self.experiment.vocab_size
    count = min(max_tokens, length)
    starts = np.full((len(contexts), length), mask_id, np.int32)
    kept = []
    for row, context in enumerate(contexts):
      context = np.asarray(context, np.int32)[max(0, len(context) - (length - count)):]
      starts[row, :len(context)] = context
      kept.append(len(context))
    drawn = []
    for first in range(0, len(contexts), self.batch_size):
      batch = self._padded(starts[first:first + self.batch_size])
      tokens_BxL = generate.draw_samples(self.experiment, self.params, jax.random.fold_in(self.key, first), batch,
                                         compile_first=False).tokens
      drawn.extend(tokens_BxL[:min(self.batch_size, len(contexts) - first)])
    return [tokens[start:start + count] for tokens, start in zip(drawn, kept)]
