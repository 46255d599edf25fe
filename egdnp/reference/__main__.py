"""Reference bundles for validating PyTorch/JAX ports of egdnp (docs/validating-a-port.md).

    python -m egdnp.reference list
    python -m egdnp.reference generate SCENARIO --out DIR [--backend numpy|cupy|array_api_strict]
                                                           [--dtype float32|float64] [--seed N]
    python -m egdnp.reference explain SCENARIO [--dtype float32|float64]
    python -m egdnp.reference compare EXPECTED ACTUAL [--rtol R] [--atol A] [--strict-dtype]
    python -m egdnp.reference regenerate-test-bundles [--dir tests/reference_bundles]   # from the repository root

``compare`` lists the arrays in data-flow order and names the first
divergence; its tolerances default to the bundle's dtype (float64: rtol 1e-10,
atol 1e-12; float32: rtol 1e-4, atol 2e-5).  It exits with status 1 when any
required expected array is missing, misshapen or outside the tolerance (or, with
--strict-dtype, of another float dtype), and 2 on bad input (an unreadable,
empty or truncated file, a negative, NaN or infinite tolerance), with a one-line
message.
"""

from __future__ import annotations

import argparse
import math
import sys

from . import compare, explain, generate, regenerate_test_bundles, save_bundle
from .scenarios import SCENARIOS


def _tolerance(flag: str, text):
    """``None`` (use the dtype's default) or a finite float >= 0; ValueError naming the flag otherwise."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{flag} {text!r} is not a number; give e.g. {flag} 1e-10, or leave it out for the bundle dtype's default") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{flag} {text} must be a finite number >= 0, e.g. {flag} 1e-10 (or leave it out for the bundle dtype's default)")
    return value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


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
    cmp_.add_argument("--rtol", default=None,
                      help="relative tolerance (default from the bundle's dtype: 1e-10 float64, 1e-4 float32)")
    cmp_.add_argument("--atol", default=None,
                      help="absolute tolerance (default from the bundle's dtype: 1e-12 float64, 2e-5 float32)")
    cmp_.add_argument("--strict-dtype", action="store_true",
                      help="fail a port array whose float dtype differs from the bundle's (always flagged)")
    exp = sub.add_parser("explain", help="print a scenario's data flow, arrays, conventions and noise addresses")
    exp.add_argument("scenario", help="a scenario name (see `list`)")
    exp.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="dtype the arrays are shown in (default float32)")
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
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return 2
        path = save_bundle(args.out, args.scenario, arrays, hyperparameters=hyper, backend=args.backend, dtype=args.dtype, seed=args.seed,
                           notes=SCENARIOS[args.scenario].description)
        print(f"wrote {len(arrays)} arrays of scenario {args.scenario!r} to {path}")
        return 0
    if args.command == "compare":
        try:
            tolerances = {name: _tolerance(f"--{name}", getattr(args, name)) for name in ("rtol", "atol")}
            report = compare(args.expected, args.actual, strict_dtype=args.strict_dtype, **tolerances)
        except (OSError, ValueError, TypeError) as exc:
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return 2
        print(report.format())
        return 0 if report.ok else 1
    if args.command == "explain":
        if args.scenario not in SCENARIOS:
            print(f"unknown scenario {args.scenario!r}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
            return 2
        print(explain(args.scenario, dtype=args.dtype))
        return 0
    if args.command == "regenerate-test-bundles":
        for path in regenerate_test_bundles(args.dir):
            print(f"wrote {path}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
