"""Reference bundles for validating PyTorch/JAX ports of egdnp (docs/validating-a-port.md).

    python -m egdnp.reference list
    python -m egdnp.reference generate SCENARIO --out DIR [--backend numpy|cupy|array_api_strict]
                                                           [--dtype float32|float64] [--seed N]
    python -m egdnp.reference compare EXPECTED ACTUAL [--rtol R] [--atol A]
    python -m egdnp.reference regenerate-test-bundles [--dir tests/reference_bundles]   # from the repository root

``compare`` exits with status 1 when any expected array is missing, misshapen
or outside the tolerance, and 2 on unreadable input.
"""

from __future__ import annotations

import argparse
import sys

from . import compare, generate, load_bundle, regenerate_test_bundles, save_bundle
from .scenarios import SCENARIOS


def main(argv=None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 success / PASS, 1 a comparison FAILed, 2 bad input.
    """
    parser = argparse.ArgumentParser(prog="python -m egdnp.reference", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the scenarios")
    gen = sub.add_parser("generate", help="write a scenario's bundle")
    gen.add_argument("scenario", help="a scenario name (see `list`)")
    gen.add_argument("--out", required=True, help="output directory")
    gen.add_argument("--backend", default="numpy", help="numpy (default), cupy or array_api_strict")
    gen.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                     help="float dtype of inputs and outputs (default float32; check a port in float64 first)")
    gen.add_argument("--seed", type=int, default=0, help="seed of every input and all noise (default 0)")
    cmp_ = sub.add_parser("compare", help="compare a port's outputs with a bundle")
    cmp_.add_argument("expected", help="bundle directory (or .npz / directory of .npy)")
    cmp_.add_argument("actual", help="the port's outputs: .npz, directory of .npy, or a bundle")
    cmp_.add_argument("--rtol", type=float, default=1e-5,
                      help="relative tolerance (default 1e-5; 1e-10 for float64 ports)")
    cmp_.add_argument("--atol", type=float, default=1e-6,
                      help="absolute tolerance (default 1e-6; 1e-5 for float32 ports, 1e-12 for float64)")
    reg = sub.add_parser("regenerate-test-bundles", help="rewrite the bundles checked into tests/")
    reg.add_argument("--dir", default="tests/reference_bundles", help="default tests/reference_bundles (relative to the current directory)")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, scenario in SCENARIOS.items():
            print(f"{name:28s} {scenario.description}")
        return 0
    if args.command == "generate":
        if args.scenario not in SCENARIOS:
            print(f"unknown scenario {args.scenario!r}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
            return 2
        try:
            arrays, hyper = generate(args.scenario, backend=args.backend, dtype=args.dtype, seed=args.seed)
        except (ValueError, TypeError, RuntimeError) as exc:  # an unusable --backend or --seed: no traceback
            print(f"error: {exc}", file=sys.stderr)
            return 2
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
