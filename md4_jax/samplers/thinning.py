"""`exact` for per-token (state-dependent) schedules: the continuous-time reverse process by thinning.

A masked position unmasks to v at rate p_v(z, tau) r_v(tau) (r_v from its token's schedule), so its total
rate depends on which token it would become, and for a time-conditioned network also on tau between
events: the MD4 first-hitting draw does not apply. Every rate is below c / tau with c = max_v w_v (see
genmd4.TokenPoly.max_rate_times_t), so with n positions masked the next *proposal* comes at
s = t u^(1 / (n c)); the network is called at (z, s), one masked position is picked uniformly, and one
draw over (vocabulary + reject) with probabilities (p_v r_v(s) s / c, rest) either unmasks it or not.
This simulates the process exactly for any network (Lewis-Shedler thinning): a time-conditioned one is
called at every proposal. A network that ignores t gives the same prediction until z changes, so each row
keeps proposing on that one output until it has accepted an event, and the batch calls the network
once per event (NFE = the largest number of masked positions, as for MD4's exact). tokens_per_call =
k > 1 lets every row accept k events per call (an approximation, as for MD4's exact). Positions still
masked when a row's time falls below T_END are filled from the last prediction (the mass left there
is ~T_END^w).
"""

import jax
import jax.numpy as jnp

from md4_jax.samplers import draws

T_END = 1e-6


def exact(denoise, key, schedule, z_BxL, active_BxL, settings, vocab_size, time_dependent, order_BxL):
  k, (batch_size, length) = settings.tokens_per_call, z_BxL.shape
  bound = schedule.max_rate_times_t()  # c: every r_v(tau) <= c / tau
  reuse = k > 1 or (settings.cache and not time_dependent)
  clock_start = jnp.max(order_BxL)

  def masked(z_BxL):
    return (z_BxL == vocab_size) & active_BxL

  def propose(attempt_key, z_BxL, t_B, waiting_B):
    """The next proposal time of the waiting rows: s = t u^(1 / (n c)) (the others stay at t)."""
    n_B = masked(z_BxL).sum(-1)
    log_u_B = jnp.log(draws.uniform(attempt_key, (batch_size,)))
    return jnp.where(waiting_B & (n_B > 0), t_B * jnp.exp(log_u_B / (jnp.maximum(n_B, 1) * bound)), t_B)

  def decide(attempt_key, z_BxL, s_B, log_probs, waiting_B):
    """At s: one uniformly chosen masked position per waiting row; one draw over (tokens, reject)."""
    position_key, choice_key, fill_key = jax.random.split(attempt_key, 3)
    is_masked_BxL = masked(z_BxL)
    score_BxL = jnp.where(is_masked_BxL, draws.uniform(position_key, z_BxL.shape), -1.0)
    position_B = jnp.argmax(score_BxL, axis=-1)
    log_p_BxV = jnp.take_along_axis(log_probs, position_B[:, None, None], axis=1)[:, 0]
    log_accept_BxV = log_p_BxV + jnp.log(schedule.rate(s_B) * (s_B / bound)[:, None])  # accept <= 1
    log_reject_B = jnp.log1p(-jnp.minimum(jnp.sum(jnp.exp(log_accept_BxV), axis=-1), 1.0))
    choice_B = draws.categorical(choice_key, jnp.concatenate([log_accept_BxV, log_reject_B[:, None]], -1))
    accepted_B = waiting_B & jnp.any(is_masked_BxL, axis=-1) & (choice_B < vocab_size)
    new_z = jnp.where(jax.nn.one_hot(position_B, length, dtype=bool) & accepted_B[:, None], choice_B[:, None], z_BxL)
    # The end of time: whatever is still masked takes a draw from the last prediction.
    finished_B = waiting_B & (s_B < T_END)
    new_z = jnp.where(masked(new_z) & finished_B[:, None], draws.categorical(fill_key, log_probs), new_z)
    return new_z, accepted_B | finished_B

  def attempt_key(attempts):
    return jax.random.fold_in(key, attempts)

  def one_call(carry):
    z_BxL, t_B, attempts, nfe, order_BxL = carry
    old_z, waiting_B = z_BxL, jnp.any(masked(z_BxL), axis=-1)
    s_B = propose(attempt_key(attempts), z_BxL, t_B, waiting_B)
    log_probs = draws.process_logits(denoise(z_BxL, s_B).astype(jnp.float32), settings)
    z_BxL, accepted_B = decide(jax.random.fold_in(attempt_key(attempts), 1), z_BxL, s_B, log_probs, waiting_B)
    events_B, attempts = accepted_B.astype(jnp.int32), attempts + 1
    if reuse:  # the same output for more proposals, until every row has its k events (or is done)
      def more(inner):
        z_BxL, _, events_B, _ = inner
        return jnp.any((events_B < k) & jnp.any(masked(z_BxL), axis=-1))

      def again(inner):
        z_BxL, s_B, events_B, attempts = inner
        waiting_B = (events_B < k) & jnp.any(masked(z_BxL), axis=-1)
        s_B = propose(attempt_key(attempts), z_BxL, s_B, waiting_B)
        z_BxL, accepted_B = decide(jax.random.fold_in(attempt_key(attempts), 1), z_BxL, s_B, log_probs, waiting_B)
        return z_BxL, s_B, events_B + accepted_B.astype(jnp.int32), attempts + 1

      z_BxL, s_B, _, attempts = jax.lax.while_loop(more, again, (z_BxL, s_B, events_B, attempts))
    order_BxL = draws.record_order(order_BxL, old_z, z_BxL, clock_start + nfe + 1, vocab_size)
    return z_BxL, s_B, attempts, nfe + 1, order_BxL

  start = (z_BxL, jnp.ones((batch_size,)), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), order_BxL)
  z_BxL, _, _, nfe, order_BxL = jax.lax.while_loop(lambda carry: jnp.any(masked(carry[0])), one_call, start)
  return z_BxL, nfe, order_BxL
