"""What the commands share: the registry a command works on, the ``--set`` overrides."""

from __future__ import annotations

from collections.abc import Sequence

from churnlab.errors import InputError


def registry_for(args):
    """The registry of ``--model``; a command with ``--policy`` applies the policy's four eyes."""
    from churnlab.registry import Registry

    approvals = 0
    if hasattr(args, "policy"):  # the commands that apply four eyes read the policy
        from churnlab import gate

        approvals = gate.Policy.load(args.policy, **overrides(args.set)).production_approvals
    return Registry(args.model, production_approvals=approvals)


def overrides(pairs: Sequence[str]) -> dict[str, str]:
    """``--set NAME=VALUE`` options as a dict (a policy's settings)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"--set takes NAME=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out
