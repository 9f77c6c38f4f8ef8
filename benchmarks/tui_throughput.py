"""Can the run screen keep up with a fast engine? 20,000 log lines/s and 2,000 step events/s.

    .venv/bin/python benchmarks/tui_throughput.py [--seconds 10] [--lines 20000] [--steps 2000]
        [--long-every 10]     # every 10th log line ~380 characters: the log pane wraps them

A separate writer process appends to events.jsonl and launch.log at those rates (as the engine
would); the dashboard (headless, 160x48, in this process) follows the run. Measured: the longest
time the UI's event loop was blocked (every frame, update and render runs on it, so this bounds
the worst frame), how many stalls were over 50 ms, the time per batched update, and how far
behind the screen was when the writer stopped. Then the chart alone with 1,000,000 points.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRITER = r"""
import json, sys, time
run_dir, seconds = sys.argv[1], float(sys.argv[2])
lines_per_s, steps_per_s = int(sys.argv[3]), int(sys.argv[4])
long_every = int(sys.argv[5])  # 0: no long lines
LONG = " ".join(f"detail{k}=value{k}" for k in range(22))  # ~380 characters with its prefix
tick = 0.01
ev = open(f"{run_dir}/events.jsonl", "a")
log = open(f"{run_dir}/launch.log", "a")
seq = 0
def emit(**e):
    global seq
    e = {"v": 1, "seq": seq, "t": round(time.time(), 3), **e}
    seq += 1
    ev.write(json.dumps(e) + "\n")
emit(type="run_started", run_id="bench", config={"steps": 10**6})
emit(type="stage", stage="train", state="running", elapsed=0.0)
step = 0
start = time.perf_counter()
n = 0
while time.perf_counter() - start < seconds:
    n += 1
    for _ in range(int(steps_per_s * tick)):
        step += 1
        loss = 3.0 / (1 + step / 5000)
        emit(type="step", step=step, loss=loss, kd=loss * 0.6, ce=loss * 1.2, lr=1e-4,
             grad_norm=0.5, tokens_per_s=123456.0, total_steps=10**6)
    out = []
    for i in range(int(lines_per_s * tick)):
        if long_every and i % long_every == 0:
            out.append(f"step {step} long line: {LONG}")
        elif i % 97 == 0:
            out.append(f"WARNING: something at step {step} (line {i})")
        elif i % 211 == 0:
            out.append(f"RuntimeError: planted error at step {step}")
        else:
            loss = 3.0 / (1 + step / 5000)
            out.append(f"step {step}/1000000 loss={loss:.4f} kd=0.1 ce=2.0 lr=1e-4 tok/s=123456")
    log.write("\n".join(out) + "\n")
    ev.flush(); log.flush()
    delay = start + n * tick - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
