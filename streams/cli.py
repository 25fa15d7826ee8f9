"""The ``moatwatch`` command line.

Every command reads the same frozen settings (``MOATWATCH_*`` variables, listed by ``--help``);
a bad flag or variable exits with status 2 and a message that says what to fix.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

__all__ = ["main", "build_parser"]


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        # no "(default: ...)" where it says nothing: a help that names its default already
        # ("default: MOATWATCH_..."), a required option, an on/off flag, no default at all
        if (action.help and "default:" in action.help or action.required
                or action.default is None
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return action.help
        return super()._get_help_string(action)


def _number(kind: type, minimum: float, *, inclusive: bool) -> Any:
    """An argparse ``type`` that parses ``kind`` and says what to fix when out of range."""
    noun = "a whole number" if kind is int else "a number"
    bound = f"{minimum:g} or more" if inclusive else f"greater than {minimum:g}"

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if v < minimum or (v == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
        return v

    return parse


_positive_float = _number(float, 0, inclusive=False)
_nonneg_float = _number(float, 0, inclusive=True)
_positive_int = _number(int, 1, inclusive=True)
_nonneg_int = _number(int, 0, inclusive=True)


def build_parser() -> argparse.ArgumentParser:
    from streams.settings import describe

    env_help = describe()
    p = argparse.ArgumentParser(
        prog="moatwatch",
        description="Real-time detection of LLM distillation on an API query stream.",
        epilog=env_help, formatter_class=_Formatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, epilog=env_help,
                              formatter_class=_Formatter)

    w = add("worker", "run the detector on Kafka (Faust worker; MOATWATCH_* settings)")
    w.add_argument("--loglevel", default=None, help="override MOATWATCH_LOG_LEVEL")

    r = add("replay", "run the detector over a JSON-lines file in process, in event time")
    r.add_argument("events", metavar="EVENTS.jsonl[.gz]", help="QueryEvent v1, one JSON object per line")
    r.add_argument("--out", required=True, metavar="ALERTS.jsonl", help="where to write alerts")
    r.add_argument("--dlq", default=None, metavar="DLQ.jsonl",
                   help="dead letters (default: <out>.dlq.jsonl)")
    r.add_argument("--partitions", type=_positive_int, default=1,
                   help="partition count of the live input topic to mirror (per-partition population models)")
    r.add_argument("--feedback", default=None, metavar="FEEDBACK.jsonl",
                   help="analyst feedback to apply (default: MOATWATCH_FEEDBACK_FILE)")
    r.add_argument("--detector-config", default=None, metavar="CONFIG.json",
                   help="detector hyperparameters to change, a JSON object of "
                        "models.engine.DetectorConfig fields (default: MOATWATCH_DETECTOR_CONFIG)")
    r.add_argument("--no-campaigns", action="store_true", help="per-key detection only")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

    pr = add("produce", "send a JSON-lines file of events to the input topic, keyed by api_key")
    pr.add_argument("events", metavar="EVENTS.jsonl[.gz]")
    pr.add_argument("--rate", type=_nonneg_float, default=0.0, help="events/s, 0 = as fast as possible")
    pr.add_argument("--restamp", action="store_true", help="set each event's ts to the send time")
    pr.add_argument("--topic", default=None, help="override MOATWATCH_EVENTS_TOPIC")
    pr.add_argument("--limit", type=_nonneg_int, default=0, help="stop after N events (0 = all)")

    a = add("alerts", "print alerts from the alerts topic as JSON lines")
    a.add_argument("--from-beginning", action="store_true")
    a.add_argument("--max", type=_nonneg_int, default=0, help="exit after N alerts (0 = no limit)")
    a.add_argument("--timeout", type=_positive_float, default=30.0,
                   help="exit after S seconds without an alert")
    a.add_argument("--pretty", action="store_true", help="one readable line per alert instead of JSON")

    sm = add("simulate", "generate labelled QueryEvent v1 traffic with injected distillation attacks")
    sm.add_argument("--hours", type=_positive_float, default=12.0)
    sm.add_argument("--seed", type=int, default=1, help="simulation seed (the same seed, the same traffic)")
    sm.add_argument("--out", required=True, metavar="EVENTS.jsonl")
    sm.add_argument("--truth", required=True, metavar="TRUTH.json")
    sm.add_argument("--scale", type=_positive_float, default=1.0, help="scale keys and volume")
    sm.add_argument("--traces", default=None, metavar="DIR",
                    help="folder of real LLM-serving traces: CSV or JSON lines with prompt and "
                         "answer token columns, e.g. the Azure, BurstGPT or Mooncake traces "
                         "(default: MOATWATCH_TRACES or ../shared/data)")
    sm.add_argument("--start-ts", type=float, default=None, help="Unix start time")

    ev = add("evaluate", "score alerts against a simulation's truth: recall, FP rate, time to detect")
    ev.add_argument("--truth", required=True, metavar="TRUTH.json")
    ev.add_argument("--alerts", required=True, metavar="ALERTS.jsonl")
    ev.add_argument("--json", action="store_true", help="print the full result as JSON")
    ev.add_argument("--plot", default=None, metavar="PNG", help="also draw time-to-detect and scores")

    fb = add("feedback", "record an analyst verdict on an entity (to the feedback topic or a file)")
    fb.add_argument("verdict", choices=["confirmed", "false_positive", "allowlisted"])
    fb.add_argument("--entity", required=True, help="api_key id or group value")
    fb.add_argument("--entity-type", default="api_key",
                    choices=["api_key", "account", "client_net", "asn", "template", "user_agent"])
    fb.add_argument("--until", default=None,
                    help="allowlisted until: Unix seconds or a duration like 7d, 12h, 30m")
    fb.add_argument("--note", default=None)
    fb.add_argument("--analyst", default=os.environ.get("USER"))
    fb.add_argument("--file", default=None, metavar="FEEDBACK.jsonl",
                    help="append to this file instead of the feedback topic (for replay)")

    d = add("demo", "start the local Kafka and a worker, send simulated traffic, show alerts live, score them")
    d.add_argument("--hours", type=_positive_float, default=2.0, help="simulated hours to send")
    d.add_argument("--seed", type=int, default=7, help="simulation seed")
    d.add_argument("--scale", type=_positive_float, default=0.5, help="scale keys and volume")
    d.add_argument("--rate", type=_nonneg_float, default=0.0, help="events/s to send (0 = fast)")
    d.add_argument("--show", type=_positive_int, default=25, help="alerts to show as they arrive")
    d.add_argument("--no-score", dest="score", action="store_false",
                   help="stop after the shown alerts instead of scoring the worker's alerts")

    b = add("bench", "measure throughput, latency and memory (see docs/benchmarks.md)")
    b.add_argument("--smoke", action="store_true", help="tiny sizes, for CI; numbers are not meaningful")
    b.add_argument("--out", default=None, metavar="RESULTS.json")
    b.add_argument("--skip-kafka", action="store_true", help="in-process parts only")

    for mod in ("streams.grafana", "streams.alertmanager"):
        try:
            module = __import__(mod, fromlist=["add_parser"])
        except ImportError:
            continue
        module.add_parser(sub)
    return p


def _settings(parser: argparse.ArgumentParser) -> Any:
    from streams.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        parser.exit(2, f"moatwatch: error: {exc}\n")


def _load_feedback(path: str | None) -> Any:
    from models.feedback import FeedbackBook

    book = FeedbackBook()
    if path:
        try:
            with open(path, "rb") as fh:
                book.load_jsonl(fh)
        except OSError as exc:
            raise SystemExit(f"moatwatch: error: cannot read feedback file {path!r}: {exc.strerror}") from None
        except ValueError as exc:
            raise SystemExit(f"moatwatch: error: feedback file {path!r}: {exc}") from None
    return book


def _detector_config(path: str | None) -> Any:
    from streams.settings import SettingsError, load_detector_config

    try:
        config = load_detector_config(path or "")
    except SettingsError as exc:
        print(f"moatwatch: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if config is not None:  # say what differs from the defaults, so a run's alerts can be read
        import dataclasses

        default = type(config)()
        changed = [f"{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config)
                   if getattr(config, f.name) != getattr(default, f.name)]
        print(f"moatwatch: detector settings from {path}: {', '.join(changed) or 'the defaults'}",
              file=sys.stderr)
    return config


def _parse_until(text: str | None) -> float | None:
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    t = text.strip().lower()
    if t and t[-1] in units:
        try:
            return time.time() + float(t[:-1]) * units[t[-1]]
        except ValueError:
            pass
    try:
        return float(t)
    except ValueError:
        raise SystemExit(f"moatwatch feedback: error: --until {text!r}: use Unix seconds or a duration like 7d, 12h, 30m") from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cmd = args.command
    if cmd == "simulate":
        from streams.simulator import format_summary, simulate

        try:
            summary = simulate(args.hours, args.seed, args.out, args.truth, traces_dir=args.traces,
                               start_ts=args.start_ts, scale=args.scale)
        except (OSError, ValueError) as exc:
            print(f"moatwatch simulate: error: {exc}", file=sys.stderr)
            return 2
        print(f"simulate: {format_summary(summary)}", file=sys.stderr)
        return 0
    if cmd == "evaluate":
        import orjson

        from streams.evaluation import evaluate, format_table, plot

        for path in (args.truth, args.alerts):
            if not os.path.exists(path):
                print(f"moatwatch evaluate: error: {path!r} does not exist", file=sys.stderr)
                return 2
        try:
            result = evaluate(args.truth, args.alerts)
        except (OSError, ValueError) as exc:
            print(f"moatwatch evaluate: error: {exc}", file=sys.stderr)
            return 2
        if args.json:
            sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            print(format_table(result))
        if args.plot:
            try:
                plot(result, args.truth, args.alerts, args.plot)
            except RuntimeError as exc:   # matplotlib missing: the table is still printed
                print(f"moatwatch evaluate: no plot: {exc}", file=sys.stderr)
                return 1
        return 0
    settings = _settings(parser)
    if cmd == "replay":
        from streams.replay import main_replay

        return main_replay(args, feedback=_load_feedback(args.feedback or settings.feedback_file),
                           config=_detector_config(args.detector_config or settings.detector_config))
    if cmd == "worker":
        return _run_worker(settings, args)
    if cmd == "produce":
        from streams.kafka_io import KafkaUnavailable, ensure_topics, produce_file

        if not os.path.exists(args.events):
            print(f"moatwatch produce: error: {args.events!r} does not exist", file=sys.stderr)
            return 2
        try:
            topic = args.topic or settings.events_topic
            ensure_topics(settings, {topic: settings.partitions})
            res = produce_file(settings, args.events, topic=topic, rate=args.rate,
                               restamp=args.restamp, limit=args.limit)
        except KafkaUnavailable as exc:
            print(f"moatwatch produce: error: {exc}", file=sys.stderr)
            return 1
        print(f"produce: {res['events']} events to {res['topic']} in {res['seconds']:.1f}s "
              f"= {res['events_per_s']:,.0f} events/s", file=sys.stderr)
        return 0
    if cmd == "alerts":
        return _print_alerts(settings, args)
    if cmd == "feedback":
        return _feedback(settings, args)
    if cmd == "demo":
        from streams.demo import run_demo

        return run_demo(settings, args)
    if cmd == "bench":
        from streams.bench import run_bench

        return run_bench(settings, args)
    if cmd in ("grafana", "alertmanager"):
        module = __import__(f"streams.{cmd}", fromlist=["main"])
        return int(module.main(args, settings) or 0)
    parser.error(f"unknown command {cmd}")
    return 2


def format_alert(a: dict[str, Any]) -> str:
    """One readable line for a person watching alerts arrive."""
    reasons = "; ".join(r.get("explanation", "") for r in a.get("reasons", [])[:3])
    who = a.get("entity", "?")
    if a.get("related_total"):
        who += f" ({a['related_total']} keys)"
    return (f"[{a.get('status', '?'):8}] {a.get('severity', '?'):8} {a.get('entity_type', '?')}="
            f"{who} score={a.get('score', 0):.2f} by {a.get('detector', '?')}: {reasons}")


def _print_alerts(settings: Any, args: Any) -> int:
    import orjson

    from streams.kafka_io import KafkaUnavailable, consume_json

    try:
        for alert in consume_json(settings, settings.alerts_topic,
                                  from_beginning=args.from_beginning, max_messages=args.max,
                                  timeout=args.timeout):
            line = format_alert(alert) if args.pretty else orjson.dumps(alert).decode()
            print(line, flush=True)
    except KafkaUnavailable as exc:
        print(f"moatwatch alerts: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _feedback(settings: Any, args: Any) -> int:
    import orjson

    from models.feedback import validate_feedback

    record = {"entity_type": args.entity_type, "entity": args.entity, "verdict": args.verdict,
              "until": _parse_until(args.until), "ts": time.time(), "analyst": args.analyst,
              "note": args.note}
    try:
        record = validate_feedback(record)
    except ValueError as exc:
        print(f"moatwatch feedback: error: {exc}", file=sys.stderr)
        return 2
    line = orjson.dumps(record)
    if args.file:
        with open(args.file, "ab") as fh:
            fh.write(line + b"\n")
        print(f"feedback: appended to {args.file}", file=sys.stderr)
        return 0
    from streams.kafka_io import KafkaUnavailable, ensure_topics, make_producer

    try:
        ensure_topics(settings, {settings.feedback_topic: 1})
        producer = make_producer(settings)
        producer.produce(settings.feedback_topic, key=f"{args.entity_type}|{args.entity}".encode(),
                         value=line)
        if producer.flush(15):
            raise KafkaUnavailable("feedback not delivered in 15s")
    except KafkaUnavailable as exc:
        print(f"moatwatch feedback: error: {exc}", file=sys.stderr)
        return 1
    print(f"feedback: {args.verdict} for {args.entity_type}={args.entity} sent to "
          f"{settings.feedback_topic}", file=sys.stderr)
    return 0


def _run_worker(settings: Any, args: Any) -> int:
    import logging

    import faust

    from streams.app import create_worker
    from streams.feedback_feed import FeedbackFeed
    from streams.kafka_io import KafkaUnavailable

    level = (args.loglevel or settings.log_level).lower()
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    book = _load_feedback(settings.feedback_file)
    config = _detector_config(settings.detector_config)
    try:
        worker = create_worker(settings, feedback=book, config=config)
    except KafkaUnavailable as exc:
        print(f"moatwatch worker: error: Kafka refused or unreachable: {exc}", file=sys.stderr)
        return 1
    feed = FeedbackFeed(settings, book)
    feed.start()
    faust_worker = faust.Worker(worker.app, loglevel=level, quiet=True,
                                override_logging=False)
    try:
        faust_worker.execute_from_commandline()
    finally:
        feed.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
