"""harness data: find or download CIFAR-10."""

from __future__ import annotations

from harness.cliutil import add_json_flag, print_json


def register(sub) -> None:
    p = sub.add_parser("data", help="show where CIFAR-10 is found, or download the official tarball")
    p.add_argument("action", choices=("where", "download"))
    p.add_argument("--dest", metavar="DIR", help="download target (default ~/.cache/harness/cifar10)")
    p.add_argument("--url", help="download from this URL instead of the official one")
    p.add_argument("--data", metavar="DIR", help="data directory to check (with 'where')")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from specialist import data

    if args.action == "download":
        dest = Path(args.dest) if args.dest else Path.home() / ".cache" / "harness" / "cifar10"
        path = data.download_cifar10(dest, url=args.url or data.CIFAR10_URL)
        out = {"path": str(path), "md5": data.CIFAR10_MD5}
    else:
        d = data.resolve_data_dir(args.data)
        test = data.load_split("test", d)
        out = {"path": str(d), "test_images": len(test), "exact_images": int(test.exact.sum())}
    if args.json:
        print_json(out)
    else:
        print(" ".join(f"{k}={v}" for k, v in out.items()))
    return 0