print(step, flush=True)
"""


async def measure(run_dir: Path, seconds: float, lines: int, steps: int,
                  long_every: int = 0) -> dict[str, float]:
    if os.environ.get("KDTUI_BENCH_NOGC"):
        import gc

        gc.disable()
    from kdtui.app import KDApp
    from kdtui.screens.run import RunScreen
    from kdtui.widgets.log_view import LogView
    from kdtui.widgets.loss_chart import LossChart

    app = KDApp(runs_dir=run_dir.parent, command="watch", watch_ref=str(run_dir))
    lags: list[float] = []
    cpu_lags: list[float] = []
    callbacks: list[tuple[float, float]] = []
    renders: list[float] = []
    original_render = LossChart.render

    def timed_render(self):  # the plotext draw of the chart, the costliest single render
        t = time.perf_counter()
        try:
            return original_render(self)
        finally:
            renders.append(time.perf_counter() - t)

    LossChart.render = timed_render
    replots = []
    original_replot = LossChart._replot
    LossChart._replot = lambda self: (replots.append(1), original_replot(self))[1]
    applies: list[float] = []
    async with app.run_test(size=(160, 48)) as pilot:
        while not isinstance(app.screen, RunScreen):
            await pilot.pause(0.05)
        screen = app.screen
        original = screen.apply_pending

        def timed_apply() -> None:
            t = time.perf_counter()
            original()
            applies.append(time.perf_counter() - t)

        screen.apply_timer.stop()
        screen.apply_timer = screen.set_interval(0.1, timed_apply)

        running = True

        async def monitor() -> None:
            # wall: how long the loop did not come back (includes the OS giving our CPU to
            # other processes on a shared machine); cpu: this thread's own work in that time
            while running:
                t, c = time.perf_counter(), time.thread_time()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - t - 0.005)
                cpu_lags.append(time.thread_time() - c)

        mon = asyncio.create_task(monitor())
        # every callback the UI loop runs (a frame, a batched update, a follower poll) timed
        # on its own: the longest of them is the worst frame
        original_run = asyncio.events.Handle._run

        def timed_run(handle) -> None:
            t, c = time.perf_counter(), time.thread_time()
            original_run(handle)
            callbacks.append((time.perf_counter() - t, time.thread_time() - c))
            if callbacks[-1][1] > 0.04 and os.environ.get("KDTUI_BENCH_DEBUG"):
                task = getattr(handle._callback, "__self__", None)
                coro = task.get_coro() if hasattr(task, "get_coro") else None
                owner = coro.cr_frame.f_locals.get("self") if coro and coro.cr_frame else None
                what = getattr(owner, "_callback", owner)
                name = getattr(coro, "__qualname__", handle)
                print(f"slow {callbacks[-1][1] * 1000:.0f}ms: {name} {what!r}"[:300],
                      file=sys.stderr)

        asyncio.events.Handle._run = timed_run
        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WRITER, str(run_dir), str(seconds), str(lines), str(steps),
            str(long_every),
            stdout=subprocess.PIPE)
        out, _ = await writer.communicate()
        total_steps = int(out.decode().split()[-1])
        total_lines = sum(1 for _ in open(run_dir / "launch.log", "rb"))
        log = screen.query_one(LogView)
        chart = screen.query_one(LossChart)
        behind_lines = total_lines - log.line_count
        behind_steps = total_steps - chart.point_count
        t_end = time.perf_counter()
        while log.line_count < total_lines or chart.point_count < total_steps:
            await pilot.pause(0.05)
            if time.perf_counter() - t_end > 60:
                break
        catch_up = time.perf_counter() - t_end
        running = False
        asyncio.events.Handle._run = original_run
        await mon
    lags.sort()
    cpu_lags.sort()
    walls = sorted(w for w, _ in callbacks)
    cpus = sorted(c for _, c in callbacks)
    return {
        "cb_count": len(callbacks), "cb_max_wall_ms": walls[-1] * 1000,
        "cb_max_cpu_ms": cpus[-1] * 1000, "cb_over_50ms_wall": sum(1 for w in walls if w > 0.05),
        "cb_over_50ms_cpu": sum(1 for c in cpus if c > 0.05),
        "max_cpu_ms": cpu_lags[-1] * 1000, "cpu_over_50ms": sum(1 for x in cpu_lags if x > 0.05),
        "p99_cpu_ms": cpu_lags[int(len(cpu_lags) * 0.99)] * 1000,
        "lines": total_lines, "steps": total_steps,
        "max_stall_ms": lags[-1] * 1000, "p99_stall_ms": lags[int(len(lags) * 0.99)] * 1000,
        "stalls_over_50ms": sum(1 for x in lags if x > 0.05),
        "apply_median_ms": statistics.median(applies) * 1000,
        "apply_max_ms": max(applies) * 1000,
        "behind_lines_at_end": behind_lines, "behind_steps_at_end": behind_steps,
        "catch_up_s": catch_up,
        "chart_render_max_ms": max(renders) * 1000, "chart_renders": len(renders),
        "replots": len(replots),
        "chart_render_median_ms": statistics.median(renders) * 1000,
    }


def chart_million() -> dict[str, float]:
    from kdtui.widgets.loss_chart import LossChart

    chart = LossChart()
    t = time.perf_counter()
    for step in range(1, 1_000_001):
        loss = 3.0 / (1 + step / 5000)
        chart.add_step(step, {"loss": loss, "kd": loss * 0.6, "ce": loss * 1.2})
    add = time.perf_counter() - t
    chart.plt.plotsize(100, 28)
    t = time.perf_counter()
    chart._replot()
    chart.plt.build()
    replot = time.perf_counter() - t
    xs, _ = chart.raw["loss"].points()
    return {"add_us_per_step": add / 1e6 * 1e6, "replot_ms": replot * 1000,
            "points_drawn": len(xs), "last_x": xs[-1]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--lines", type=int, default=20_000, help="log lines per second")
    p.add_argument("--steps", type=int, default=2_000, help="step events per second")
    p.add_argument("--long-every", type=int, default=0,
                   help="make every Nth log line ~380 characters (wrapped by the log pane)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KDTUI_CONFIG_DIR"] = tmp
        run_dir = Path(tmp) / "runs" / "bench"
        run_dir.mkdir(parents=True)
        r = asyncio.run(measure(run_dir, args.seconds, args.lines, args.steps, args.long_every))
    long = f" (every {args.long_every}th ~380 characters)" if args.long_every else ""
    print(f"follow {args.lines:,} lines/s{long} + {args.steps:,} step events/s for "
          f"{args.seconds:g}s: {r['lines']:,} lines, {r['steps']:,} steps")
    print(f"  event-loop stalls (wall): max {r['max_stall_ms']:.1f} ms, p99 "
          f"{r['p99_stall_ms']:.1f} ms, {r['stalls_over_50ms']} over 50 ms")
    print(f"  longest single UI callback (frame, update or poll) of {r['cb_count']:,}: "
          f"{r['cb_max_wall_ms']:.1f} ms wall / {r['cb_max_cpu_ms']:.1f} ms CPU; over 50 ms: "
          f"{r['cb_over_50ms_wall']} wall, {r['cb_over_50ms_cpu']} CPU")
    print(f"  UI thread's own work between two loop turns: max {r['max_cpu_ms']:.1f} ms, p99 "
          f"{r['p99_cpu_ms']:.1f} ms, {r['cpu_over_50ms']} over 50 ms")
    print(f"  batched update (every 100 ms): median {r['apply_median_ms']:.1f} ms, max "
          f"{r['apply_max_ms']:.1f} ms")
    print(f"  chart draws: {r['chart_renders']} ({r['replots']} replots), median "
          f"{r['chart_render_median_ms']:.1f} ms, max {r['chart_render_max_ms']:.1f} ms")
    print(f"  behind when the writer stopped: {r['behind_lines_at_end']:,} lines, "
          f"{r['behind_steps_at_end']:,} steps; caught up in {r['catch_up_s']:.2f} s")
    c = chart_million()
    print(f"chart, 1,000,000 steps: {c['add_us_per_step']:.1f} us per step added, replot "
          f"{c['replot_ms']:.1f} ms with {c['points_drawn']} points drawn (last x "
          f"{c['last_x']:,.0f})")


if __name__ == "__main__":
    main()
