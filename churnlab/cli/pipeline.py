"""The pipeline's commands on the registry, from training a candidate to repairing the stages.

train, gate, stage, promote, approve, rollback, status, history, repair.
"""

from __future__ import annotations

import argparse
import json

from churnlab import store
from churnlab.cli.common import overrides, registry_for


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


def cmd_gate(args) -> int:
    from churnlab import gate

    policy = gate.Policy.load(args.policy, **overrides(args.set))
    result = gate.run_gate(args.version, registry=registry_for(args), policy=policy)
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
    move = registry_for(args).stage(args.version, override=args.override, reason=args.reason or "")
    print(move.message)
    return 0


def cmd_promote(args) -> int:
    move = registry_for(args).promote(
        args.version, override=args.override, reason=args.reason or ""
    )
    print(move.message)
    return 0


def cmd_approve(args) -> int:
    registry = registry_for(args)
    approval = registry.approve(args.version, reason=args.reason or "")
    print(f"Approved {registry.model_name} v{approval.version} for Production by {approval.actor}")
    return 0


def cmd_rollback(args) -> int:
    print(registry_for(args).rollback(reason=args.reason or "").message)
    return 0


def cmd_status(args) -> int:
    status = registry_for(args).status()
    if args.json:
        print(json.dumps(status, sort_keys=True))
        return 0
    print(f"{status['model_name']} at {store.display_uri()}")
    for alias, entry in status["stages"].items():
        version = "-" if entry["version"] is None else f"v{entry['version']}"
        verdicts = (
            f"gate {entry['gate']}, smoke {entry['smoke']}" if entry["version"] is not None else ""
        )
        if entry.get("approvals"):
            verdicts += f", approved by {', '.join(entry['approvals'])}"
        if entry.get("approvals_required"):
            verdicts += f" (needs {entry['approvals_required']} approval(s))"
        print(f"  {alias:10} {version:5} {verdicts}")
    unapproved = status["stages"]["production"].get("approval_missing")
    for problem in status["problems"]:
        hint = "" if problem == unapproved else " (run `churnlab repair`, or `repair --restore`)"
        print(f"  inconsistent: {problem}{hint}")
    return 0 if status["consistent"] else 1


def cmd_history(args) -> int:
    events = registry_for(args).timeline()  # moves and approvals, in the order recorded
    if args.json:
        print(json.dumps(events, sort_keys=True))
        return 0
    if not events:
        print("no promotions yet")
    for e in events:
        # "(login)": the server authenticated the actor; otherwise the name was declared
        who = e["actor"] + (" (login)" if e.get("actor_source") == "server" else "")
        if e["action"] == "approve":
            print(
                f"{e['time']}  {who:10} approve  {e['alias']:10}         v{e['version']:<4} {e['reason']}"
            )
            continue
        before = "-" if e["from_version"] is None else f"v{e['from_version']}"
        after = "-" if e["to_version"] is None else f"v{e['to_version']}"
        flag = " OVERRIDE" if e["override"] else ""
        if e.get("approved_by"):
            flag += f" approved by {','.join(e['approved_by'])}"
        print(
            f"{e['time']}  {who:10} {e['action']:8} {e['alias']:10} {before:>4} -> {after:<4}{flag} {e['reason']}"
        )
    return 0


def cmd_repair(args) -> int:
    fixed = registry_for(args).repair(restore=args.restore)
    for problem in fixed:
        print(f"{'restored' if args.restore else 'repaired'}: {problem}")
    if not fixed:
        print("nothing to repair: aliases, stages and history agree")
    return 0


def add_commands(sub) -> None:
    """The parsers of train, gate, stage, promote, approve, rollback, status, history, repair."""
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
        if name == "promote":
            _policy_options(p)
        p.set_defaults(func=func)

    p = sub.add_parser("approve", help="approve a version for production (four eyes: not your own)")
    p.add_argument("version")
    p.add_argument("--reason", required=True, help="why this version may go to production")
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("rollback", help="return @production to its previous holder")
    p.add_argument("--reason")
    p.set_defaults(func=cmd_rollback)

    for name, func, text in (
        ("status", cmd_status, "who holds staging and production, with their verdicts"),
        ("history", cmd_history, "every promotion event, oldest first"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true")
        if name == "status":
            _policy_options(p)
        p.set_defaults(func=func)

    p = sub.add_parser("repair", help="record a move made outside churnlab (or an interrupted one)")
    p.add_argument(
        "--restore",
        action="store_true",
        help="instead, put each alias back on the last holder the history recorded",
    )
    _policy_options(p)
    p.set_defaults(func=cmd_repair)


def _policy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", help="a policy YAML file (its production_approvals applies)")
    p.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="override one setting"
    )
