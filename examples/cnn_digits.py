"""The small CNN on the digits, trained with SGD, EGD and EGGROLL.

The network is egdnp.nn.cnn: conv 3x3 -> ReLU -> max-pool 2 -> conv 3x3 ->
ReLU -> max-pool 2 -> linear, on the scikit-learn digits upsampled
(bilinear) from 8x8.  The literature's version is 28x28 with 16 and 32
channels (``--size 28 --channels 16 32``); the default here is 16x16 with 8
and 16 channels so that the three runs take well under a minute on a 2-core
CPU.  EGGROLL perturbs every convolution kernel (flattened to a matrix) and
the linear layer with rank-1 factors, inside the convolution, without ever
forming a perturbed kernel.

The training loops are those of quickstart.py (read that first).  Outputs
(in --out, printed at the end): results.json, table.md, learning_curves.png.

Run::

    python examples/cnn_digits.py                           # 20-40 s on a 2-core CPU
    python examples/cnn_digits.py --size 28 --channels 16 32 --backend cupy
    python examples/cnn_digits.py --fast --no-plot          # a few seconds (the tests)
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # find _common.py and quickstart.py

from egdnp import _backend, data, nn

import _common
from quickstart import run_all, train_egd, train_eggroll, train_sgd


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__, "cnn_digits_out")
    parser.add_argument("--size", type=int, default=16, help="image side after upsampling, a multiple of 4 (default 16)")
    parser.add_argument("--channels", type=int, nargs=2, default=(8, 16), metavar=("C1", "C2"),
                        help="channels of the two convolutions (default 8 16)")
    parser.add_argument("--steps", type=int, default=300, help="SGD/EGD steps of batch 64 (default 300)")
    parser.add_argument("--generations", type=int, default=200, help="EGGROLL generations (default 200)")
    parser.add_argument("--pop", type=int, default=64, help="EGGROLL population (default 64)")
    parser.add_argument("--pop-batch", type=int, default=32,
                        help="EGGROLL examples per generation, shared by all members (default 32)")
    parser.add_argument("--chunk", type=int, default=16,
                        help="EGGROLL members per forward pass: bounds memory, not the result (default 16)")
    args = parser.parse_args(argv)
    if args.fast:
        args.size, args.channels, args.steps, args.generations, args.pop, args.pop_batch = 8, (4, 8), 20, 4, 8, 16
    _common.limit_threads(args.threads)
    xp = _common.namespace(args.backend)
    out = _common.output_dir(args.out)
    digits = data.load_digits(size=args.size, flat=False, xp=xp)   # x: (n, 1, size, size) float32 in [0, 1]
    model = nn.cnn(image_size=args.size, channels=tuple(args.channels))  # conv1, relu1, pool1, conv2, ..., fc
    show = not args.no_progress
    print(f"digits {args.size}x{args.size}: {digits.x_train.shape[0]} train / {digits.x_test.shape[0]} test, "
          f"CNN channels {tuple(args.channels)} ({model.num_params():,} parameters), "
          f"backend {_backend.backend_name(xp)}, seed {args.seed}")
    sgd_like = dict(steps=args.steps, batch_size=64, lr=0.05, momentum=0.9, seed=args.seed, show_progress=show)
    runs = [
        ("SGD", lambda: train_sgd(model, digits, xp, **sgd_like)),
        ("EGD", lambda: train_egd(model, digits, xp, **sgd_like, evo_interval=max(2, args.steps // 15),
                                  pop_size=8, sigma=0.02, selection_batch=128)),
        ("EGGROLL", lambda: train_eggroll(model, digits, xp, generations=args.generations, batch_size=args.pop_batch,
                                          pop_size=args.pop, rank=1, sigma=0.05, lr=0.03, seed=args.seed,
                                          chunk_size=args.chunk, show_progress=show)),
    ]
    title = f"digits CNN {args.size}x{args.size}, channels {tuple(args.channels)}, {_backend.backend_name(xp)}, seed {args.seed}"
    run_all(runs, out, title, plot=not args.no_plot)
    print(f"outputs written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
