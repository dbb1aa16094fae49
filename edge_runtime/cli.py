"""`dlink-edge`: run, profile and budget-check an exported model on the board.

Exit codes: 0 success; 1 a problem the message explains (bad model folder, checksum,
missing backend, unreadable source, ...); 2 bad command-line usage; 3 over budget (`check`);
4 a live (``--lsl``) stream stopped or vanished before ``--duration`` (decisions and the
summary are still printed).
Decisions go to stdout, one line each; tables and summaries to stderr unless asked for.
"""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edge_runtime.errors import EdgeError

EXIT_ERROR = 1
EXIT_OVER_BUDGET = 3
EXIT_STREAM_ENDED = 4

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode="markdown",  # None: a docstring's single line breaks reflow
                  help="Run an exported DLink model on a board: decisions, profiles, budgets.")


class BackendChoice(str, Enum):
    auto = "auto"
    onnx = "onnx"
    tflite = "tflite"


class PrecisionChoice(str, Enum):
    int8 = "int8"
    fp32 = "fp32"


class NonFiniteChoice(str, Enum):
    reject = "reject"
    hold = "hold"
    raise_ = "raise"


class LayoutChoice(str, Enum):
    interleaved = "interleaved"
    channel_major = "channel-major"


def _err_console() -> Console:
    return Console(stderr=True)


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    print(f"dlink-edge: error: {message}", file=sys.stderr)
    return typer.Exit(code)


def _note(message: str) -> None:
    """One line on stderr in DLink's words (never a library warning)."""
    print(f"dlink-edge: {message}", file=sys.stderr)


