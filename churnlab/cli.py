"""The ``churnlab`` command line: the same steps the notebooks take, for CI and terminals.

Exit codes: 0 done, 1 refused (gate failed, promotion refused), 2 bad input or usage,
3 registry unreachable or failing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from churnlab import store
from churnlab.errors import ChurnlabError, RegistryUnavailable

#: modules that add their own sub-commands (serve, smoke, verify, workbook)
PLUGIN_MODULES = ("churnlab.staging", "churnlab.verify", "churnlab.workbook", "serving.cli")


def _registry(args):
    from churnlab.registry import Registry

    return Registry(args.model)


def cmd_train(args) -> int:
    from churnlab import train

    frame, source = train.load_training_data(args.data)  # validated before the registry
    result = train.train_candidate(
        frame,
        model_name=args.model,
        estimator=args.estimator,
        seed=args.seed,
        rows=args.rows,
        data_source=source,
        description=args.description or "",
    )
    print(train.result_json(result))
    return 0


def _overrides(pairs: Sequence[str]) -> dict[str, str]:
    from churnlab.errors import InputError

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"--set takes NAME=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def cmd_gate(args) -> int:
    from churnlab import gate

    policy = gate.Policy.load(args.policy, **_overrides(args.set))
    result = gate.run_gate(args.version, registry=_registry(args), policy=policy)
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True, default=str))
    else:
        for c in result.checks:
            value = "-" if c.value is None else c.value
            print(
                f"  {c.status:4}  {c.name:16} {value!s:>10} {c.operator} {c.threshold!s:<10} {c.detail}"
            )
        print(result.summary())
    return 0 if result.passed else 1


def cmd_stage(args) -> int:
    move = _registry(args).stage(args.version, override=args.override, reason=args.reason or "")
    print(move.message)
    return 0


def cmd_promote(args) -> int:
    move = _registry(args).promote(args.version, override=args.override, reason=args.reason or "")
    print(move.message)
    return 0


def cmd_rollback(args) -> int:
    print(_registry(args).rollback(reason=args.reason or "").message)
    return 0


def cmd_status(args) -> int:
    status = _registry(args).status()
    if args.json:
        print(json.dumps(status, sort_keys=True))
        return 0
    print(f"{status['model_name']} at {store.display_uri()}")
    for alias, entry in status["stages"].items():
        version = "-" if entry["version"] is None else f"v{entry['version']}"
        verdicts = (
            f"gate {entry['gate']}, smoke {entry['smoke']}" if entry["version"] is not None else ""
        )
        print(f"  {alias:10} {version:5} {verdicts}")
    for problem in status["problems"]:
        print(f"  inconsistent: {problem} (run `churnlab repair`)")
    return 0 if status["consistent"] else 1


def cmd_history(args) -> int:
    events = [e.to_dict() for e in _registry(args).history()]
    if args.json:
        print(json.dumps(events, sort_keys=True))
        return 0
    if not events:
        print("no promotions yet")
    for e in events:
        before = "-" if e["from_version"] is None else f"v{e['from_version']}"
        after = "-" if e["to_version"] is None else f"v{e['to_version']}"
        flag = " OVERRIDE" if e["override"] else ""
        print(
            f"{e['time']}  {e['actor']:10} {e['action']:8} {e['alias']:10} {before:>4} -> {after:<4}{flag} {e['reason']}"
        )
    return 0


def cmd_repair(args) -> int:
    fixed = _registry(args).repair()
    for problem in fixed:
        print(f"repaired: {problem}")
    if not fixed:
        print("nothing to repair: aliases, stages and history agree")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="churnlab", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=store.DEFAULT_MODEL_NAME, help="registered model name")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train and register a candidate version")
    p.add_argument("--data", help="a CSV in the Telco churn layout (default: synthetic data)")
    p.add_argument("--estimator", default="logreg", choices=["logreg", "forest", "gbm"])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--rows", type=int, default=7043, help="rows of synthetic data")
    p.add_argument("--description", help="a note stored on the version")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("gate", help="run the quality gate on a version and record the verdict")
    p.add_argument("version")
    p.add_argument("--policy", help="a policy YAML file (defaults: churnlab/policy/default.yaml)")
    p.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="override one setting"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gate)

    for name, func, text in (
        ("stage", cmd_stage, "move @staging to a version that passed the gate"),
        ("promote", cmd_promote, "move @production to a version that passed gate and smoke check"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("version")
        p.add_argument("--override", action="store_true", help="move despite missing evidence")
        p.add_argument("--reason", help="why (required with --override)")
        p.set_defaults(func=func)

    p = sub.add_parser("rollback", help="return @production to its previous holder")
    p.add_argument("--reason")
    p.set_defaults(func=cmd_rollback)

    for name, func, text in (
        ("status", cmd_status, "who holds staging and production, with their verdicts"),
        ("history", cmd_history, "every promotion event, oldest first"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    p = sub.add_parser("repair", help="re-mirror stages from aliases after an interrupted move")
    p.set_defaults(func=cmd_repair)

    # Commands that live with their own module: each module has add_cli(subparsers).
    import importlib

    for name in PLUGIN_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.add_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; print a one-line error and return its exit code on failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    store.quiet()
    try:
        store.check_reachable()  # before the heavy imports: a dead server fails in seconds
        return int(args.func(args) or 0)
    except ChurnlabError as exc:
        print(f"churnlab: {store.redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("churnlab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an MLflow or network failure we did not foresee
        first = _first_line(exc)
        if _looks_unreachable(exc):
            err: ChurnlabError = RegistryUnavailable(
                f"cannot reach the MLflow tracking server at {store.display_uri()}"
            )
            print(f"churnlab: {err}", file=sys.stderr)
            return err.exit_code
        print(f"churnlab: {type(exc).__name__}: {store.redact(first)}", file=sys.stderr)
        return 3


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _looks_unreachable(exc: Any) -> bool:
    text = str(exc)
    return any(s in text for s in ("Max retries exceeded", "Connection refused", "timed out"))


if __name__ == "__main__":
    sys.exit(main())
