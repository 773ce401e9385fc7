"""A jax.profiler Perfetto trace (its JSON) -> the table of kernels by device time per step, which a run's
`train.profile_steps` window (engine/profiling.py) and benchmarks/gpu_profile.py write. Plain Python, no jax:
tests read traces with it on any machine."""

import collections

SUMMARY_THREADS = ("XLA Modules", "XLA Ops", "Steps", "Framework")


def kernel_events(trace: dict) -> list[dict]:
  """The trace's kernel executions: 'X' events on device streams (GPU/TPU), else on XLA's host threads (CPU)."""
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
  devices = {pid for pid, name in processes.items() if "/device:" in name and "CPU" not in name}
  if devices:
    on_device = [e for e in complete if e["pid"] in devices]
    streams = [e for e in on_device if threads.get((e["pid"], e.get("tid")), "").startswith("Stream")]
    return streams or [e for e in on_device
                       if not threads.get((e["pid"], e.get("tid")), "").startswith(SUMMARY_THREADS)]
  return [e for e in complete if threads.get((e["pid"], e.get("tid")), "").startswith("tf_XLA")]


def tracks(trace: dict) -> dict:
  """{"process / thread": complete events}: what the trace holds, for a layout kernel_events does not know."""
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events if e.get("ph") == "M" and "tid" in e
           and e.get("name") == "thread_name"}
  processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
  counts = collections.Counter(f"{processes.get(e['pid'], e['pid'])} / {names.get((e['pid'], e.get('tid')), '?')}"
                               for e in events if e.get("ph") == "X")
  return dict(counts.most_common(40))


def kernel_table(events: list[dict], steps: int, top: int) -> dict:
  """{"device_ms_per_step", "kernels": [{name, ms_per_step, calls_per_step, share}, ...]} (the `top` slowest)."""
  total, calls = collections.Counter(), collections.Counter()
  for event in events:
    total[event["name"]] += event["dur"]  # microseconds
    calls[event["name"]] += 1
  all_us = sum(total.values())
  kernels = [{"name": name, "ms_per_step": round(us / steps / 1e3, 4), "calls_per_step": calls[name] / steps,
              "share": round(us / all_us, 4) if all_us else 0.0} for name, us in total.most_common(top)]
  return {"device_ms_per_step": round(all_us / steps / 1e3, 3), "kernels": kernels,
          "top_share": round(sum(k["share"] for k in kernels), 4)}


def markdown(table: dict, title: str) -> str:
  lines = [f"# {title}", "", f"Device time per step (all kernels): {table['device_ms_per_step']} ms; the "
           f"{len(table['kernels'])} below: {100 * table['top_share']:.1f}% of it.", "",
           "| # | kernel | ms / step | calls / step | share |", "|---|---|---|---|---|"]
  for rank, kernel in enumerate(table["kernels"], 1):
    name = kernel["name"].replace("|", "\\|")
    name = name if len(name) <= 90 else name[:87] + "..."
    lines.append(f"| {rank} | `{name}` | {kernel['ms_per_step']:.3f} | {kernel['calls_per_step']:g} | "
                 f"{100 * kernel['share']:.1f}% |")
  return "\n".join(lines) + "\n"
