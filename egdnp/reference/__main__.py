"""Command line of egdnp.reference.

    python -m egdnp.reference list
    python -m egdnp.reference generate SCENARIO --out DIR [--backend numpy|cupy|array_api_strict]
                                                           [--dtype float32|float64] [--seed N]
    python -m egdnp.reference compare EXPECTED ACTUAL [--rtol R] [--atol A]
    python -m egdnp.reference regenerate-test-bundles [--dir tests/reference_bundles]

``compare`` exits with status 1 when any expected array is missing, misshapen
or outside the tolerance, and 2 on unreadable input.
"""

from __future__ import annotations

import argparse
import sys

from . import compare, generate, load_bundle, regenerate_test_bundles, save_bundle
from .scenarios import SCENARIOS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egdnp.reference", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the scenarios")
    gen = sub.add_parser("generate", help="write a scenario's bundle")
    gen.add_argument("scenario", help="a scenario name (see `list`)")
    gen.add_argument("--out", required=True, help="output directory")
    gen.add_argument("--backend", default="numpy", help="numpy (default), cupy or array_api_strict")
    gen.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    gen.add_argument("--seed", type=int, default=0)
    cmp_ = sub.add_parser("compare", help="compare a port's outputs with a bundle")
    cmp_.add_argument("expected", help="bundle directory (or .npz / directory of .npy)")
    cmp_.add_argument("actual", help="the port's outputs: .npz, directory of .npy, or a bundle")
    cmp_.add_argument("--rtol", type=float, default=1e-5)
    cmp_.add_argument("--atol", type=float, default=1e-6)
    reg = sub.add_parser("regenerate-test-bundles", help="rewrite the bundles checked into tests/")
    reg.add_argument("--dir", default="tests/reference_bundles")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, scenario in SCENARIOS.items():
            print(f"{name:28s} {scenario.description}")
        return 0
    if args.command == "generate":
        if args.scenario not in SCENARIOS:
            print(f"unknown scenario {args.scenario!r}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
            return 2
        arrays, hyper = generate(args.scenario, backend=args.backend, dtype=args.dtype, seed=args.seed)
        path = save_bundle(args.out, args.scenario, arrays, hyperparameters=hyper, backend=args.backend, dtype=args.dtype, seed=args.seed,
                           notes=SCENARIOS[args.scenario].description)
        print(f"wrote {len(arrays)} arrays of scenario {args.scenario!r} to {path}")
        return 0
    if args.command == "compare":
        try:
            report = compare(args.expected, args.actual, rtol=args.rtol, atol=args.atol)
        except (FileNotFoundError, ValueError, TypeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(report.format())
        return 0 if report.ok else 1
    if args.command == "regenerate-test-bundles":
        for path in regenerate_test_bundles(args.dir):
            print(f"wrote {path}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