def _handles_errors(fn):
    """Our exceptions become one line on stderr and exit 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgeError as exc:
            raise _fail(str(exc)) from None
        except BrokenPipeError:  # e.g. `dlink-edge run ... | head`
            sys.stderr.close()
            raise typer.Exit(0) from None

    return wrapper


ModelDir = Annotated[Path, typer.Argument(
    help="Model folder written by dlink-export (manifest.json + files).")]
BackendOpt = Annotated[BackendChoice, typer.Option(
    "--backend", "-b", help="Inference backend; auto prefers ONNX Runtime.")]
PrecisionOpt = Annotated[PrecisionChoice, typer.Option(
    "--precision", "-p", help="Which artifact precision to load.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", "-t", min=1,
                                         help="Intra-op threads of the backend.")]
GateOpt = Annotated[bool, typer.Option(
    "--allow-failed-gate", help="Load an int8 artifact that failed the exporter's quality gate.")]
WindowsOpt = Annotated[int, typer.Option("--windows", "-n", min=1,
                                         help="Windows timed per measure.")]
WarmupOpt = Annotated[int, typer.Option("--warmup", min=0, help="Untimed inferences first.")]
ProfileEdfOpt = Annotated[Path | None, typer.Option(
    "--edf", help="Profile on this recording (default: seeded noise).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ReferenceOpt = Annotated[Path | None, typer.Option(
    "--reference", help="Also time this model folder (e.g. dlink/reference), interleaved with "
    "the model, same backend/precision/threads; adds reference and latency_ratio "
    "(model p50 / reference p50).")]


def _format_result(r, class_names) -> str:
    head = f"t={r.t_end:9.3f}s  #{r.index:<5d}"
    if not r.accepted:
        return f"{head} REJECTED  ({r.n_bad} non-finite or gap samples in window)"
    p = float(r.probabilities[class_names.index(r.label)])
    logits = ", ".join(f"{v:.4f}" for v in r.logits)
    flag = f"  repaired={r.n_bad}" if r.n_bad else ""
    return f"{head} {r.label:<12s} p={p:.3f}  logits=[{logits}]{flag}"


def _stats_table(stats, title: str) -> Table:
    table = Table(title=title, show_header=True)
    table.add_column("counter")
    table.add_column("value", justify="right")
    for key, value in stats.to_dict().items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    return table


@app.command()
@_handles_errors
def run(
    model_dir: ModelDir,
    edf: Annotated[Path | None, typer.Option(help="Replay this EDF recording.")] = None,
    stdin: Annotated[bool, typer.Option(
        "--stdin", help="Read raw little-endian float32 µV samples from stdin.")] = False,
    realtime: Annotated[bool, typer.Option(
        "--realtime", help="Replay the EDF at its real pace (else as fast as possible).")] = False,
    speed: Annotated[float, typer.Option(
        min=1e-3, help="Pace multiplier for --realtime (2 = twice real time).")] = 1.0,
    duration: Annotated[float | None, typer.Option(
        min=0.0, help="Replay only the first S seconds of the EDF (or of the LSL stream).")] = None,
    backend: BackendOpt = BackendChoice.auto,
    precision: PrecisionOpt = PrecisionChoice.int8,
    threads: ThreadsOpt = 1,
    hop: Annotated[int | None, typer.Option(
        min=1, help="Samples between decisions (default: the manifest's hop).")] = None,
    nonfinite: Annotated[NonFiniteChoice, typer.Option(
        help="NaN/Inf policy: reject the windows, hold (classify anyway), or raise.")
    ] = NonFiniteChoice.reject,
    resample: Annotated[bool, typer.Option(
        "--resample/--no-resample", help="Resample an EDF at another rate (else refuse it).")
    ] = True,
    sfreq: Annotated[float | None, typer.Option(
        help="Rate of the stdin samples in Hz (default: the manifest's); resampled causally.")
    ] = None,
    layout: Annotated[LayoutChoice, typer.Option(
        help="stdin layout: interleaved frames (c0 c1 ... per sample) or channel-major "
             "blocks of --block samples per channel.")] = LayoutChoice.interleaved,
    block: Annotated[int, typer.Option(
        min=1, help="stdin samples per channel per read (block length for channel-major).")
    ] = 50,
    chunk_s: Annotated[float, typer.Option(
        "--chunk-s", min=1e-3, help="EDF replay chunk length in seconds.")] = 0.25,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per decision.")
                     ] = False,
    allow_failed_gate: GateOpt = False,
    channel_map: Annotated[Path | None, typer.Option(
        "--channel-map", help="File mapping model channel names to recording labels "
        "('Fp1 = EEG FP1-A1' lines or a JSON object) for names the automatic rule misses.")
    ] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="A truncated EDF is an error (exit 1), not a note.")] = False,
    lsl: Annotated[str | None, typer.Option(
        "--lsl", help="Classify the live Lab Streaming Layer stream of this name "
        "(needs dlink[lsl]); --duration stops after that many seconds.")] = None,
    lsl_wait: Annotated[float, typer.Option(
        "--lsl-wait", min=0.1, help="Seconds to look for the LSL stream.")] = 10.0,
    lsl_timeout: Annotated[float, typer.Option(
        "--lsl-timeout", min=0.1, help="Seconds without a sample after which the LSL stream "
        "counts as stopped (exit 4).")] = 5.0,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Also print the summary (counters; LSL latency p50/p95, samples "
        "received/dropped, windows decided) as the last stdout line, {\"summary\": ...}.")
    ] = False,
) -> None:
    """Classify a recording or a live stream; print one line per decision."""
    from edge_runtime.errors import SourceError
    from edge_runtime.model import open_model
    from edge_runtime.sources import (
        read_channel_map,
        read_edf,
        read_raw_stream,
        replay,
        truncation_message,
    )
    from edge_runtime.stream import StreamingClassifier

    if sum([edf is not None, stdin, lsl is not None]) != 1:
        raise typer.BadParameter("give exactly one source: --edf FILE, --stdin or --lsl NAME.")
    model = open_model(model_dir, backend=backend.value, precision=precision.value,
                       threads=threads, allow_failed_gate=allow_failed_gate)
    spec = model.manifest.input
    ch_map = read_channel_map(channel_map) if channel_map is not None else None
    live = None
    if edf is not None:
        rec = read_edf(edf, spec.ch_names, spec.sfreq, resample=resample, channel_map=ch_map,
                       strict=strict)
        _note(f"channels: {rec.mapping}")
        if rec.missing_s > 0:
            _note(truncation_message(edf, rec.missing_s + rec.duration_s, rec.duration_s))
        if rec.flat:
            if strict:
                raise SourceError(f"{edf.name}: channel(s) {list(rec.flat)} are flat (constant) "
                                  "(--strict).")
            _note(f"channel(s) {list(rec.flat)} are flat (constant) in {edf.name}: a dead "
                  "or unplugged electrode?")
        data = rec.data if duration is None else rec.data[:, : int(duration * spec.sfreq)]
        chunks = replay(data, spec.sfreq, chunk_s=chunk_s, realtime=realtime, speed=speed)
        device_sfreq = None
    elif lsl is not None:
        from edge_runtime.lsl import LSLSource

        live = LSLSource(lsl, spec.ch_names, spec.sfreq, channel_map=ch_map, resample=resample,
                         resolve_s=lsl_wait, stall_s=lsl_timeout)
        _note(f"LSL stream {lsl!r} at {live.sfreq:g} Hz ({live.units_note}); channels: "
              f"{live.match.describe()}")
        chunks = live.chunks(duration)
        device_sfreq = live.sfreq
    else:
        chunks = read_raw_stream(sys.stdin.buffer, spec.n_chans, layout=layout.value,
                                 block=block)
        device_sfreq = sfreq
    clf = StreamingClassifier(model, hop=hop, device_sfreq=device_sfreq,
                              nonfinite=nonfinite.value)
    names = list(model.class_names)
    ended = None
    try:
        for chunk in _decisions(chunks, clf, live, spec.sfreq):
            for r in chunk:
                line = json.dumps(r.to_dict()) if jsonl else _format_result(r, names)
                print(line, flush=realtime or stdin or live is not None)
    except KeyboardInterrupt:
        _err_console().print(_stats_table(clf.stats, "stream (interrupted)"))
        raise typer.Exit(130) from None
    except EdgeError as exc:
        if live is None or not live.stats.end_reason:
            raise
        ended = exc
    finally:
        sys.stdout.flush()
        if live is not None:
            live.close()
    if ended is None and clf.stats.windows_decided == 0:
        got = clf.stats.samples_received
        raise SourceError(
            "the input held no samples." if got == 0 else
            f"the input ended after {got} samples, before the first window of "
            f"{spec.n_times} samples ({spec.window_s:g} s at {spec.sfreq:g} Hz) was complete; "
            "no decision.")
    summary = clf.stats.to_dict()
    if live is not None:
        summary["lsl"] = live.stats.to_dict(clf.stats.windows_decided)
    title = f"{model.artifact.path} on {model.backend_name}"
    _err_console().print(_summary_table(summary, title))
    if as_json:
        print(json.dumps({"summary": summary}), flush=True)
    if ended is not None:
        raise _fail(str(ended), EXIT_STREAM_ENDED)


def _decisions(chunks, clf, live, model_sfreq):
    """Yield the results of each pushed chunk; live chunks bring gaps and latencies."""
    for chunk in chunks:
        if live is None:
            yield clf.push(chunk)
            continue
        results = (clf.push_gap(chunk.gap) if chunk.gap else []) + clf.push(chunk.samples)
        for r in results:
            live.latency(r.stop, model_sfreq)
        yield results


def _summary_table(summary: dict, title: str) -> Table:
    table = Table(title=title, show_header=True)
    table.add_column("counter")
    table.add_column("value", justify="right")
    flat = {k: v for k, v in summary.items() if k != "lsl"}
    flat.update({f"lsl {k}": v for k, v in summary.get("lsl", {}).items()})
    for key, value in flat.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    return table


def _profile(model_dir, backend, precision, threads, windows, warmup, edf, allow_failed_gate,
             reference=None, cold_runs=0):
    from edge_runtime.manifest import load_manifest
    from edge_runtime.profiling import profile_fresh

    load_manifest(model_dir)  # a bad folder fails here, before any process is started
    return profile_fresh(model_dir, backend=backend.value, precision=precision.value,
                         threads=threads, n_windows=windows, warmup=warmup, edf=edf,
                         allow_failed_gate=allow_failed_gate, reference=reference,
                         cold_runs=cold_runs)


def _profile_table(rep) -> Table:
    table = Table(title=f"{rep.artifact} on {rep.backend} ({rep.threads} thread(s), "
                        f"{rep.machine})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("model size", f"{rep.model_bytes:,} bytes"),
        ("load + verify", f"{rep.load_s * 1e3:.1f} ms"),
        ("first inference", f"{rep.first_inference_ms:.2f} ms"),
        *[(f"model latency {k}", f"{rep.latency_ms[k]:.3f} ms") for k in ("p50", "p95", "p99")],
        *[(f"decision latency {k}", f"{rep.decision_ms[k]:.3f} ms")
          for k in ("p50", "p95", "p99")],
        ("throughput (streaming)", f"{rep.throughput_wps:.1f} windows/s"),
        ("model time / window", f"{rep.model_ms_per_window:.3f} ms"),
        ("buffer + preprocessing / window", f"{rep.overhead_ms_per_window:.3f} ms"),
        ("decision / model time (p50)", f"{rep.decision_ratio:.3f}"),
        ("peak RSS", f"{rep.peak_rss_mb:.1f} MB"),
        ("windows timed (after warm-up)", f"{rep.n_windows} (+{rep.warmup})"),
    ]
    if rep.cold_start is not None:
        cs = rep.cold_start
        rows += [("cold start: process start -> first decision (median)",
                  f"{cs['median_s'] * 1e3:.0f} ms"),
                 ("  of which imports (fresh process)", f"{cs['import_s'] * 1e3:.0f} ms")]
        if cs["cpu_median_s"] is not None:
            rows.append(("  CPU time to first decision (median)",
                         f"{cs['cpu_median_s'] * 1e3:.0f} ms"))
        if cs["run_peak_rss_mb"] is not None:
            rows.append(("  peak RSS of `run` at its first decision",
                         f"{cs['run_peak_rss_mb']:.1f} MB"))
    if rep.reference is not None:
        ref = rep.reference
        rows += [(f"reference {ref['name']} latency p50", f"{ref['p50_ms']:.3f} ms"),
                 ("latency ratio (model p50 / reference p50)", f"{rep.latency_ratio:.3f}")]
    for k, v in rows:
        table.add_row(k, v)
    return table


@app.command()
@_handles_errors
def profile(
    model_dir: ModelDir,
    backend: BackendOpt = BackendChoice.auto,
    precision: PrecisionOpt = PrecisionChoice.int8,
    threads: ThreadsOpt = 1,
    windows: WindowsOpt = 200,
    warmup: WarmupOpt = 20,
    edf: ProfileEdfOpt = None,
    as_json: JsonOpt = False,
    allow_failed_gate: GateOpt = False,
    reference: ReferenceOpt = None,
    cold_runs: Annotated[int, typer.Option(
        "--cold-runs", min=0, help="Fresh `dlink-edge run --stdin` processes timed from "
        "process start to first decision (0: skip).")] = 3,
) -> None:
    """Load time, first inference, latency percentiles, decision/model ratio, peak RSS, cold
    start."""
    rep = _profile(model_dir, backend, precision, threads, windows, warmup, edf,
                   allow_failed_gate, reference, cold_runs)
    if as_json:
        print(json.dumps(rep.to_dict(), indent=2))
    else:
        Console().print(_profile_table(rep))


def _check_mcu(model_dir, bud, as_json: bool) -> None:
    """`check` against an MCU budget: sizes from the manifest, latency only as an estimate."""
    from edge_runtime.budgets import check_mcu
    from edge_runtime.mcu import estimate_latency_ms, mcu_footprint

    fp = mcu_footprint(model_dir)
    rows = check_mcu(fp, bud)
    ok = all(r.ok for r in rows)
    est = estimate_latency_ms(fp, bud.macs_per_s)
    estimate = None if est is None else {
        "latency_ms": est, "measured": False,
        "basis": f"{fp.macs:,} MACs / {bud.macs_per_s:,.0f} MAC/s stated in {bud.name}.toml"}
    if as_json:
        print(json.dumps({"budget": bud.__dict__, "ok": ok,
                          "rows": [dict(r.__dict__, ok=r.ok) for r in rows],
                          "footprint": fp.to_dict(), "estimate": estimate}, indent=2))
    else:
        table = Table(title=f"model_data.cc on TensorFlow Lite Micro vs budget {bud.name} "
                            f"({bud.board})")
        for col in ("metric", "needed", "budget", "verdict"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for r in rows:
            table.add_row(r.metric, f"{r.measured:,.0f} bytes", f"{r.limit:,.0f} bytes",
                          "[green]ok[/green]" if r.ok else "[red]OVER[/red]")
        Console().print(table)
        Console().print(f"arena {fp.arena_bytes:,} + input buffer {fp.input_buffer_bytes:,} + "
                        f"model {fp.model_bytes:,} bytes (arena from {fp.runtime})")
        if estimate is not None:
            Console().print(f"latency ESTIMATE (not measured): {est:.1f} ms per window "
                            f"({estimate['basis']})")
    if not ok:
        over = ", ".join(r.metric for r in rows if not r.ok)
        print(f"dlink-edge: over budget {bud.name}: {over}", file=sys.stderr)
        raise typer.Exit(EXIT_OVER_BUDGET)


@app.command()
@_handles_errors
def check(
    model_dir: ModelDir,
    budget: Annotated[str, typer.Option(
        help="Shipped budget name (see `dlink-edge budgets`) or a TOML file.")],
    backend: BackendOpt = BackendChoice.auto,
    precision: PrecisionOpt = PrecisionChoice.int8,
    threads: ThreadsOpt = 1,
    windows: WindowsOpt = 200,
    warmup: WarmupOpt = 20,
    edf: ProfileEdfOpt = None,
    as_json: JsonOpt = False,
    allow_failed_gate: GateOpt = False,
    reference: ReferenceOpt = None,
) -> None:
    """Profile, then exit 0 within the budget or 3 over it, with measured vs budget.

    An MCU budget (``kind = "mcu"``, e.g. nrf52840) is checked without profiling: the
    exporter's TFLite Micro arena + input buffer + model bytes against RAM and flash."""
    from edge_runtime.budgets import check_budget, load_budget

    bud = load_budget(budget)
    if getattr(bud, "kind", "board") == "mcu":
        return _check_mcu(model_dir, bud, as_json)
    rep = _profile(model_dir, backend, precision, threads, windows, warmup, edf,
                   allow_failed_gate, reference)
    rows = check_budget(rep, bud)
    ok = all(r.ok for r in rows)
    if as_json:
        print(json.dumps({"budget": bud.__dict__, "ok": ok,
                          "rows": [dict(r.__dict__, ok=r.ok) for r in rows],
                          "latency_ratio": rep.latency_ratio,
                          "profile": rep.to_dict()}, indent=2))
    else:
        table = Table(title=f"{rep.artifact} on {rep.backend} vs budget {bud.name} "
                            f"({bud.board})")
        for col in ("metric", "measured", "budget", "verdict"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for r in rows:
            fmt = "{:,.0f}" if r.unit == "bytes" else "{:.2f}"
            table.add_row(r.metric, f"{fmt.format(r.measured)} {r.unit}",
                          f"{fmt.format(r.limit)} {r.unit}",
                          "[green]ok[/green]" if r.ok else "[red]OVER[/red]")
        Console().print(table)
        if rep.latency_ratio is not None:
            Console().print(f"latency ratio vs reference {rep.reference['name']}: "
                            f"{rep.latency_ratio:.3f} (model p50 / reference p50)")
    if not ok:
        over = ", ".join(r.metric for r in rows if not r.ok)
        print(f"dlink-edge: over budget {bud.name}: {over}", file=sys.stderr)
        raise typer.Exit(EXIT_OVER_BUDGET)


@app.command()
@_handles_errors
def budgets() -> None:
    """List the board budgets shipped with the runtime."""
    from edge_runtime.budgets import list_budgets

    table = Table(title="shipped budgets (edge_runtime/budgets/*.toml)")
    table.add_column("name", no_wrap=True)
    table.add_column("board")
    for col in ("latency p95", "RSS / RAM", "model / flash"):
        table.add_column(col, justify="right", no_wrap=True)
    for b in list_budgets():
        if getattr(b, "kind", "board") == "mcu":  # arena + input buffer, model bytes
            table.add_row(b.name, b.board, "(MCU)", f"{b.ram_bytes:,} bytes",
                          f"{b.flash_bytes:,} bytes")
            continue
        table.add_row(b.name, b.board, f"{b.latency_p95_ms:g} ms", f"{b.peak_rss_mb:g} MB",
                      f"{b.model_bytes:,} bytes")
    Console().print(table)


@app.command()
@_handles_errors
def info(model_dir: ModelDir) -> None:
    """Verify a model folder and describe its input, output and artifacts."""
    from edge_runtime.backends import available_backends
    from edge_runtime.manifest import load_manifest

    m = load_manifest(model_dir)
    spec = m.input
    console = Console()
    console.print(f"[bold]{m.model.get('name', '?')}[/bold]  {spec.n_chans} channels x "
                  f"{spec.n_times} samples @ {spec.sfreq:g} Hz (window {spec.window_s:g} s, "
                  f"hop {spec.hop}), classes {', '.join(m.output.class_names)}")
    console.print(f"channels: {' '.join(spec.ch_names)}")
    console.print(f"preprocessing: {', '.join(op['op'] for op in spec.preprocessing) or 'none'}")
    console.print(f"backends installed here: {', '.join(available_backends()) or 'none'}")
    table = Table(title="artifacts (sha256 verified)")
    for col in ("path", "format", "precision", "bytes", "gate"):
        table.add_column(col)
    for a in m.artifacts:
        gate = "" if a.gate is None else ("passed" if a.gate.get("passed") else "FAILED")
        table.add_row(a.path, a.format, a.precision, f"{m.path_of(a).stat().st_size:,}", gate)
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
