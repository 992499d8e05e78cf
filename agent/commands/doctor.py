"""`capture-agent doctor`: check this device end to end and print the fixes."""

from __future__ import annotations

import argparse
import dataclasses
import json

from agent.runtime import add_common_arguments, config_from_args

MARKS = {True: "ok  ", False: "FAIL", None: "skip"}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "doctor",
        help="check config, identity, clock and a live mTLS call",
        description="Check this device end to end: the config, the state directory's permissions, the "
        "key-encryption key, the device key and certificate (chain, days to expiry), the clock, and a live "
        "mutual-TLS call to the verifier (TLS version, cipher, ALPN, the server's SPKI pin). Each failed "
        "check prints its fix. Exit 0 when every check passes, 1 otherwise.",
    )
    add_common_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from agent.doctor import Check, run_doctor

    def show(check: Check) -> None:  # each line as its check is final: the live call may take its deadline
        print(f"[{MARKS[check.ok]}] {check.name}: {check.detail}", flush=True)
        if check.ok is False and check.fix:
            print(f"       fix: {check.fix}", flush=True)

    def waiting(what: str) -> None:  # on stderr: stdout stays the report alone, for a script or `| grep`
        print(what, file=sys.stderr, flush=True)

    report = run_doctor(
        config_from_args(args), on_check=None if args.json else show, on_live_call=None if args.json else waiting
    )
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "checks": [dataclasses.asdict(c) for c in report.checks],
                    "facts": report.facts,
                },
                indent=2,
            )
        )
    return 0 if report.ok else 1
